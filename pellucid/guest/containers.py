"""Containers inside the VM: the agent's requests about them. crun (pellucid.guest.crun) carries
out each OCI config (namespaces, capabilities, seccomp, rlimits, mounts, cgroups); the agent owns
the processes' stdio (pellucid.guest.stdio), reaps them (it is PID 1) and reports their exits. Hooks the host runs (prestart, createRuntime, poststart, poststop) were
removed from the config by the host; createContainer and startContainer run here, by crun.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import struct
import termios
import time

from .. import linux, messages, protocol
from . import crun
from .agent import Agent, AgentError
from .stdio import Stdio

BUNDLES = messages.GUEST_BUNDLES
CGROUP_ROOT = "/sys/fs/cgroup"


def set_net_sysctls(values: dict[str, str]) -> None:
    """The container's net.* sysctls (names checked by the request), on the VM's network namespace
    (which is the container's)."""
    for key, value in values.items():
        try:
            with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                f.write(value)
        except OSError as err:
            raise AgentError(messages.ERR_SYSCTL, f"sysctl {key}: {err.strerror}") from err


class Process:
    """One process the host sees: a container's init or an exec'd process."""

    def __init__(self, number: int, container: str, tty: bool) -> None:
        self.number = number
        self.container = container
        self.tty = tty
        self.pid = 0
        self.stdio: Stdio | None = None
        self.status: int | None = None
        self.exited_at = 0.0
        self.reported = False


class Containers:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.processes: dict[int, Process] = {}
        self.inits: dict[str, int] = {}  # container id -> process number of its init
        self._next = 1
        self.caching = False  # a share is mounted with cache=loose: the guest keeps what it read
        os.makedirs(BUNDLES, exist_ok=True)
        for request, handler in (
                (messages.CreateContainer, self.create), (messages.StartContainer, self.start),
                (messages.ExecProcess, self.exec), (messages.SignalProcess, self.signal),
                (messages.Resize, self.resize), (messages.PauseContainer, self.pause),
                (messages.ResumeContainer, self.resume), (messages.DeleteContainer, self.delete),
                (messages.Ps, self.ps), (messages.Stats, self.stats), (messages.UpdateContainer, self.update),
                (messages.MountShare, self.mount_share), (messages.SyncShares, self.sync_shares)):
            agent.handle(request, handler)
        agent.on_tick.append(self._tick)

    # Processes and their stdio.

    def _new_process(self, container: str, tty: bool) -> Process:
        number = self._next
        self._next += 1
        proc = Process(number, container, tty)
        self.processes[number] = proc
        return proc

    def _spawn(self, proc: Process, args: list[str], pid_file: str) -> None:
        """Run ``crun create`` or ``crun exec`` with the process's stdio wired to the agent."""
        console = None
        child_fds: list[int] = []
        try:
            if proc.tty:
                sock_path = f"{messages.GUEST_RUN}/console-{proc.number}.sock"
                console = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                console.bind(sock_path)
                console.listen(1)
                args = [args[0], f"--console-socket={sock_path}", *args[1:]]
                devnull = os.open("/dev/null", os.O_RDWR)
                child_fds = [devnull]
                _, master = crun.run(*args, stdio=(devnull, devnull, devnull), console=console)
                if master is None:
                    raise AgentError(messages.ERR_CRUN, "crun sent no terminal")
                os.set_blocking(master, False)
                stdin, outputs = master, {master: protocol.STDOUT}
            else:
                in_r, in_w = os.pipe2(os.O_CLOEXEC)
                out_r, out_w = os.pipe2(os.O_CLOEXEC)
                err_r, err_w = os.pipe2(os.O_CLOEXEC)
                child_fds = [in_r, out_w, err_w]
                try:
                    crun.run(*args, stdio=(in_r, out_w, err_w))
                except AgentError:
                    for fd in (in_w, out_r, err_r):
                        os.close(fd)
                    raise
                for fd in (in_w, out_r, err_r):
                    os.set_blocking(fd, False)
                stdin, outputs = in_w, {out_r: protocol.STDOUT, err_r: protocol.STDERR}
        finally:
            for fd in child_fds:
                os.close(fd)
            if console is not None:
                console.close()
                os.unlink(sock_path)
        with open(pid_file) as f:
            proc.pid = int(f.read().strip())
        os.unlink(pid_file)
        proc.stdio = Stdio(self.agent, proc.number, stdin, outputs, proc.tty, lambda p=proc: self._maybe_report(p))
        self.agent.child_handlers[proc.pid] = lambda status, p=proc: self._exited(p, status)

    def _exited(self, proc: Process, status: int) -> None:
        proc.status = 128 - status if status < 0 else status
        proc.exited_at = time.monotonic()
        self._maybe_report(proc)

    def _maybe_report(self, proc: Process) -> None:
        """The exit event follows the process's last output (see Stdio.drained)."""
        if proc.status is None or proc.reported or proc.stdio is None or not proc.stdio.drained(proc.exited_at):
            return
        proc.reported = True
        proc.stdio.close()
        if self.caching:  # dirty pages of shared mappings are on the host before anyone hears of the exit
            os.sync()
        self.agent.emit(messages.Exit(process=proc.number, container=proc.container, status=proc.status))

    def _tick(self) -> bool:
        """Report the exits whose output has drained; whether some exit still waits for its output."""
        waiting = False
        for proc in list(self.processes.values()):
            self._maybe_report(proc)
            waiting |= proc.status is not None and not proc.reported
        return waiting

    def _process(self, number: int) -> Process:
        proc = self.processes.get(number)
        if proc is None:
            raise AgentError(messages.ERR_NOT_FOUND, f"no process {number}")
        return proc

    # Requests.

    def mount_share(self, request: messages.MountShare) -> None:
        target = messages.share_mount_point(request.tag)
        os.makedirs(target, exist_ok=True)
        if not os.path.ismount(target):
            linux.mount(request.tag, target, "9p", linux.MS_NODEV,
                        f"trans=virtio,version=9p2000.L,msize={request.msize},cache={request.cache},posixacl")
            # Shared, as a bind source is on a systemd host: a container whose config asks for
            # shared propagation (rootfsPropagation, "rshared" binds) gets binds that are peers.
            linux.mount("none", target, None, linux.MS_SHARED)
        if request.cache in messages.SHARE_CACHES_CACHED:
            self.caching = True

    def sync_shares(self, request: messages.SyncShares) -> None:
        """Only shares mounted with cache=loose need it. The guest's own root is a read-only DAX image
        and its other file systems are tmpfs, so the global sync and drop_caches touch nothing but
        the shares."""
        if not self.caching:
            return
        os.sync()
        if request.invalidate:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3")

    def create(self, request: messages.CreateContainer) -> messages.ProcessResult:
        began = time.monotonic_ns()
        cid = request.id
        if cid in self.inits:
            raise AgentError(messages.ERR_EXISTS, f"container {cid} exists")
        set_net_sysctls(request.net_sysctls)
        bundle = f"{BUNDLES}/{cid}"
        os.makedirs(bundle, exist_ok=True)
        with open(f"{bundle}/config.json", "w") as f:
            json.dump(request.config, f)
        proc = self._new_process(cid, request.tty)
        pid_file = f"{bundle}/init.pid"
        try:
            spawned = time.monotonic_ns()
            self._spawn(proc, ["create", f"--bundle={bundle}", f"--pid-file={pid_file}", cid], pid_file)
        except BaseException:
            del self.processes[proc.number]
            shutil.rmtree(bundle, ignore_errors=True)
            raise
        self.inits[cid] = proc.number
        done = time.monotonic_ns()
        return messages.ProcessResult(process=proc.number, pid=proc.pid, agent_us=(done - began) // 1000,
                                      crun_us=(done - spawned) // 1000)

    def start(self, request: messages.StartContainer) -> messages.CrunResult:
        began = time.monotonic_ns()
        crun.run("start", request.id)
        return messages.CrunResult(crun_us=(time.monotonic_ns() - began) // 1000)

    def exec(self, request: messages.ExecProcess) -> messages.ProcessResult:
        cid = request.id
        if cid not in self.inits:
            raise AgentError(messages.ERR_NOT_FOUND, f"container {cid} does not exist")
        tty = bool(request.process_spec.get("terminal", False))
        proc = self._new_process(cid, tty)
        spec = f"{BUNDLES}/{cid}/exec-{proc.number}.json"
        with open(spec, "w") as f:
            json.dump(request.process_spec, f)
        pid_file = f"{BUNDLES}/{cid}/exec-{proc.number}.pid"
        try:
            self._spawn(proc, ["exec", f"--process={spec}", "--detach", f"--pid-file={pid_file}", cid], pid_file)
        except BaseException:
            del self.processes[proc.number]
            raise
        finally:
            os.unlink(spec)
        return messages.ProcessResult(process=proc.number, pid=proc.pid)

    def signal(self, request: messages.SignalProcess) -> None:
        """Signal a process directly (crun kill would cost a process start, slow under TCG); with
        ``all``, every process in the container's cgroup, as runc kill --all does."""
        proc = self._process(request.process)
        if proc.status is not None:
            raise AgentError(messages.ERR_STOPPED, "the process has already exited")
        pids = [proc.pid]
        if request.all and self.inits.get(proc.container) == proc.number:
            try:
                with open(f"{CGROUP_ROOT}/pellucid/{proc.container}/cgroup.procs") as f:
                    pids = [int(p) for p in f.read().split()] or pids
            except OSError:
                pass
        for pid in pids:
            try:
                os.kill(pid, request.signal)
            except ProcessLookupError:
                pass

    def resize(self, request: messages.Resize) -> None:
        proc = self._process(request.process)
        terminal = proc.stdio.terminal if proc.stdio is not None else None
        if terminal is None:
            return
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", request.rows, request.cols, 0, 0))

    def pause(self, request: messages.PauseContainer) -> None:
        crun.run("pause", request.id)

    def resume(self, request: messages.ResumeContainer) -> None:
        crun.run("resume", request.id)

    def update(self, request: messages.UpdateContainer) -> None:
        path = f"{BUNDLES}/{request.id}/update.json"
        with open(path, "w") as f:
            json.dump(request.resources, f)
        try:
            crun.run("update", f"--resources={path}", request.id)
        finally:
            os.unlink(path)

    def delete(self, request: messages.DeleteContainer) -> None:
        cid = request.id
        number = self.inits.get(cid)
        if number is not None and self.processes[number].status is None:
            try:
                crun.run("kill", "--all", cid, str(int(signal.SIGKILL)))
            except AgentError:
                pass
        try:
            crun.run("delete", "--force", cid)
        except AgentError:
            if os.path.exists(f"{crun.ROOT}/{cid}"):
                raise
        for n in [n for n, p in self.processes.items() if p.container == cid]:
            p = self.processes.pop(n)
            if p.stdio is not None:
                p.stdio.close()
            self._maybe_report(p)
            self.agent.child_handlers.pop(p.pid, None)
        self.inits.pop(cid, None)
        shutil.rmtree(f"{BUNDLES}/{cid}", ignore_errors=True)

    def ps(self, request: messages.Ps) -> messages.PsResult:
        """The container's processes, read from the guest's /proc via its cgroup."""
        pids = json.loads(crun.output("ps", "--format=json", request.id) or "[]")
        result = []
        for pid in pids if isinstance(pids, list) else []:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read()
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read(4096).replace(b"\0", b" ").decode(errors="replace").strip()
                with open(f"/proc/{pid}/status") as f:
                    uid = next((line.split()[1] for line in f if line.startswith("Uid:")), "0")
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            result.append(messages.PsEntry(pid=int(pid), ppid=int(fields[1]), uid=int(uid), state=fields[0],
                                           utime=int(fields[11]), stime=int(fields[12]), start=int(fields[19]),
                                           cmd=cmd or f"[{comm}]"))
        return messages.PsResult(result)

    def stats(self, request: messages.Stats) -> messages.StatsResult:
        cid = request.id
        base = f"{CGROUP_ROOT}/pellucid/{cid}"
        if not os.path.isdir(base):
            raise AgentError(messages.ERR_NOT_FOUND, f"no cgroup for container {cid}")

        def read(name: str) -> str:
            try:
                with open(f"{base}/{name}") as f:
                    return f.read(65536)
            except OSError:
                return ""

        def keyed(text: str) -> dict[str, int]:
            out = {}
            for line in text.splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1].isdigit():
                    out[parts[0]] = int(parts[1])
            return out

        def number(text: str) -> int:
            text = text.strip()
            return int(text) if text.isdigit() else 0

        def limit(name: str) -> int:
            text = read(name).strip()
            return int(text) if text.isdigit() else 0  # "max" or absent: none

        cpu = keyed(read("cpu.stat"))
        mem = keyed(read("memory.stat"))
        return messages.StatsResult(
            cpu_total=cpu.get("usage_usec", 0) * 1000, cpu_user=cpu.get("user_usec", 0) * 1000,
            cpu_kernel=cpu.get("system_usec", 0) * 1000, memory_usage=number(read("memory.current")),
            memory_limit=limit("memory.max"), memory_cache=mem.get("file", 0), memory_raw=mem,
            pids_current=number(read("pids.current")), memory_max=number(read("memory.peak")),
            memory_failcnt=keyed(read("memory.events")).get("max", 0), pids_limit=limit("pids.max"),
            cpu_periods=cpu.get("nr_periods", 0), cpu_throttled_periods=cpu.get("nr_throttled", 0),
            cpu_throttled_time=cpu.get("throttled_usec", 0) * 1000, network=interface_stats())


def interface_stats() -> list[messages.InterfaceStats]:
    """The VM's interfaces but loopback: the container's network namespace is the VM's."""
    out = []
    for name in sorted(os.listdir("/sys/class/net"))[:256]:
        if name == "lo":
            continue
        counters = {}
        for counter in messages.InterfaceStats.NAMES:
            try:
                with open(f"/sys/class/net/{name}/statistics/{counter}") as f:
                    counters[counter] = int(f.read().strip() or 0)
            except (OSError, ValueError):
                pass
        out.append(messages.InterfaceStats(name, **counters))
    return out
