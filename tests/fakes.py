"""In-memory stand-ins for what the runtime drives outside its state store: the host (a VM's
monitor, shims, network namespaces, mounts, hooks), the agent as the runtime sees it, and one
VM (QEMU with its QMP and agent channels). tests/contract runs the same checks on these and on
the real things, so that they agree.

Failures are injected by name: ``FakeHost(fail="launch_vm")`` makes that step raise
:class:`Injected`; the names are the Host methods plus "boot_vm", "wait_ready", "send" and "hook:<stage>".
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable, Sequence

from pellucid import messages, protocol
from pellucid.errors import AgentError, ContainerError, VMError
from pellucid.host_messages import HostCgroup, Network, Nic, ShimReady, ShimRequest, VMDescription, VMInfo
from pellucid.procs import proc_start_time
from pellucid.vm.machine import BootTimeline, State

# Fake processes carry the test process's own pid and start time, so that the runtime's status
# check (pellucid.state.status) sees them alive; a fake stop never signals anything.
MY_PID = os.getpid()
MY_START = proc_start_time(MY_PID) or 0

# What the fake agent answers (the result record's JSON, None for a request without a result);
# any other operation is refused as the real agent refuses it.
ANSWERS: dict[str, Any] = {
    messages.Ping.OP: {"uptime_ms": 1}, messages.MountShare.OP: None, messages.SyncShares.OP: None,
    messages.ConfigureNetwork.OP: {"interfaces": []},
    messages.StartContainer.OP: {"crun_us": 1}, messages.SignalProcess.OP: None, messages.DeleteContainer.OP: None,
    messages.PauseContainer.OP: None, messages.ResumeContainer.OP: None, messages.UpdateContainer.OP: None,
    messages.Ps.OP: [{"pid": 1, "ppid": 0, "uid": 0, "state": "S", "utime": 0, "stime": 0, "start": 0,
                      "cmd": "sleep 60"}],
    messages.Stats.OP: messages.StatsResult(cpu_total=1, cpu_user=1, cpu_kernel=0, memory_usage=1 << 20,
                                            memory_limit=0, memory_cache=0, memory_raw={}, pids_current=1).to_json(),
}


class Injected(ContainerError):
    """A failure a test asked for."""


class FakeAgent:
    """The agent's side of a channel: answers requests from ANSWERS, refuses the rest."""

    def __init__(self, calls: list[tuple[str, dict[str, Any]]]) -> None:
        self.calls = calls
        self.closed = False

    def call(self, request: messages.Request, timeout: float = 30.0) -> Any:
        if self.closed:
            raise VMError("the agent channel closed (the VM stopped)")
        self.calls.append((request.OP, request.to_json()))
        if request.OP not in ANSWERS:
            raise AgentError(messages.ERR_UNSUPPORTED, f"unknown operation {request.OP!r}")
        answer = ANSWERS[request.OP]
        return request.read_result(answer)


class FakeConnection(FakeAgent):
    """A connection to a fake VM's monitor (a context manager, as the real one)."""

    def __init__(self, host: FakeHost, vm_dir: str) -> None:
        super().__init__(host.agent_calls)
        self.host, self.vm_dir = host, vm_dir

    def call(self, request: messages.Request, timeout: float = 30.0) -> Any:
        if self.vm_dir not in self.host.vms:
            raise VMError("the agent channel closed (the VM stopped)")
        self.host.on_agent_call(request.OP)
        return super().call(request, timeout)

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> FakeConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FakeMonitor:
    """A fake VM's monitor, started, not yet told what to boot."""

    def __init__(self, host: FakeHost, vm_dir: str, desc: VMDescription | None = None) -> None:
        self.host, self.vm_dir = host, vm_dir
        self.desc = desc
        self.pid, self.start = MY_PID, MY_START

    def boot(self, desc: VMDescription) -> None:
        self.host.step("boot_vm")
        self.desc = desc

    def wait_ready(self, timeout: float) -> VMInfo:
        try:
            self.host.step("wait_ready")
            if self.desc is None:
                raise Injected("wait_ready before boot")
        except Injected as err:
            self.host.vms.pop(self.vm_dir, None)  # as the real one: a monitor that fails is stopped
            raise VMError(str(err)) from err
        return VMInfo(accelerator="fake", vcpus=self.desc.vcpus, memory_mib=self.desc.memory_mib)


class FakeShim:
    def __init__(self, host: FakeHost, netns: str, console: bool) -> None:
        self.host, self.netns, self.console = host, netns, console
        self.pid, self.start = MY_PID, MY_START
        self.request: ShimRequest | None = None
        self.status: int | None = None  # the exit status once it has exited

    def send(self, request: ShimRequest, timeout: float) -> ShimReady:
        if self.request is not None or self.status is not None:
            raise ContainerError("the shim died before its request: Bad file descriptor")
        self.request = request
        self.host.step("send")
        vm_dir = os.path.dirname(request.monitor)
        if vm_dir not in self.host.vms:
            self.status = 1
            raise ContainerError("the VM monitor closed the connection")
        if request.op not in (messages.CreateContainer.OP, messages.ExecProcess.OP) or "id" not in request.args:
            self.status = 1
            raise ContainerError(f"unknown operation {request.op!r}")
        if request.op == messages.ExecProcess.OP and request.args["id"] not in self.host.containers:
            self.status = 1
            raise ContainerError(f"no container {request.args['id']!r}")
        self.host.agent_calls.append((request.op, dict(request.args)))
        self.host.containers.add(request.args["id"])
        self.host.next_process += 1
        return ShimReady(ok=True, process=self.host.next_process, guest_pid=100 + self.host.next_process)

    def abort(self) -> None:
        if self.status is None:
            self.status = 1 if self.request is None else 137  # waiting: asked to go; relaying: killed

    def wait(self) -> int:
        if self.status is None:
            self.status = 0
        return self.status

    @property
    def alive(self) -> bool:
        return self.status is None


class FakeHost:
    """The host, in memory: what exists is in the attributes, what was done in ``calls``."""

    def __init__(self, fail: str = "", on_agent_call: Callable[[str], None] = lambda op: None) -> None:
        self.fail = fail
        self.on_agent_call = on_agent_call
        self.calls: list[str] = []
        self.agent_calls: list[tuple[str, dict[str, Any]]] = []
        self.netns: set[str] = set()
        self.networks: dict[str, list[Nic]] = {}
        self.vms: dict[str, FakeMonitor] = {}
        self.shims: list[FakeShim] = []
        self.stopped_shims: list[tuple[int, int]] = []
        self.forced_vm_stops: list[str] = []  # the VM directories stopped with force
        self.shares: set[str] = set()
        self.mount_points: list[tuple[str, bool]] = []
        self.hooks: list[str] = []
        self.containers: set[str] = set()  # in the guests
        self.next_process = 0
        self.cgroups: dict[str, dict[str, Any]] = {}  # path -> the resources it was made with
        self.cgroup_updates: list[tuple[str, dict[str, Any]]] = []
        self.joined: list[tuple[str, list[str]]] = []  # (process, the cgroup dirs it started in)
        self.stopping: list[FakeMonitor] = []  # asked to stop, not yet waited for
        self.defer_background = False
        self.background: list[Callable[[], None]] = []

    def step(self, name: str) -> None:
        self.calls.append(name)
        if name == self.fail:
            raise Injected(f"injected failure in {name}")

    def live(self) -> dict[str, Any]:
        """Whatever exists on the fake host; empty when everything was undone."""
        out = {"netns": sorted(self.netns), "networks": sorted(self.networks), "vms": sorted(self.vms),
               "stopping": [m.vm_dir for m in self.stopping],
               "shims": [s for s in self.shims if s.alive], "shares": sorted(self.shares), "cgroups": sorted(self.cgroups)}
        return {k: v for k, v in out.items() if v}

    # The Host interface.

    def launch_vm(self, vm_dir: str, cgroup: Sequence[str] = ()) -> FakeMonitor:
        self.step("launch_vm")
        self.joined.append(("monitor", list(cgroup)))
        if vm_dir in self.vms:
            raise VMError(f"a VM runs in {vm_dir} already")
        monitor = self.vms[vm_dir] = FakeMonitor(self, vm_dir)
        return monitor

    def connect(self, vm_dir: str, timeout: float = 30.0) -> FakeConnection:
        self.step("connect")
        if vm_dir not in self.vms:
            raise VMError("the VM is not running (No such file or directory)")
        return FakeConnection(self, vm_dir)

    def stop_vm(self, vm_dir: str, monitor_pid: int, monitor_start: int, timeout: float = 10.0,
                force: bool = False, wait: bool = True) -> None:
        self.step("stop_vm")
        if force:
            self.forced_vm_stops.append(vm_dir)
        monitor = self.vms.get(vm_dir)
        if monitor is not None and (not monitor_pid or (monitor.pid, monitor.start) == (monitor_pid, monitor_start)):
            del self.vms[vm_dir]
            if not wait:  # asked: it exits later, wherever its directory has gone meanwhile
                self.stopping.append(monitor)
                return
        if wait:
            self.stopping = [m for m in self.stopping if (m.pid, m.start) != (monitor_pid, monitor_start)]

    def in_background(self, work: Callable[[], None]) -> None:
        """Run at once, or queued in ``background`` with ``defer_background`` (a test runs it later)."""
        self.step("in_background")
        if self.defer_background:
            self.background.append(work)
        else:
            work()

    def start_shim(self, netns: str, console: bool, cgroup: Sequence[str] = ()) -> FakeShim:
        self.step("start_shim")
        self.joined.append(("shim", list(cgroup)))
        shim = FakeShim(self, netns, console)
        self.shims.append(shim)
        return shim

    def stop_shim(self, pid: int, start: int, grace: float = 0.0) -> None:
        self.step("stop_shim")
        self.stopped_shims.append((pid, start))

    def make_cgroup(self, path: str, resources: dict[str, Any], overhead: HostCgroup) -> HostCgroup:
        self.step("make_cgroup")
        self.cgroups[path] = resources
        return HostCgroup(dirs=[f"/fake-cgroup{path if path.startswith('/') else '/' + path}"],
                          memory_overhead=overhead.memory_overhead, cpu_millis=overhead.cpu_millis,
                          pids=overhead.pids)

    def update_cgroup(self, cgroup: HostCgroup, resources: dict[str, Any]) -> None:
        self.step("update_cgroup")
        self.cgroup_updates.append((cgroup.dirs[0], resources))

    def remove_cgroup(self, cgroup: HostCgroup) -> None:
        self.step("remove_cgroup")
        for path in list(self.cgroups):
            if cgroup.dirs == [f"/fake-cgroup{path if path.startswith('/') else '/' + path}"]:
                del self.cgroups[path]

    def pin_netns(self, path: str) -> None:
        self.step("pin_netns")
        self.netns.add(path)

    def release_netns(self, path: str) -> None:
        self.step("release_netns")
        self.netns.discard(path)

    def connect_network(self, netns: str, mode: str, owner: str) -> Network:
        self.step("connect_network")
        nics = [Nic(name="eth0", index=2, mac="02:42:a9:fe:4d:02", mtu=1500, tap="pltap0")]
        self.networks[netns] = nics
        return Network(nics=nics)

    def disconnect_network(self, netns: str, nics: list[Nic], owner: str) -> None:
        self.step("disconnect_network")
        self.networks.pop(netns, None)

    def make_mount_points(self, rootfs: str, points: list[tuple[str, bool]]) -> None:
        self.step("make_mount_points")
        self.mount_points.extend(points)

    def share(self, container_dir: str, rootfs: str, binds: list[Any]) -> None:
        self.shares.add(container_dir)  # as the real one: a half-made share is there to undo
        self.step("share")

    def unshare(self, container_dir: str) -> None:
        self.step("unshare")
        self.shares.discard(container_dir)

    def unmount_all(self, path: str) -> None:
        self.step("unmount_all")
        self.shares = {s for s in self.shares if not (s == path or s.startswith(path + "/"))}

    def run_hooks(self, stage: str, hooks: list[dict[str, Any]], state: dict[str, Any], cwd: str | None) -> None:
        self.hooks.append(stage)
        self.step(f"hook:{stage}")


class FakeQMP:
    def __init__(self, vm: FakeVM) -> None:
        self.vm = vm

    def execute(self, command: str, **arguments: Any) -> Any:
        if self.vm.state is not State.RUNNING:
            raise VMError("QMP: QEMU closed the monitor")
        if command == "query-status":
            return {"status": "running", "running": True}
        if command == "quit":
            self.vm.state = State.STOPPED
            return {}
        raise VMError(f"QMP {command}: The command {command} has not been found")


class FakeVM:
    """One VM, as pellucid.vm.machine.VM presents it: start, handshake, QMP, stop."""

    def __init__(self, spec: Any = None, workdir: str = "") -> None:
        self.spec, self.workdir = spec, workdir
        self.state = State.NEW
        self.agent_calls: list[tuple[str, dict[str, Any]]] = []
        self.agent: FakeAgent | None = None
        self.hello: messages.HelloResult | None = None
        self.timeline: BootTimeline | None = None

    @property
    def pid(self) -> int:
        return MY_PID if self.state is State.RUNNING else 0

    def start(self) -> None:
        if self.state is not State.NEW:
            raise VMError(f"VM already {self.state.value}")
        self.state = State.RUNNING
        self.agent = FakeAgent(self.agent_calls)

    def handshake(self, timeout: float) -> messages.HelloResult:
        if self.state is not State.RUNNING:
            raise VMError("the VM did not come up: it is not running")
        self.hello = messages.HelloResult(version=protocol.VERSION, kernel="6.1.0-fake", boot_id="0" * 36,
                                          rootfs_dax=True, init_ms=1, uptime_ms=2)
        self.timeline = BootTimeline(kernel_ms=1.0, init_ms=2.0, agent_ms=3.0)
        return self.hello

    def monitor(self) -> FakeQMP:
        return FakeQMP(self)

    def stop(self, timeout: float = 3.0) -> None:
        self.state = State.STOPPED
        if self.agent is not None:
            self.agent.closed = True

    def __enter__(self) -> FakeVM:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SocketVM:
    """The monitor's view of a booted VM whose agent channel is ``sock`` (one end of a socket
    pair the test plays the agent on): what the monitor's stream and bound tests drive."""

    def __init__(self, sock: socket.socket) -> None:
        self.agent = type("Agent", (), {"sock": sock, "reader": protocol.FrameReader()})()
        self.proc = None

    def stop(self) -> None:
        self.agent.sock.close()
