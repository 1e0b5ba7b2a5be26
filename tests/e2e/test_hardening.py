"""Faults and trust: SIGKILL is enforced from the host when the guest is frozen, and a read-only
volume is read-only all the way down, submounts included, from inside the container."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from .conftest import qemu_pids
from .oci_client import Pipes, become_subreaper, create, wait_exit

pytestmark = pytest.mark.vm


@pytest.fixture(autouse=True, scope="module")
def subreaper():
    become_subreaper()



def test_sigkill_of_a_frozen_guest_stops_its_vm(runtime, make_bundle, tmp_path):
    pid = create(runtime, make_bundle(["sleep", "1000"]), "frozen", tmp_path)
    runtime("start", "frozen")
    (qemu,) = qemu_pids(tmp_path)
    os.kill(qemu, signal.SIGSTOP)  # the guest can confirm nothing now
    try:
        started = time.monotonic()
        runtime("kill", "frozen", "KILL", timeout=60)
        took = time.monotonic() - started
        assert took < 20, f"kill took {took:.1f}s"
        assert runtime.state("frozen")["status"] == "stopped"
        assert wait_exit(pid, timeout=10) == 137
        deadline = time.monotonic() + 10
        while qemu_pids(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not qemu_pids(tmp_path), "QEMU still runs"
        runtime("delete", "frozen")
    finally:
        for stray in qemu_pids(tmp_path):
            os.kill(stray, signal.SIGKILL)


def test_a_readonly_volume_is_readonly_all_the_way_down(runtime, make_bundle, tmp_path):
    volume = tmp_path / "volume"
    (volume / "sub").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(volume / "sub")], check=True)
    try:
        probe = ("for d in /data /data/sub /rw /rw/sub; do if touch $d/x 2>/dev/null; then echo $d=rw; "
                 "else echo $d=ro; fi; done")
        bundle = make_bundle(["sh", "-c", probe])
        import json
        config = json.loads((bundle / "config.json").read_text())
        config["mounts"] += [
            {"destination": "/data", "type": "bind", "source": str(volume), "options": ["rbind", "ro"]},
            {"destination": "/rw", "type": "bind", "source": str(volume), "options": ["rbind", "rw"]}]
        (bundle / "config.json").write_text(json.dumps(config))
        pipes = Pipes()
        pid = create(runtime, bundle, "ro", tmp_path, pipes)
        runtime("start", "ro")
        out, err = pipes.read_all()
        assert wait_exit(pid) == 0, err
        assert out.decode().split() == ["/data=ro", "/data/sub=ro", "/rw=rw", "/rw/sub=rw"], err
        runtime("delete", "ro")
        pipes.close()
    finally:
        subprocess.run(["umount", "-l", str(volume / "sub")])
