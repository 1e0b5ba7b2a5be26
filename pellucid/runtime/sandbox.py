"""A sandbox is one VM: its directory, its monitor daemon, and the way to talk to it.

``<state dir of the sandbox container>/vm/`` holds vm.json (what to boot), monitor.sock,
monitor.pid, the logs, ``shared/`` (exported to the guest over 9p; each container of the sandbox
has a directory there) and ``netns`` (the pinned network namespace, when pellucid made it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from .. import sockets
from ..errors import VMError
from ..state import alive
from ..vm.agent_client import AgentClient
from .ready import read_line

SHARE_TAG = "sandbox"
MONITOR_SOCKET = "monitor.sock"


def shared_dir(vm_dir: str) -> str:
    return os.path.join(vm_dir, "shared")


def launch(vm_dir: str, desc: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Start the monitor (which boots the VM) and wait until the agent answers; returns the VM's info."""
    os.makedirs(shared_dir(vm_dir), exist_ok=True)
    desc = {**desc, "shares": [{"tag": SHARE_TAG, "path": shared_dir(vm_dir)}]}
    with open(os.path.join(vm_dir, "vm.json"), "w") as f:
        json.dump(desc, f)
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    try:
        with open(os.path.join(vm_dir, "monitor.log"), "ab") as log:
            subprocess.Popen([sys.executable, "-m", "pellucid.monitor", vm_dir, "--ready-fd", str(ready_w)],
                             pass_fds=(ready_w,), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                             start_new_session=True, close_fds=True)
    finally:
        os.close(ready_w)
    try:
        line = read_line(ready_r, timeout)
    except TimeoutError:
        stop(vm_dir)
        raise VMError(f"the VM did not come up within {timeout:g}s" + _log_tail(vm_dir)) from None
    finally:
        os.close(ready_r)
    try:
        report = json.loads(line) if line else {"ok": False, "error": "the VM monitor exited"}
    except ValueError:
        report = {"ok": False, "error": "the VM monitor reported garbage"}
    if not report.get("ok"):
        stop(vm_dir)
        raise VMError(str(report.get("error")) + _log_tail(vm_dir))
    return report["info"]


def _log_tail(vm_dir: str) -> str:
    try:
        with open(os.path.join(vm_dir, "monitor.log"), "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 1500))
            tail = f.read().decode(errors="replace").strip()
    except OSError:
        return ""
    return f" (monitor log: {tail})" if tail else ""


def connect(vm_dir: str, timeout: float = 30.0) -> AgentClient:
    """A client of the sandbox's monitor; its requests reach the guest agent."""
    try:
        return AgentClient(sockets.connect(os.path.join(vm_dir, MONITOR_SOCKET), timeout=timeout))
    except OSError as err:
        raise VMError(f"the VM is not running ({err.strerror or err})") from None


def monitor_pid(vm_dir: str) -> int:
    try:
        with open(os.path.join(vm_dir, "monitor.pid")) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def stop(vm_dir: str, timeout: float = 10.0) -> None:
    """Shut the VM down: ask the monitor, then kill it (QEMU dies with it). Idempotent."""
    pid = monitor_pid(vm_dir)
    if os.path.exists(os.path.join(vm_dir, MONITOR_SOCKET)):
        try:
            client = connect(vm_dir, timeout=2)
            try:
                client.call("shutdown", timeout=timeout)
            finally:
                client.sock.close()
        except Exception:
            pass
    deadline = time.monotonic() + timeout
    while pid and alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if pid and alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
