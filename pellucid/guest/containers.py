"""Containers inside the VM. crun carries out each OCI config (namespaces, capabilities, seccomp,
rlimits, mounts, cgroups); the agent owns the processes' stdio, reaps them (it is PID 1) and
reports their exits. Hooks the host runs (prestart, createRuntime, poststart, poststop) were
removed from the config by the host; createContainer and startContainer run here, by crun.
"""

from __future__ import annotations

import fcntl
import json
import os
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import termios
import time

from .. import linux, messages, protocol
from .agent import Agent, AgentError

CRUN = "/usr/bin/crun"
CRUN_ROOT = "/run/crun"
BUNDLES = messages.GUEST_BUNDLES
CGROUP_ROOT = "/sys/fs/cgroup"
OUT_HIGH_WATER = 4 << 20  # stop reading container output while this much waits for the host
EXIT_DRAIN_SECONDS = 2.0  # how long an exit waits for output still buffered in its pipes


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
        self.stdin: int | None = None  # fd we write the process's stdin to (pty master when tty)
        self.outputs: dict[int, int] = {}  # fd we read -> protocol stream fd (STDOUT/STDERR)
        self.pending_in = bytearray()
        self.status: int | None = None
        self.exited_at = 0.0
        self.reported = False


class Containers:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.processes: dict[int, Process] = {}
        self.inits: dict[str, int] = {}  # container id -> process number of its init
        self._next = 1
        self._throttled: list[int] = []
        self.write_back = False  # a share is mounted with a cache that writes back later
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

    # crun.

    def _crun(self, *args: str, stdio: tuple[int, int, int] | None = None, timeout: float = 60.0,
              console: socket.socket | None = None) -> tuple[subprocess.Popen, int | None]:
        """Run crun; with ``console``, receive the pty master crun sends on it. Returns crun and that fd."""
        log = f"{messages.GUEST_RUN}/crun-{os.getpid()}-{time.monotonic_ns()}.log"
        argv = [CRUN, f"--root={CRUN_ROOT}", f"--log=file:{log}", "--log-format=json", *args]
        if stdio is None:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
        else:
            proc = subprocess.Popen(argv, stdin=stdio[0], stdout=stdio[1], stderr=stdio[2])
        master = None
        try:
            if console is not None:
                console.settimeout(timeout)
                try:
                    conn, _ = console.accept()
                except socket.timeout:
                    conn = None
                if conn is not None:
                    with conn:
                        _, fds, _, _ = socket.recv_fds(conn, 1024, 1)
                        master = fds[0] if fds else None
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        message = self._crun_error(log, proc)
        if proc.returncode != 0:
            if master is not None:
                os.close(master)
            raise AgentError(messages.ERR_CRUN, message or f"crun {args[0]} failed with status {proc.returncode}")
        return proc, master

    @staticmethod
    def _crun_error(log: str, proc: subprocess.Popen) -> str:
        lines = []
        try:
            with open(log) as f:
                for line in f.read(65536).splitlines():
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(entry, dict) and entry.get("level") == "error":
                        lines.append(str(entry.get("msg", "")))
            os.unlink(log)
        except OSError:
            pass
        if not lines and proc.stderr is not None and proc.returncode:
            lines.append(proc.stderr.read(4096).decode(errors="replace").strip())
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()
        return "; ".join(lines)[:4000]

    def _crun_output(self, *args: str) -> str:
        proc = subprocess.run([CRUN, f"--root={CRUN_ROOT}", *args], capture_output=True, timeout=30)
        if proc.returncode != 0:
            raise AgentError(messages.ERR_CRUN, proc.stderr.decode(errors="replace").strip()[:4000])
        return proc.stdout.decode(errors="replace")

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
                _, master = self._crun(*args, stdio=(devnull, devnull, devnull), console=console)
                if master is None:
                    raise AgentError(messages.ERR_CRUN, "crun sent no terminal")
                os.set_blocking(master, False)
                proc.stdin = master
                proc.outputs = {master: protocol.STDOUT}
            else:
                in_r, in_w = os.pipe2(os.O_CLOEXEC)
                out_r, out_w = os.pipe2(os.O_CLOEXEC)
                err_r, err_w = os.pipe2(os.O_CLOEXEC)
                child_fds = [in_r, out_w, err_w]
                try:
                    self._crun(*args, stdio=(in_r, out_w, err_w))
                except AgentError:
                    for fd in (in_w, out_r, err_r):
                        os.close(fd)
                    raise
                for fd in (in_w, out_r, err_r):
                    os.set_blocking(fd, False)
                proc.stdin = in_w
                proc.outputs = {out_r: protocol.STDOUT, err_r: protocol.STDERR}
        finally:
            for fd in child_fds:
                os.close(fd)
            if console is not None:
                console.close()
                os.unlink(sock_path)
        with open(pid_file) as f:
            proc.pid = int(f.read().strip())
        os.unlink(pid_file)
        self.agent.child_handlers[proc.pid] = lambda status, p=proc: self._exited(p, status)
        for fd in proc.outputs:
            self.agent.selector.register(fd, selectors.EVENT_READ, lambda mask, fd=fd, p=proc: self._read(p, fd))
        self.agent.stream_handlers[protocol.stream_id(proc.number, protocol.STDIN)] = \
            lambda data, p=proc: self._write_stdin(p, data)

    def _read(self, proc: Process, fd: int) -> None:
        if len(self.agent.out) > OUT_HIGH_WATER:
            self.agent.selector.unregister(fd)
            self._throttled.append(fd)
            return
        try:
            data = os.read(fd, protocol.MAX_STREAM_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # EIO on a pty master once the terminal's last user is gone
        if data:
            self.agent.send(protocol.stream(protocol.stream_id(proc.number, proc.outputs[fd]), data))
            return
        self._close_output(proc, fd)

    def _close_output(self, proc: Process, fd: int) -> None:
        stream = proc.outputs.pop(fd)
        try:
            self.agent.selector.unregister(fd)
        except KeyError:
            pass
        if fd == proc.stdin:
            proc.stdin = None
        os.close(fd)
        self.agent.send(protocol.stream(protocol.stream_id(proc.number, stream), b""))
        self._maybe_report(proc)

    def _write_stdin(self, proc: Process, data: bytes) -> None:
        if proc.stdin is None:
            return
        if not data:  # the host closed stdin
            if not proc.tty:
                os.close(proc.stdin)
                proc.stdin = None
            return
        proc.pending_in += data
        self._flush_stdin(proc)

    def _flush_stdin(self, proc: Process) -> None:
        fd = proc.stdin
        if fd is None:
            proc.pending_in.clear()
            return
        try:
            n = os.write(fd, proc.pending_in)
            del proc.pending_in[:n]
        except BlockingIOError:
            pass
        except OSError:
            proc.pending_in.clear()
        if len(proc.pending_in) > OUT_HIGH_WATER:
            proc.pending_in.clear()  # the process does not read its stdin: drop rather than grow

    def _exited(self, proc: Process, status: int) -> None:
        proc.status = 128 - status if status < 0 else status
        proc.exited_at = time.monotonic()
        self._maybe_report(proc)

    def _maybe_report(self, proc: Process) -> None:
        """The exit event follows the process's last output, or a bounded wait for it."""
        if proc.status is None or proc.reported:
            return
        if proc.outputs and time.monotonic() - proc.exited_at < EXIT_DRAIN_SECONDS:
            return
        proc.reported = True
        for fd in list(proc.outputs):
            self._close_output(proc, fd)
        if proc.stdin is not None and not proc.tty:
            os.close(proc.stdin)
        proc.stdin = None
        self.agent.stream_handlers.pop(protocol.stream_id(proc.number, protocol.STDIN), None)
        if self.write_back:  # what the process wrote is on the host before anyone hears it exited
            os.sync()
        self.agent.emit(messages.Exit(process=proc.number, container=proc.container, status=proc.status))

    def _tick(self) -> None:
        if self._throttled and len(self.agent.out) < OUT_HIGH_WATER // 2:
            for fd in self._throttled:
                proc = next((p for p in self.processes.values() if fd in p.outputs), None)
                if proc is not None:
                    self.agent.selector.register(fd, selectors.EVENT_READ, lambda m, fd=fd, p=proc: self._read(p, fd))
            self._throttled.clear()
        for proc in list(self.processes.values()):
            if proc.stdin is not None and proc.pending_in:
                self._flush_stdin(proc)
            self._maybe_report(proc)

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
        if request.cache in messages.SHARE_CACHES_WRITE_BACK:
            self.write_back = True

    def sync_shares(self, request: messages.SyncShares) -> None:
        """Only shares that cache need it. The guest's own root is a read-only DAX image and its other
        file systems are tmpfs, so the global sync and drop_caches touch nothing but the shares."""
        if not self.write_back:
            return
        os.sync()
        if request.invalidate:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3")

    def create(self, request: messages.CreateContainer) -> messages.ProcessResult:
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
            self._spawn(proc, ["create", f"--bundle={bundle}", f"--pid-file={pid_file}", cid], pid_file)
        except BaseException:
            del self.processes[proc.number]
            shutil.rmtree(bundle, ignore_errors=True)
            raise
        self.inits[cid] = proc.number
        return messages.ProcessResult(process=proc.number, pid=proc.pid)

    def start(self, request: messages.StartContainer) -> None:
        self._crun("start", request.id)

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
        if not proc.tty or proc.stdin is None:
            return
        fcntl.ioctl(proc.stdin, termios.TIOCSWINSZ, struct.pack("HHHH", request.rows, request.cols, 0, 0))

    def pause(self, request: messages.PauseContainer) -> None:
        self._crun("pause", request.id)

    def resume(self, request: messages.ResumeContainer) -> None:
        self._crun("resume", request.id)

    def update(self, request: messages.UpdateContainer) -> None:
        path = f"{BUNDLES}/{request.id}/update.json"
        with open(path, "w") as f:
            json.dump(request.resources, f)
        try:
            self._crun("update", f"--resources={path}", request.id)
        finally:
            os.unlink(path)

    def delete(self, request: messages.DeleteContainer) -> None:
        cid = request.id
        number = self.inits.get(cid)
        if number is not None and self.processes[number].status is None:
            try:
                self._crun("kill", "--all", cid, str(int(signal.SIGKILL)))
            except AgentError:
                pass
        try:
            self._crun("delete", "--force", cid)
        except AgentError:
            if os.path.exists(f"{CRUN_ROOT}/{cid}"):
                raise
        for n in [n for n, p in self.processes.items() if p.container == cid]:
            p = self.processes.pop(n)
            for fd in list(p.outputs):
                self._close_output(p, fd)
            if p.stdin is not None and not p.tty:
                os.close(p.stdin)
            self.agent.child_handlers.pop(p.pid, None)
        self.inits.pop(cid, None)
        shutil.rmtree(f"{BUNDLES}/{cid}", ignore_errors=True)

    def ps(self, request: messages.Ps) -> messages.PsResult:
        """The container's processes, read from the guest's /proc via its cgroup."""
        pids = json.loads(self._crun_output("ps", "--format=json", request.id) or "[]")
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

        cpu = keyed(read("cpu.stat"))
        mem = keyed(read("memory.stat"))
        limit = read("memory.max").strip()
        return messages.StatsResult(
            cpu_total=cpu.get("usage_usec", 0) * 1000, cpu_user=cpu.get("user_usec", 0) * 1000,
            cpu_kernel=cpu.get("system_usec", 0) * 1000, memory_usage=number(read("memory.current")),
            memory_limit=int(limit) if limit.isdigit() else 0, memory_cache=mem.get("file", 0), memory_raw=mem,
            pids_current=number(read("pids.current")))
