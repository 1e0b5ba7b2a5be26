"""A failed end-to-end test keeps its evidence (tests/evidence.py): an inner test boots a real busybox
VM with the e2e fixtures and fails an assert while the VM runs; the VM's logs, the guest's console,
the state directory and the runtime's --log must be kept, before the teardown's delete --force."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests import evidence

from .conftest import REPO

pytestmark = pytest.mark.vm

INNER_TEST = '''
from tests.e2e.oci_client import spawn


def test_boots_then_fails(runtime, make_bundle, tmp_path):
    bundle = make_bundle(["sleep", "600"])
    out = spawn(runtime, "create", "--bundle", str(bundle), "--pid-file", str(tmp_path / "pid"), "doomed")
    assert out.returncode == 0, runtime.log.read_text() + runtime.evidence()
    assert runtime("state", "gone", check=False).returncode == 1  # an error in the runtime's --log
    assert runtime.state("doomed")["status"] == "created"
    assert False, "deliberately, with the VM up"
'''


def test_a_failed_test_keeps_the_vm_logs_console_and_state(tmp_path):
    # The inner test: the real e2e fixtures, run by a pytest of its own with the evidence sent here.
    (tmp_path / "conftest.py").write_text('pytest_plugins = ("tests.evidence", "tests.e2e.conftest")\n')
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(INNER_TEST))
    out_dir = tmp_path / "evidence"
    # A cold boot: a clone's console starts where its template's stopped, after the kernel's messages.
    env = {**os.environ, evidence.ENV: str(out_dir), "PYTHONPATH": str(REPO), "PELLUCID_TEST_TEMPLATES": "0"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "test_inner.py"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    output = run.stdout + run.stderr

    # It failed at the deliberate assert, and its teardown still left nothing behind.
    assert run.returncode == 1 and "deliberately, with the VM up" in run.stdout, output
    assert "1 failed in" in run.stdout and "error" not in run.stdout.splitlines()[-1], output

    # The failure report names the directory.
    kept = out_dir / "test_inner.py_test_boots_then_fails"
    assert f"kept in {kept}" in run.stdout, output

    # The state directory, with the VM's logs and the guest's console (kernel messages included).
    container = kept / "root" / "doomed"
    assert json.loads((container / "state.json").read_text())["id"] == "doomed"
    vm = container / "vm"
    assert (vm / "monitor.log").is_file() and (vm / "qemu.log").is_file()
    assert "Linux version" in (vm / "console.log").read_text(errors="replace")
    # Neither the 9p share (with the container's rootfs mounted in it) nor a socket came along.
    assert not (vm / "shared").exists()
    assert not [p for p in kept.rglob("*") if not (p.is_symlink() or p.is_file() or p.is_dir())]

    # The runtime's --log, with the error the inner test provoked.
    assert "container does not exist" in (kept / "runtime.log").read_text()
