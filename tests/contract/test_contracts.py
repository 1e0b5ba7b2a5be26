"""One set of checks for each interface the runtime drives, run against the fake (tests/fakes.py)
and the real implementation, so that the fakes the unit tests rely on cannot drift. The real
ones boot VMs (marked ``vm``): ``pytest -m 'not vm' tests/contract`` runs the fakes only."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pellucid import messages, procs
from pellucid.config import load as load_config
from pellucid.errors import AgentError, ContainerError, VMError
from pellucid.host_messages import ShimRequest, VMDescription
from pellucid.runtime.layout import MONITOR_SOCKET
from pellucid.runtime.system import SystemHost
from pellucid.vm.machine import VM, State
from tests import fakes

ASSETS = os.environ.get("PELLUCID_TEST_ASSETS_DIR", "/var/lib/pellucid")
BOOT_TIMEOUT = 240
real = pytest.param("real", marks=pytest.mark.vm)  # the guest assets come from scripts/test's set-up


@pytest.fixture
def config_file(tmp_path) -> Path:
    path = tmp_path / "pellucid.toml"
    path.write_text(f'[hypervisor]\nboot_timeout = {BOOT_TIMEOUT}\n[assets]\ndir = "{ASSETS}"\n')
    return path


@pytest.fixture(params=["fake", real])
def host(request):
    return fakes.FakeHost() if request.param == "fake" else SystemHost()


@pytest.fixture(params=["fake", real])
def machine(request, tmp_path, config_file):
    if request.param == "fake":
        vm = fakes.FakeVM()
    else:
        from pellucid.vm.assets import resolve
        from pellucid.vm.spec import make_spec
        cfg = load_config(str(config_file))
        vm = VM(make_spec(cfg, resolve(cfg), "tcg", vcpus=1, memory_mib=256), str(tmp_path))
    yield vm
    vm.stop()


class NoSuchOperation(messages.Request):
    """A request no agent knows."""

    __slots__ = ()
    OP = "no_such_operation"


def test_vm(machine):
    """NEW -> start -> handshake -> QMP and agent answer -> stop (idempotent) -> nothing answers."""
    assert machine.state is State.NEW and machine.pid == 0
    machine.start()
    assert machine.state is State.RUNNING and machine.pid > 0
    with pytest.raises(VMError, match="already running"):
        machine.start()
    hello = machine.handshake(BOOT_TIMEOUT)
    assert hello.version >= 1 and hello.kernel and machine.hello == hello
    assert 0 <= machine.timeline.kernel_ms <= machine.timeline.init_ms
    assert machine.monitor().execute("query-status")["status"] == "running"
    with pytest.raises(VMError):
        machine.monitor().execute("no-such-command")
    assert isinstance(machine.agent.call(messages.Ping()), messages.PingResult)
    with pytest.raises(AgentError) as err:
        machine.agent.call(NoSuchOperation())
    assert err.value.kind == "unsupported"
    machine.stop()
    assert machine.state is State.STOPPED
    machine.stop()
    with pytest.raises((VMError, OSError)):
        machine.agent.call(messages.Ping(), timeout=5)


def test_sandbox(host, tmp_path, config_file):
    """A VM's monitor launched, connected to, its shims started, refused and aborted, then stopped."""
    vm_dir = str(tmp_path / "root" / "c1" / "vm")
    os.makedirs(vm_dir)
    monitor = host.launch_vm(vm_dir, VMDescription(id="c1", config=str(config_file), vcpus=1, memory_mib=256))
    assert monitor.pid > 0 and monitor.start > 0
    info = monitor.wait_ready(BOOT_TIMEOUT + 30)
    assert (info.vcpus, info.memory_mib) == (1, 256)

    with host.connect(vm_dir) as agent:
        assert isinstance(agent.call(messages.Ping()), messages.PingResult)
        with pytest.raises(AgentError):
            agent.call(NoSuchOperation())

    # A request the agent refuses: the shim reports it and exits (its status is not a signal).
    shim = host.start_shim("", console=False)
    assert shim.pid > 0 and shim.start > 0
    with pytest.raises(ContainerError):
        shim.send(ShimRequest(monitor=os.path.join(vm_dir, MONITOR_SOCKET), op="exec_process",
                              args={"id": "nope", "process_spec": {"args": ["true"], "cwd": "/"}}), 60)
    assert shim.wait() == 1

    # A shim that never gets its request is asked to go (its request pipe closed), not killed.
    idle = host.start_shim("", console=False)
    idle.abort()
    assert idle.wait() == 1

    host.stop_vm(vm_dir, monitor.pid, monitor.start)
    with pytest.raises(VMError, match="not running"):
        host.connect(vm_dir)
    host.stop_vm(vm_dir, monitor.pid, monitor.start)  # idempotent
    if isinstance(host, SystemHost):
        deadline = time.monotonic() + 10
        while procs.alive(monitor.pid, monitor.start) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not procs.alive(monitor.pid, monitor.start)


def test_launch_failure_is_reported_and_leaves_no_monitor(host, tmp_path):
    vm_dir = str(tmp_path / "root" / "c1" / "vm")
    os.makedirs(vm_dir)
    if isinstance(host, fakes.FakeHost):
        host.fail = "wait_ready"
    monitor = host.launch_vm(vm_dir, VMDescription(id="c1", config=str(tmp_path / "missing.toml")))
    with pytest.raises(VMError):
        monitor.wait_ready(60)
    with pytest.raises(VMError):
        host.connect(vm_dir)
    assert not procs.alive(monitor.pid, monitor.start) or isinstance(host, fakes.FakeHost)
