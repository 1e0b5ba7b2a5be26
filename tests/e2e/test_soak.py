"""The short form of bench/soak: ten create/start/kill/delete cycles, one per kind of fault
(`kill -9` of the CLI in each command, the monitor, the shim, QEMU) and a clean one, each followed
by `delete --force` and a check that nothing of it was left and a bystander was untouched."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak"


def test_soak_short_form_leaks_nothing():
    out = subprocess.run([str(SOAK), "--cycles", "10", "--json"], capture_output=True, text=True, timeout=1800)
    lines = out.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["cycles"] == 10 and all(summary["faults"].values()), out.stdout
    assert summary["leaks"] == 0 and not summary["leftover_mounts"], "\n".join(lines) + out.stderr
    assert out.returncode == 0, out.stderr
