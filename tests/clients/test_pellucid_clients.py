"""Real clients with pellucid as their runtime: Docker, containerd's ctr and podman run busybox
containers, and each container really runs in a VM of its own (its kernel release and boot id
are not the host's).

Every client is a private one from the harness (its own daemons, state and storage under /tmp).
After each scenario the runtime must have left nothing: no QEMU process of ours, no mount under
pellucid's state directories, no container state, and the harness's own checks pass.

Bridge networking is not asserted here beyond one test that a container on Docker's default
bridge starts (Docker's libnetwork-setkey prestart hook must run on the host): everything else
uses `--network none`.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.evidence import keep_on_failure

from . import harness

PELLUCID = os.environ.get("PELLUCID_TEST_BINARY", "/usr/local/bin/pellucid")  # a worktree's .venv/bin/pellucid
PODMAN_ROOT = "/run/pellucid"  # podman passes no --root: pellucid's default
SHOW_VM = "uname -r; cat /proc/sys/kernel/random/boot_id"
TIMEOUT = 300  # a client command that boots a VM under TCG, with other VMs booting meanwhile

pytestmark = pytest.mark.clients


def host_boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def assert_in_vm(output: str) -> tuple[str, str]:
    """`uname -r; cat boot_id` output: both lines present, and neither the host's. Returns them."""
    lines = output.split()
    assert len(lines) == 2, f"expected a kernel release and a boot id, got {output!r}"
    release, boot_id = lines
    assert release != os.uname().release, f"the container ran on the host's kernel {release}"
    assert len(boot_id) == 36 and boot_id.count("-") == 4, f"not a boot id: {boot_id!r}"
    assert boot_id != host_boot_id(), "the container has the host's boot id: it did not run in a VM"
    return release, boot_id


# ---------------------------------------------------------------------------------------
# What the runtime leaves behind


def qemu_pids() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "qemu-system"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _state_entries(root: Path) -> set[str]:
    try:
        return {p.name for p in root.iterdir() if not p.name.startswith(".")}
    except FileNotFoundError:
        return set()


def evidence(*dirs: Path | None) -> str:
    """pellucid's logs under the given directories (the --log files, the VMs' monitor logs)."""
    parts = []
    for d in dirs:
        if d is None or not d.exists():
            continue
        for pattern in ("**/log.json", "**/vm/monitor.log", "**/vm/qemu.log", "**/vm/console.log"):
            for path in sorted(d.glob(pattern))[:8]:
                with_text = path.read_text(errors="replace")[-3000:]
                parts.append(f"\n--- {path}:\n{with_text}")
    return "".join(parts)


class VMWatch:
    """QEMU processes started since the test began that belong to the given state roots."""

    def __init__(self) -> None:
        self.before = qemu_pids()
        self.roots: list[str] = []

    def ours(self) -> set[int]:
        return {pid for pid in qemu_pids() - self.before
                if any(root in _cmdline(pid) for root in self.roots)}

    def assert_none_left(self, grace: float = 30.0) -> None:
        """Wait up to `grace` s for our VMs to go (delete is synchronous, but be kind to a loaded
        host), then fail naming any that is still there."""
        deadline = time.monotonic() + grace
        while self.ours() and time.monotonic() < deadline:
            time.sleep(0.2)
        left = {pid: _cmdline(pid)[:300] for pid in self.ours()}
        assert not left, f"QEMU processes left behind: {left}"


def assert_runtime_clean(watch: VMWatch, state_root: Path, *, entries_before: set[str] = frozenset(),
                         mounts_before: set[str] = frozenset()) -> None:
    """No VM, no container state and no mount left by pellucid under `state_root` (beyond what
    was there before, for a root shared with others)."""
    watch.assert_none_left()
    entries = _state_entries(state_root) - entries_before
    assert not entries, f"containers left in {state_root}: {entries}" + evidence(state_root)
    mounts = set(harness.mounts_under(state_root)) - mounts_before if state_root.exists() else set()
    assert not mounts, f"mounts left under {state_root}: {sorted(mounts)}"


@pytest.fixture(scope="module")
def tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return harness.busybox_tarball(tmp_path_factory.mktemp("image"))


@pytest.fixture
def pellucid_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A generous boot timeout (TCG on shared cores, other VMs booting): clients start their
    daemons with our environment, and pass it down to the runtime."""
    path = tmp_path / "pellucid.toml"
    text = "[hypervisor]\nboot_timeout = 240\n"
    assets = os.environ.get("PELLUCID_TEST_ASSETS_DIR")  # a checkout whose guest code differs builds its own
    if assets:
        text += f'[assets]\ndir = "{assets}"\n'
    path.write_text(text)
    monkeypatch.setenv("PELLUCID_CONFIG", str(path))
    return path


@pytest.fixture
def vms(pellucid_config: Path) -> Iterator[VMWatch]:
    watch = VMWatch()
    yield watch
    # Whatever the harness killed at its exit: none of our VMs may survive the test.
    leftover = watch.ours()
    for pid in leftover:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    assert not leftover, f"QEMU processes survived the test: {leftover}"


@pytest.fixture
def host_unchanged() -> Iterator[None]:
    """Fail if a scenario leaves a network link, a veth, or a harness mount behind."""
    links_before = set(os.listdir("/sys/class/net"))
    veths_before = harness.veths()
    yield
    assert set(os.listdir("/sys/class/net")) - links_before == set()
    assert harness.veths() - veths_before == set()
    assert [m for m in harness.mounts_under("/tmp") if m.startswith(("/tmp/pcc-", "/tmp/pcd-", "/tmp/pcp-"))] == []


# ---------------------------------------------------------------------------------------
# Docker


@pytest.fixture
def dockerd(tarball: Path, vms: VMWatch, host_unchanged: None,
            request: pytest.FixtureRequest) -> Iterator[harness.Dockerd]:
    """A private dockerd with pellucid registered as runtime `pellucid`, local/busybox imported.
    After the test: nothing of pellucid's left under its --root, then the harness's checks.
    A failed test keeps the daemons' logs, docker's exec-root (pellucid's --root and VMs) and
    containerd's state (the bundles, with pellucid's --log)."""
    harness.need("dockerd", "containerd")
    with harness.Dockerd(runtimes={"pellucid": PELLUCID}) as d:
        assert d.dir is not None and d.containerd is not None and d.containerd.dir is not None
        keep_on_failure(request.node, *d.logs(), d.dir / "x", d.containerd.dir / "state")
        vms.roots.append(str(d.dir))
        d.import_image(tarball)
        # Docker's --root for the runtime: <exec-root>/runtime-<name>/moby (dockerd 20.10 names
        # every io.containerd.runc.v2 runtime "runc" there).
        d.pellucid_root = d.dir / "x"
        yield d
        ids = d.docker("ps", "-aq", check=False).stdout.split()
        if ids:
            d.docker("rm", "-f", *ids, check=False, timeout=120)
        roots = sorted(d.pellucid_root.glob("runtime-*/moby"))
        assert roots, f"docker never called the runtime with a --root under {d.pellucid_root}"
        for root in roots:
            assert_runtime_clean(vms, root)
    assert d.leftovers() == []
    assert d.proc is not None and d.proc.poll() is not None, "dockerd still running"


def _docker_evidence(d: harness.Dockerd) -> str:
    """pellucid's --log files (in containerd's bundles) and VM logs (under docker's exec-root)."""
    assert d.dir is not None
    extra = evidence(d.dir / "x")
    if d.containerd is not None and d.containerd.dir is not None:
        extra += evidence(d.containerd.dir / "state")
    return extra


def docker_fail_message(d: harness.Dockerd, out: subprocess.CompletedProcess[str]) -> str:
    return f"exit {out.returncode}\nstdout: {out.stdout}\nstderr: {out.stderr}" + _docker_evidence(d)


def run_pellucid(d: harness.Dockerd, *args: str, input: str | None = None,
                 network: str = "none") -> subprocess.CompletedProcess[str]:
    return d.docker("run", "--runtime", "pellucid", "--network", network, *args,
                    check=False, timeout=TIMEOUT, input=input)


def test_docker_run_in_a_vm(dockerd: harness.Dockerd) -> None:
    """docker run --rm prints the guest's kernel release and boot id, not the host's."""
    out = run_pellucid(dockerd, "--rm", "local/busybox", "sh", "-c", SHOW_VM)
    assert out.returncode == 0, docker_fail_message(dockerd, out)
    assert_in_vm(out.stdout)
    assert out.stderr == ""


def test_docker_exit_code_propagates(dockerd: harness.Dockerd) -> None:
    """The container's exit status is docker's: 3 for `exit 3`."""
    out = run_pellucid(dockerd, "--rm", "local/busybox", "sh", "-c", "echo before-exit; exit 3")
    assert out.returncode == 3, docker_fail_message(dockerd, out)
    assert out.stdout == "before-exit\n"


def test_docker_run_interactive_stdin(dockerd: harness.Dockerd) -> None:
    """docker run -i: stdin piped in reaches the container's `cat`, and its EOF ends it."""
    text = "line one\nline two\n" + "x" * 10000 + "\n"
    out = run_pellucid(dockerd, "--rm", "-i", "local/busybox", "cat", input=text)
    assert out.returncode == 0, docker_fail_message(dockerd, out)
    assert out.stdout == text


def _docker_size(text: str) -> float:
    """docker stats' "12.5MiB" in bytes."""
    units = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "kB": 1e3, "MB": 1e6, "GB": 1e9}
    number = text.rstrip("BKMGiko")
    return float(number) * units[text[len(number):]]


def _docker_stats(d: harness.Dockerd, name: str) -> tuple[float, float, int]:
    """(memory used, memory limit, pids) as `docker stats` shows them."""
    out = d.docker("stats", "--no-stream", "--format", "{{.MemUsage}}|{{.PIDs}}", name, timeout=TIMEOUT)
    usage, pids = out.stdout.strip().split("|")
    used, limit = (_docker_size(part.strip()) for part in usage.split("/"))
    return used, limit, int(pids)


def test_docker_stats_show_what_the_vm_costs_the_host(dockerd: harness.Dockerd) -> None:
    """The VM (QEMU, monitor, shim) is in the shim's host cgroup, which containerd's shim reads:
    the limit is the container's plus the declared overhead, and the usage moves by the 100 MiB
    the container touches."""
    from pellucid.config import OverheadConfig
    out = run_pellucid(dockerd, "-d", "--name", "st", "-m", "256m", "local/busybox", "sleep", "1000")
    assert out.returncode == 0, docker_fail_message(dockerd, out)
    time.sleep(3)
    used, limit, pids = _docker_stats(dockerd, "st")
    assert limit == (256 + 256 + OverheadConfig().memory_mib) << 20  # limit + guest base RAM + overhead
    assert pids > 3  # the shim, the monitor, QEMU and its threads: not 0
    dockerd.docker("exec", "-d", "st", "sh", "-c", "dd if=/dev/zero bs=100M count=1 | sleep 600", timeout=TIMEOUT)
    deadline = time.monotonic() + 90
    grown = 0.0
    while time.monotonic() < deadline and grown < 90 << 20:
        time.sleep(2)
        grown = _docker_stats(dockerd, "st")[0] - used
    assert grown >= 90 << 20, f"docker stats moved by {grown / (1 << 20):.1f} MiB"
    dockerd.docker("rm", "-f", "st", timeout=TIMEOUT)


def test_docker_run_oom_killed_inside_its_vm(dockerd: harness.Dockerd) -> None:
    """-m 64m is the guest's limit: a process going past it is OOM-killed in the VM, and an init
    killed so exits 137. The host cgroup (limit plus overhead) never fills, so Docker's OOMKilled,
    which comes from the host cgroup's OOM events, stays false: see the README."""
    out = run_pellucid(dockerd, "--name", "oom", "-m", "64m", "local/busybox", "dd", "if=/dev/zero", "of=/dev/null",
                       "bs=100M", "count=1")
    assert out.returncode == 137, docker_fail_message(dockerd, out)
    state = dockerd.docker("inspect", "--format", "{{.State.ExitCode}} {{.State.OOMKilled}}", "oom").stdout.split()
    assert state == ["137", "false"], state
    dockerd.docker("rm", "-f", "oom", timeout=TIMEOUT)


def _read_pty(fd: int, proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 0.5)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            buf += chunk
        elif proc.poll() is not None:
            break
    return buf


def test_docker_run_tty(dockerd: harness.Dockerd) -> None:
    """docker run -t on a terminal: the container's stdin is a tty, and its output comes through."""
    master, slave = pty.openpty()
    argv = [dockerd.docker_cli, "-H", dockerd.host, "run", "--rm", "-t", "--runtime", "pellucid",
            "--network", "none", "local/busybox", "sh", "-c", "tty; [ -t 1 ] && echo stdout-is-a-tty; exit 5"]
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=dockerd.env(),
                            start_new_session=True)
    os.close(slave)
    try:
        data = _read_pty(master, proc, 120)
        try:
            code: int | None = proc.wait(30)
        except subprocess.TimeoutExpired:
            code = None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    text = data.decode(errors="replace").replace("\r", "")
    assert code is not None, (f"docker run -t did not finish; its terminal showed {text!r}\n"
                              f"{dockerd.docker('ps', '-a', check=False).stdout}" + _docker_evidence(dockerd))
    assert code == 5, f"docker exited {code}: {text}" + _docker_evidence(dockerd)
    assert "/dev/pts/" in text and "stdout-is-a-tty" in text, text


def test_docker_detached_lifecycle(dockerd: harness.Dockerd) -> None:
    """run -d, exec (with and without stdin), top, pause/unpause, stop -t 2, rm: all through pellucid."""
    out = run_pellucid(dockerd, "-d", "local/busybox", "sleep", "3600")
    assert out.returncode == 0, docker_fail_message(dockerd, out)
    cid = out.stdout.strip()
    assert dockerd.docker("inspect", "-f", "{{.State.Status}}", cid).stdout.strip() == "running"
    assert list(dockerd.pellucid_root.glob(f"runtime-*/moby/{cid}/state.json")), "no pellucid state for the container"

    # exec: the same VM as the container's, not the host.
    ex = dockerd.docker("exec", cid, "sh", "-c", SHOW_VM, check=False, timeout=TIMEOUT)
    assert ex.returncode == 0, docker_fail_message(dockerd, ex)
    _, boot_id = assert_in_vm(ex.stdout)
    again = dockerd.docker("exec", cid, "cat", "/proc/sys/kernel/random/boot_id", check=False, timeout=TIMEOUT)
    assert again.returncode == 0 and again.stdout.strip() == boot_id, docker_fail_message(dockerd, again)
    code = dockerd.docker("exec", cid, "sh", "-c", "exit 4", check=False, timeout=TIMEOUT)
    assert code.returncode == 4, docker_fail_message(dockerd, code)

    # exec -i: stdin piped through to the exec'd process, its EOF ends it.
    ei = dockerd.docker("exec", "-i", cid, "sh", "-c", "cat; echo done", input="through exec stdin\n",
                        check=False, timeout=TIMEOUT)
    assert ei.returncode == 0, docker_fail_message(dockerd, ei)
    assert ei.stdout == "through exec stdin\ndone\n"

    # top: docker asks the runtime for pids (`ps --format json`) and picks those rows out of the
    # host's `ps -ef`. Guest pids are not host pids: docker may fail, or list the host processes
    # that stand for the container's (pellucid's shims), but it must never present unrelated host
    # processes as the container's.
    top = dockerd.docker("top", cid, check=False, timeout=TIMEOUT)
    if top.returncode == 0:
        rows = top.stdout.splitlines()[1:]
        assert rows, top.stdout
        for row in rows:
            assert "sleep" in row or "pellucid" in row, \
                f"docker top shows a process that is not the container's:\n{top.stdout}"
    else:
        assert top.stderr.strip(), "docker top failed without saying why"

    # pause / unpause
    p = dockerd.docker("pause", cid, check=False, timeout=TIMEOUT)
    assert p.returncode == 0, docker_fail_message(dockerd, p)
    assert dockerd.docker("inspect", "-f", "{{.State.Status}}", cid).stdout.strip() == "paused"
    u = dockerd.docker("unpause", cid, check=False, timeout=TIMEOUT)
    assert u.returncode == 0, docker_fail_message(dockerd, u)
    assert dockerd.docker("inspect", "-f", "{{.State.Status}}", cid).stdout.strip() == "running"
    after = dockerd.docker("exec", cid, "echo", "alive-after-unpause", check=False, timeout=TIMEOUT)
    assert after.returncode == 0 and after.stdout == "alive-after-unpause\n", docker_fail_message(dockerd, after)

    # stop -t 2: sleep as PID 1 ignores SIGTERM, so docker kills it after 2 s.
    started = time.monotonic()
    s = dockerd.docker("stop", "-t", "2", cid, check=False, timeout=TIMEOUT)
    assert s.returncode == 0, docker_fail_message(dockerd, s)
    assert time.monotonic() - started < 120
    state = dockerd.docker("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", cid).stdout.split()
    assert state == ["exited", "137"], state
    r = dockerd.docker("rm", cid, check=False, timeout=TIMEOUT)
    assert r.returncode == 0, docker_fail_message(dockerd, r)
    assert not list(dockerd.pellucid_root.glob(f"runtime-*/moby/{cid}")), "pellucid's state outlived docker rm"


def test_docker_default_bridge_network_starts(dockerd: harness.Dockerd) -> None:
    """On Docker's default bridge (libnetwork-setkey prestart hook run on the host) a container starts."""
    out = dockerd.docker("run", "--rm", "--runtime", "pellucid", "local/busybox", "true",
                         check=False, timeout=TIMEOUT)
    assert out.returncode == 0, docker_fail_message(dockerd, out)


def test_docker_container_namespaces_share_one_vm(dockerd: harness.Dockerd) -> None:
    """--network container:a and --ipc container:a (a started with --ipc shareable): b runs in a's
    VM (same boot id) and IPC namespace; removing a leaves b running, in the VM a booted."""
    out = run_pellucid(dockerd, "-d", "--ipc", "shareable", "local/busybox", "sleep", "3600")
    assert out.returncode == 0, docker_fail_message(dockerd, out)
    a = out.stdout.strip()
    out = dockerd.docker("run", "-d", "--runtime", "pellucid", "--network", f"container:{a}", "--ipc",
                         f"container:{a}", "local/busybox", "sleep", "3600", check=False, timeout=TIMEOUT)
    assert out.returncode == 0, docker_fail_message(dockerd, out)
    b = out.stdout.strip()
    show = "cat /proc/sys/kernel/random/boot_id; readlink /proc/self/ns/ipc"
    in_a = dockerd.docker("exec", a, "sh", "-c", show, check=False, timeout=TIMEOUT)
    in_b = dockerd.docker("exec", b, "sh", "-c", show, check=False, timeout=TIMEOUT)
    assert in_a.returncode == 0 and in_b.returncode == 0, docker_fail_message(dockerd, in_b)
    assert in_a.stdout == in_b.stdout and in_a.stdout.split()[0] != host_boot_id()
    assert dockerd.docker("rm", "-f", a, check=False, timeout=TIMEOUT).returncode == 0
    again = dockerd.docker("exec", b, "cat", "/proc/sys/kernel/random/boot_id", check=False, timeout=TIMEOUT)
    assert again.returncode == 0 and again.stdout.split()[0] == in_a.stdout.split()[0], docker_fail_message(dockerd, again)
    assert dockerd.docker("rm", "-f", b, check=False, timeout=TIMEOUT).returncode == 0


def test_docker_container_pid_namespace_is_shared_in_one_vm(dockerd: harness.Dockerd) -> None:
    """--pid container:a: b runs in a's VM and PID namespace, and sees a's processes there."""
    out = run_pellucid(dockerd, "-d", "local/busybox", "sleep", "3601")
    assert out.returncode == 0, docker_fail_message(dockerd, out)
    a = out.stdout.strip()
    out = dockerd.docker("run", "-d", "--runtime", "pellucid", "--pid", f"container:{a}", "local/busybox",
                         "sleep", "3602", check=False, timeout=TIMEOUT)
    assert out.returncode == 0, docker_fail_message(dockerd, out)
    b = out.stdout.strip()
    show = "cat /proc/sys/kernel/random/boot_id; readlink /proc/self/ns/pid"
    in_a = dockerd.docker("exec", a, "sh", "-c", show, check=False, timeout=TIMEOUT)
    in_b = dockerd.docker("exec", b, "sh", "-c", show, check=False, timeout=TIMEOUT)
    assert in_a.returncode == 0 and in_b.returncode == 0, docker_fail_message(dockerd, in_b)
    assert in_a.stdout == in_b.stdout and in_a.stdout.split()[0] != host_boot_id()
    seen = dockerd.docker("exec", b, "ps", "-o", "args", check=False, timeout=TIMEOUT)
    assert "sleep 3601" in seen.stdout and "sleep 3602" in seen.stdout, docker_fail_message(dockerd, seen)
    assert dockerd.docker("rm", "-f", b, a, check=False, timeout=TIMEOUT).returncode == 0


# ---------------------------------------------------------------------------------------
# containerd (ctr)


@pytest.fixture
def containerd(tarball: Path, vms: VMWatch, host_unchanged: None,
               request: pytest.FixtureRequest) -> Iterator[harness.Containerd]:
    """A private containerd with local/busybox imported; a failed test keeps its log, pellucid's
    --root (with the VMs) and containerd's state (the bundles, with pellucid's --log)."""
    harness.need("containerd", "ctr")
    with harness.Containerd() as cd:
        assert cd.dir is not None
        keep_on_failure(request.node, *cd.logs(), Path(cd.runc_root), cd.dir / "state")
        vms.roots.append(str(cd.dir))
        cd.import_image(tarball, "docker.io/local/busybox:latest")
        yield cd
        assert_runtime_clean(vms, Path(cd.runc_root) / cd.namespace)  # runc's layout: <root>/<namespace>/<id>
    assert cd.leftovers() == []
    assert cd.proc is not None and cd.proc.poll() is not None, "containerd still running"


IMAGE = "docker.io/local/busybox:latest"


def ctr_fail_message(cd: harness.Containerd, out: subprocess.CompletedProcess[str] | harness.CommandError) -> str:
    assert cd.dir is not None
    return f"{out}\n" + evidence(Path(cd.runc_root), cd.dir / "state") + \
        f"\n--- containerd log:\n{harness.tail(cd.log_path)}"


def test_ctr_run_in_a_vm(containerd: harness.Containerd) -> None:
    """ctr run --rm --runc-binary pellucid: the echo and the guest's kernel and boot id."""
    out = containerd.run(IMAGE, "vm1", "sh", "-c", f"echo hello from ctr; {SHOW_VM}",
                         runtime_binary=PELLUCID, check=False, timeout=TIMEOUT)
    assert out.returncode == 0, ctr_fail_message(containerd, out)
    first, rest = out.stdout.split("\n", 1)
    assert first == "hello from ctr"
    assert_in_vm(rest)


def test_ctr_exit_code_propagates(containerd: harness.Containerd) -> None:
    out = containerd.run(IMAGE, "exit3", "sh", "-c", "exit 3", runtime_binary=PELLUCID, check=False,
                         timeout=TIMEOUT)
    assert out.returncode == 3, ctr_fail_message(containerd, out)


def test_ctr_detached_task_exec_kill_delete(containerd: harness.Containerd) -> None:
    """ctr run -d, ctr task exec (output checked, same VM), ctr task kill, ctr task delete."""
    cd = containerd
    assert cd.dir is not None
    cid = "detached1"
    cd.cgroups.append(f"/{cd.namespace}/{cid}")
    out = cd.ctr("run", "-d", "--runc-root", cd.runc_root, "--fifo-dir", str(cd.dir / "fifo"),
                 "--runc-binary", PELLUCID, IMAGE, cid, "sleep", "3600", check=False, timeout=TIMEOUT)
    assert out.returncode == 0, ctr_fail_message(cd, out)
    try:
        tasks = cd.ctr("task", "ls").stdout
        assert any(line.split()[:1] == [cid] and "RUNNING" in line for line in tasks.splitlines()), tasks
        ex = cd.ctr("task", "exec", "--fifo-dir", str(cd.dir / "fifo"), "--exec-id", "show1", cid,
                    "sh", "-c", SHOW_VM, check=False, timeout=TIMEOUT)
        assert ex.returncode == 0, ctr_fail_message(cd, ex)
        assert_in_vm(ex.stdout)
        ex3 = cd.ctr("task", "exec", "--fifo-dir", str(cd.dir / "fifo"), "--exec-id", "exit3", cid,
                     "sh", "-c", "exit 3", check=False, timeout=TIMEOUT)
        assert ex3.returncode == 3, ctr_fail_message(cd, ex3)

        kill = cd.ctr("task", "kill", "-s", "SIGKILL", cid, check=False, timeout=TIMEOUT)
        assert kill.returncode == 0, ctr_fail_message(cd, kill)
        status = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = [l for l in cd.ctr("task", "ls").stdout.splitlines() if l.split()[:1] == [cid]]
            status = line[0].split()[-1] if line else ""
            if status == "STOPPED":
                break
            time.sleep(0.2)
        assert status == "STOPPED", cd.ctr("task", "ls").stdout
        rm = cd.ctr("task", "delete", cid, check=False, timeout=TIMEOUT)
        assert rm.returncode == 0, ctr_fail_message(cd, rm)
        assert cid not in cd.ctr("task", "ls", "-q").stdout.split()
        # The runtime's state is gone with the task: VM, mounts, container directory.
        assert_runtime_clean(vm_watch_for(cd), Path(cd.runc_root) / cd.namespace)
    finally:
        cd.ctr("containers", "rm", cid, check=False)


def vm_watch_for(cd: harness.Containerd) -> VMWatch:
    """A watch on every QEMU under containerd's directory, whenever it started."""
    watch = VMWatch()
    watch.before = set()
    watch.roots = [str(cd.dir)]
    return watch


# ---------------------------------------------------------------------------------------
# podman


@pytest.fixture
def podman(tarball: Path, vms: VMWatch, host_unchanged: None,
           request: pytest.FixtureRequest) -> Iterator[harness.Podman]:
    """A private podman with --runtime pellucid. Podman passes no --root: pellucid keeps its
    state in /run/pellucid, where every container this test made must be gone afterwards."""
    harness.need("podman", "conmon")
    root = Path(PODMAN_ROOT)
    entries_before = _state_entries(root)
    mounts_before = set(harness.mounts_under(root)) if root.exists() else set()
    vms.roots.append(PODMAN_ROOT + "/")
    with harness.Podman(runtime=PELLUCID) as p:
        keep_on_failure(request.node, *p.logs())  # not /run/pellucid: other work keeps containers there
        p.import_image(tarball, "local/busybox")
        yield p
        p.podman("rm", "--all", "--force", "--time", "0", check=False, timeout=TIMEOUT)
        assert_runtime_clean(vms, root, entries_before=entries_before, mounts_before=mounts_before)
    assert p.leftovers() == []


def podman_fail_message(out: subprocess.CompletedProcess[str]) -> str:
    return (f"exit {out.returncode}\nstdout: {out.stdout}\nstderr: {out.stderr}" +
            evidence(*(p for p in Path(PODMAN_ROOT).glob("*") if not p.name.startswith("."))))


def test_podman_run_in_a_vm(podman: harness.Podman) -> None:
    out = podman.podman("run", "--rm", "--network", "none", "local/busybox", "sh", "-c", SHOW_VM,
                        check=False, timeout=TIMEOUT)
    assert out.returncode == 0, podman_fail_message(out)
    assert_in_vm(out.stdout)


def test_podman_exit_code_propagates(podman: harness.Podman) -> None:
    out = podman.podman("run", "--rm", "--network", "none", "local/busybox", "sh", "-c", "echo bye; exit 3",
                        check=False, timeout=TIMEOUT)
    assert out.returncode == 3, podman_fail_message(out)
    assert out.stdout == "bye\n"
