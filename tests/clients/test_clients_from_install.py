"""Clients started on the configuration `pellucid install` wrote, and the workflow users run on them.

Each client is a private one from the harness, whose own configuration file is handed to
`pellucid install CLIENT --config FILE` before the daemon (or podman) first reads it: nothing
here names the runtime on the command line, and the host's own configuration is never read.

- Docker (`install docker --default`): a plain `docker run` lands in a VM; then the options
  and commands of every day, on one dockerd for the module. What test_pellucid_clients.py
  already covers with `--runtime pellucid` is not repeated here: exit codes, `run -i`/`-t`,
  `exec -i`, `top`, `pause`/`unpause`, shared namespaces.
- podman (`install podman --default`): `run` attached, `-d` and `-it`, `exec`, `logs`, `stop`,
  `rm`, and a pod of two containers in one VM.
- containerd (`install containerd`, merged into the CRI harness's config.toml): a pod and a
  container with the `pellucid` handler, through the CRI as kubelet drives it.

Every workload shows that it ran in a VM: its kernel release and boot id are not the host's.
"""

from __future__ import annotations

import io
import json
import os
import pty
import re
import subprocess
import tarfile
import time
import tomllib
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.cri.containerd import CriContainerd
from tests.cri.images import BUSYBOX_REF, build_pause, busybox_archive, pause_archive
from tests.cri.kubelet import Kubelet
from tests.evidence import keep_on_failure

from . import harness
from .test_pellucid_clients import (PELLUCID, PODMAN_ROOT, SHOW_VM, TIMEOUT, VMWatch, _read_pty, _state_entries,
                                    assert_in_vm, assert_runtime_clean, docker_fail_message, podman_fail_message,
                                    host_boot_id)

pytestmark = pytest.mark.clients

BOOT_ID = "cat /proc/sys/kernel/random/boot_id"
# The installed handler names no Root, so the runc shim gives pellucid its default one, as on a
# user's host: <this>/<CRI namespace>.
RUNC_DEFAULT_ROOT = "/run/containerd/runc/k8s.io"
CAP_NET_RAW = 13


def install(client: str, config: Path, *flags: str) -> str:
    """`pellucid install CLIENT --config FILE FLAGS`, as a user runs it; its output."""
    return harness.run_cmd([PELLUCID, "install", client, "--config", str(config), *flags]).stdout


def in_vm_boot_id(output: str) -> str:
    """The boot id a workload printed (its last line): a VM's, not the host's."""
    boot_id = output.split()[-1]
    assert len(boot_id) == 36 and boot_id != host_boot_id(), f"not a guest's boot id: {output!r}"
    return boot_id


@pytest.fixture(scope="module")
def runtime_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """pellucid's own configuration for the module (a boot timeout generous for TCG, the test
    assets if named), in the environment the clients start with and pass to the runtime."""
    path = tmp_path_factory.mktemp("pellucid") / "pellucid.toml"
    text = "[hypervisor]\nboot_timeout = 240\n"
    assets = os.environ.get("PELLUCID_TEST_ASSETS_DIR")
    if assets:
        text += f'[assets]\ndir = "{assets}"\n'
    path.write_text(text)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PELLUCID_CONFIG", str(path))
        yield path


@pytest.fixture(scope="module")
def rootfs_tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return harness.busybox_tarball(tmp_path_factory.mktemp("image"))


# ---------------------------------------------------------------------------------------
# Docker, with pellucid the default runtime


@pytest.fixture(scope="module")
def dockerd(rootfs_tarball: Path, runtime_config: Path,
            request: pytest.FixtureRequest) -> Iterator[harness.Dockerd]:
    """One private dockerd for the module, started with the daemon.json that `pellucid install
    docker --default` made of the harness's own. After the module: no VM, state or mount of
    pellucid's left, and the harness's checks pass."""
    harness.need("dockerd", "containerd")
    watch = VMWatch()

    def install_pellucid(path: Path) -> None:
        before = json.loads(path.read_text())
        install("docker", path, "--default")
        after = json.loads(path.read_text())
        assert after == {**before, "runtimes": {"pellucid": {"path": PELLUCID}}, "default-runtime": "pellucid"}
        assert list(path.parent.glob("daemon.json.pellucid-backup-*")), "install kept no backup"

    with harness.Dockerd(bip="169.254.93.1/24", address_pool="169.254.116.0/22", edit_config=install_pellucid) as d:
        assert d.dir is not None and d.containerd is not None and d.containerd.dir is not None
        keep_on_failure(request.node, *d.logs(), d.dir / "x", d.containerd.dir / "state")
        watch.roots.append(str(d.dir))
        d.import_image(rootfs_tarball)
        yield d
        ids = d.docker("ps", "-aq", check=False).stdout.split()
        if ids:
            d.docker("rm", "-f", *ids, check=False, timeout=TIMEOUT)
        d.docker("volume", "prune", "-f", check=False)
        for root in sorted((d.dir / "x").glob("runtime-*/moby")):
            assert_runtime_clean(watch, root)
    assert d.leftovers() == []


def docker_ok(d: harness.Dockerd, *args: str, input: str | None = None) -> str:
    """A docker command that must succeed; its stdout. A failure shows pellucid's logs."""
    out = d.docker(*args, check=False, timeout=TIMEOUT, input=input)
    assert out.returncode == 0, f"docker {' '.join(args)}: " + docker_fail_message(d, out)
    return out.stdout


def state(d: harness.Dockerd, cid: str) -> str:
    return docker_ok(d, "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", cid).strip()


def logs_until(d: harness.Dockerd, cid: str, done: Callable[[str], bool], timeout: float = 60) -> str:
    """`docker logs` (stdout) once ``done`` holds for it, or what it is when ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not done(out := docker_ok(d, "logs", cid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return out


def test_plain_docker_run_lands_in_a_vm(dockerd: harness.Dockerd) -> None:
    """With pellucid the default runtime, `docker run` without --runtime boots a VM."""
    assert docker_ok(dockerd, "info", "--format", "{{.DefaultRuntime}}").strip() == "pellucid"
    out = docker_ok(dockerd, "run", "--name", "plain", "local/busybox", "sh", "-c", SHOW_VM)
    assert_in_vm(out)
    assert docker_ok(dockerd, "inspect", "-f", "{{.HostConfig.Runtime}}", "plain").strip() == "pellucid"
    docker_ok(dockerd, "rm", "plain")


def test_docker_volumes_read_only_root_and_tmpfs(dockerd: harness.Dockerd, tmp_path: Path) -> None:
    """-v host directories read-write and :ro, a named volume, --read-only and --tmpfs, seen
    from inside the VM; the named volume's data outlives the container that wrote it."""
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (rw / "from-host").write_text("host wrote this\n")
    (ro / "keep").write_text("read only\n")
    script = ("cat /rw/from-host; echo container wrote this > /rw/from-container; "
              "cat /ro/keep; touch /ro/x 2>/dev/null && echo ro-writable; "
              "echo kept > /named/data; "
              "touch /root-file 2>/dev/null && echo root-writable; "
              "echo scratch > /scratch/f && grep -q ' /scratch tmpfs ' /proc/mounts && echo scratch-is-tmpfs; "
              + BOOT_ID)
    out = docker_ok(dockerd, "run", "--rm", "-v", f"{rw}:/rw", "-v", f"{ro}:/ro:ro", "-v", "pc-named:/named",
                    "--read-only", "--tmpfs", "/scratch", "local/busybox", "sh", "-c", script)
    assert out.splitlines()[:-1] == ["host wrote this", "read only", "scratch-is-tmpfs"], out
    in_vm_boot_id(out)
    assert (rw / "from-container").read_text() == "container wrote this\n"
    assert sorted(p.name for p in ro.iterdir()) == ["keep"]
    # The named volume, in a new container (and a new VM).
    again = docker_ok(dockerd, "run", "--rm", "-v", "pc-named:/named:ro", "local/busybox", "cat", "/named/data")
    assert again == "kept\n"
    docker_ok(dockerd, "volume", "rm", "pc-named")


def test_docker_process_options(dockerd: harness.Dockerd) -> None:
    """-u, -w, -e, --hostname, --init (docker-init is PID 1) and --cap-drop, seen from inside the VM."""
    script = ("id -u; id -g; pwd; echo $GREETING; hostname; tr '\\0' ' ' < /proc/1/cmdline; echo; "
              "sed -n 's/^CapBnd:[[:space:]]*//p' /proc/self/status; " + BOOT_ID)
    out = docker_ok(dockerd, "run", "--rm", "-u", "65534:65534", "-w", "/tmp", "-e", "GREETING=hello there",
                    "--hostname", "in-a-vm", "--init", "--cap-drop", "NET_RAW", "local/busybox", "sh", "-c", script)
    in_vm_boot_id(out)
    uid, gid, cwd, greeting, hostname, init, cap_bnd = out.splitlines()[:7]
    assert (uid, gid, cwd, greeting, hostname) == ("65534", "65534", "/tmp", "hello there", "in-a-vm"), out
    assert init.startswith("/sbin/docker-init -- sh -c"), f"PID 1 is not docker-init: {init!r}"
    assert not int(cap_bnd, 16) & (1 << CAP_NET_RAW), f"NET_RAW still in the bounding set {cap_bnd}"
    assert int(cap_bnd, 16) & (1 << 0), f"CHOWN dropped too: {cap_bnd}"  # only what was asked is dropped


def test_docker_logs_cp_exec_kill_restart(dockerd: harness.Dockerd, tmp_path: Path) -> None:
    """On one detached container: logs (stdout and stderr), cp both ways, exec -t/-u/-w,
    kill -s with a signal it handles, restart (a new VM), then kill (SIGKILL, 137)."""
    server = ("echo started $(cat /proc/sys/kernel/random/boot_id); echo to-stderr >&2; "
              "trap 'echo got USR1' USR1; while :; do sleep 1 & wait $!; done")
    cid = docker_ok(dockerd, "run", "-d", "local/busybox", "sh", "-c", server).strip()
    boots = re.findall(r"started (\S+)", logs_until(dockerd, cid, lambda out: "started" in out))
    assert len(boots) == 1 and boots[0] != host_boot_id(), boots
    first_boot = boots[0]
    assert dockerd.docker("logs", cid).stderr == "to-stderr\n"

    # cp host -> container, container -> host
    (tmp_path / "in.txt").write_text("copied in\n")
    docker_ok(dockerd, "cp", str(tmp_path / "in.txt"), f"{cid}:/tmp/in.txt")
    assert docker_ok(dockerd, "exec", cid, "cat", "/tmp/in.txt") == "copied in\n"
    docker_ok(dockerd, "exec", cid, "sh", "-c", "echo made inside > /tmp/out.txt")
    docker_ok(dockerd, "cp", f"{cid}:/tmp/out.txt", str(tmp_path / "out.txt"))
    assert (tmp_path / "out.txt").read_text() == "made inside\n"

    # exec -u -w, and -t (a terminal in the guest, output with CRLF)
    assert docker_ok(dockerd, "exec", "-u", "65534", "-w", "/tmp", cid, "sh", "-c", "id -u; pwd") == "65534\n/tmp\n"
    tty = docker_ok(dockerd, "exec", "-t", cid, "sh", "-c", "tty; " + BOOT_ID)
    lines = tty.replace("\r", "").split()
    assert lines[0].startswith("/dev/pts/") and lines[1] == first_boot, tty

    # kill -s: the signal reaches the container's process, which handles it and goes on
    docker_ok(dockerd, "kill", "-s", "USR1", cid)
    assert "got USR1" in logs_until(dockerd, cid, lambda out: "got USR1" in out)
    assert state(dockerd, cid) == "running 0"

    # restart: stopped (1 s grace, then killed) and started again, in a new VM
    docker_ok(dockerd, "restart", "-t", "1", cid)
    assert state(dockerd, cid) == "running 0"
    boots = re.findall(r"started (\S+)", logs_until(dockerd, cid, lambda out: out.count("started") == 2))
    assert len(boots) == 2 and boots[1] != first_boot and boots[1] != host_boot_id(), boots

    # kill: SIGKILL, exit 137
    docker_ok(dockerd, "kill", cid)
    assert docker_ok(dockerd, "wait", cid).strip() == "137"
    assert state(dockerd, cid) == "exited 137"
    docker_ok(dockerd, "rm", cid)


def test_docker_stop_grace_period_wait_and_rm_force(dockerd: harness.Dockerd) -> None:
    """stop: a process that handles SIGTERM exits at once with its own status, and a `docker wait`
    begun before returns that status; one that ignores SIGTERM is killed when the grace period
    ends, not before. rm -f removes a running container and pellucid's state with it."""
    polite = docker_ok(dockerd, "run", "-d", "local/busybox", "sh", "-c",
                       "trap 'echo got TERM; exit 7' TERM; while :; do sleep 1 & wait $!; done").strip()
    stubborn = docker_ok(dockerd, "run", "-d", "local/busybox", "sh", "-c",
                         "trap '' TERM; while :; do sleep 1; done").strip()
    doomed = docker_ok(dockerd, "run", "-d", "local/busybox", "sleep", "3600").strip()

    waiting = subprocess.Popen([dockerd.docker_cli, "-H", dockerd.host, "wait", polite], env=dockerd.env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1)
        assert waiting.poll() is None, "docker wait returned while the container runs"
        started = time.monotonic()
        docker_ok(dockerd, "stop", "-t", "60", polite)
        assert time.monotonic() - started < 30, "a container that exits on SIGTERM waited for the grace period"
        assert waiting.communicate(timeout=60)[0].strip() == "7"
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert state(dockerd, polite) == "exited 7"
    assert "got TERM" in docker_ok(dockerd, "logs", polite)

    started = time.monotonic()
    docker_ok(dockerd, "stop", "-t", "4", stubborn)
    assert time.monotonic() - started >= 4, "killed before its grace period ended"
    assert state(dockerd, stubborn) == "exited 137"

    roots = list((dockerd.dir / "x").glob(f"runtime-*/moby/{doomed}"))
    assert roots, "no pellucid state for the running container"
    docker_ok(dockerd, "rm", "-f", doomed)
    assert doomed not in docker_ok(dockerd, "ps", "-aq", "--no-trunc").split()
    assert not any(r.exists() for r in roots), "pellucid's state outlived docker rm -f"
    docker_ok(dockerd, "rm", polite, stubborn)


# ---------------------------------------------------------------------------------------
# podman, with pellucid the default runtime


@pytest.fixture(scope="module")
def pause_layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A layer holding only a static /pause: the pod's infra image (Debian's podman has no
    catatonit to build its own)."""
    work = tmp_path_factory.mktemp("pause")
    binary = build_pause(work / "pause").read_bytes()
    layer = work / "pause-layer.tar"
    with tarfile.open(layer, "w") as tar:
        info = tarfile.TarInfo("pause")
        info.size, info.mode = len(binary), 0o755
        tar.addfile(info, io.BytesIO(binary))
    return layer


@pytest.fixture(scope="module")
def podman(rootfs_tarball: Path, pause_layer: Path, runtime_config: Path,
           request: pytest.FixtureRequest) -> Iterator[harness.Podman]:
    """A private podman given no --runtime, on the containers.conf that `pellucid install podman
    --default` made of the harness's own. podman passes no --root: pellucid keeps its state in
    /run/pellucid, where nothing of this module's may be left."""
    harness.need("podman", "conmon")
    watch = VMWatch()
    watch.roots.append(PODMAN_ROOT + "/")
    root = Path(PODMAN_ROOT)
    entries_before = _state_entries(root)
    mounts_before = set(harness.mounts_under(root)) if root.exists() else set()

    def install_pellucid(path: Path) -> None:
        install("podman", path, "--default")
        engine = tomllib.loads(path.read_text())["engine"]
        assert engine["runtime"] == "pellucid" and engine["runtimes"]["pellucid"] == [PELLUCID], engine
        assert engine["cgroup_manager"] == "cgroupfs", "install lost the harness's settings"

    with harness.Podman(runtime=None, subnet="169.254.89.0/24", edit_config=install_pellucid) as p:
        keep_on_failure(request.node, *p.logs())
        p.import_image(rootfs_tarball, "local/busybox")
        p.podman("import", "--change", 'CMD ["/pause"]', str(pause_layer), "local/pause")
        yield p
        p.podman("pod", "rm", "--all", "--force", "--time", "0", check=False, timeout=TIMEOUT)
        p.podman("rm", "--all", "--force", "--time", "0", check=False, timeout=TIMEOUT)
        assert_runtime_clean(watch, root, entries_before=entries_before, mounts_before=mounts_before)
    assert p.leftovers() == []


def podman_ok(p: harness.Podman, *args: str) -> str:
    out = p.podman(*args, check=False, timeout=TIMEOUT)
    assert out.returncode == 0, f"podman {' '.join(args)}: " + podman_fail_message(out)
    return out.stdout


def test_plain_podman_run_attached_and_detached(podman: harness.Podman) -> None:
    """podman run without --runtime, attached and -d; exec, logs, stop and rm on the detached one."""
    assert_in_vm(podman_ok(podman, "run", "--rm", "local/busybox", "sh", "-c", SHOW_VM))

    cid = podman_ok(podman, "run", "-d", "local/busybox", "sh", "-c",
                    "echo up; trap 'echo stopping; exit 0' TERM; while :; do sleep 1 & wait $!; done").strip()
    assert podman_ok(podman, "inspect", "-f", "{{.OCIRuntime}}", cid).strip() == "pellucid"
    in_vm_boot_id(podman_ok(podman, "exec", cid, "cat", "/proc/sys/kernel/random/boot_id"))
    podman_ok(podman, "stop", "-t", "30", cid)
    assert podman_ok(podman, "logs", cid) == "up\nstopping\n"
    assert podman_ok(podman, "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", cid).strip() == "exited 0"
    podman_ok(podman, "rm", cid)
    assert cid not in podman_ok(podman, "ps", "-aq", "--no-trunc").split()


def test_plain_podman_run_interactive_tty(podman: harness.Podman) -> None:
    """podman run -it on a terminal: the container has a tty, reads what is typed, and its exit
    status is podman's."""
    master, slave = pty.openpty()
    argv = podman.argv("run", "--rm", "-it", "local/busybox", "sh", "-c", "tty; read line; echo got:$line; exit 6")
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=podman.env(), start_new_session=True)
    os.close(slave)
    try:
        seen = b""
        deadline = time.monotonic() + TIMEOUT
        while b"/dev/pts/" not in seen and time.monotonic() < deadline and proc.poll() is None:
            seen += _read_pty(master, proc, 1)
        os.write(master, b"typed\n")
        seen += _read_pty(master, proc, 60)
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    text = seen.decode(errors="replace").replace("\r", "")
    assert code == 6, f"podman run -it exited {code}: {text!r}"
    assert "/dev/pts/" in text and "got:typed" in text, text


def test_podman_pod_of_two_containers_is_one_vm(podman: harness.Podman) -> None:
    """podman pod create, two containers in it: one VM (the same guest boot id), not the host's."""
    podman_ok(podman, "pod", "create", "--name", "pc-pod", "--infra-image", "local/pause")
    first = podman_ok(podman, "run", "-d", "--pod", "pc-pod", "local/busybox", "sleep", "3600").strip()
    second = podman_ok(podman, "run", "-d", "--pod", "pc-pod", "local/busybox", "sleep", "3601").strip()
    boot_ids = {in_vm_boot_id(podman_ok(podman, "exec", cid, "cat", "/proc/sys/kernel/random/boot_id"))
                for cid in (first, second)}
    assert len(boot_ids) == 1, f"the pod's containers run in different VMs: {boot_ids}"
    podman_ok(podman, "pod", "rm", "--force", "--time", "0", "pc-pod")
    assert podman_ok(podman, "ps", "-aq").split() == []


# ---------------------------------------------------------------------------------------
# containerd's CRI, with the handler `pellucid install containerd` added


@pytest.fixture(scope="module")
def cri_containerd(tmp_path_factory: pytest.TempPathFactory, runtime_config: Path,
                   request: pytest.FixtureRequest) -> Iterator[CriContainerd]:
    """The CRI tests' private containerd with only its runc handler, to whose config.toml
    `pellucid install containerd` adds the `pellucid` handler before containerd starts."""
    harness.need("containerd", "ctr")
    work = tmp_path_factory.mktemp("cri")
    runc_default = Path(RUNC_DEFAULT_ROOT)

    def install_pellucid(path: Path) -> None:
        printed = install("containerd", path)
        cri = tomllib.loads(path.read_text())["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]
        assert cri["runtimes"]["pellucid"] == {"runtime_type": "io.containerd.runc.v2",
                                               "options": {"BinaryName": PELLUCID}}
        assert "runc" in cri["runtimes"] and cri["default_runtime_name"] == "runc", "install lost the harness's"
        assert "kind: RuntimeClass" in printed and "handler: pellucid" in printed, printed

    # PELLUCID_CONFIG (runtime_config) is in the environment containerd passes to its shims.
    with CriContainerd(network="169.254.208.0/22", request_timeout=300, edit_config=install_pellucid) as cd:
        keep_on_failure(request.node, *cd.logs(), runc_default)
        for archive in (pause_archive(work), busybox_archive(work)):
            cd.import_image(archive)
        yield cd
    assert cd.leftovers() == []


def test_cri_pod_with_installed_handler_runs_in_a_vm(cri_containerd: CriContainerd) -> None:
    """RunPodSandbox with the `pellucid` handler and a container in it: the container's kernel
    and boot id are a VM's; after the pod's removal nothing of it is left."""
    assert cri_containerd.cri is not None
    kubelet = Kubelet(cri_containerd.cri, cri_containerd.kubelet_root, cri_containerd.cgroup_root, BUSYBOX_REF)
    try:
        with kubelet.pod("installed", "pellucid") as pod:
            assert pod.status().runtime_handler == "pellucid"
            container = pod.run_container("show", ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"])
            assert_in_vm(pod.check_output(container, "sh", "-c", SHOW_VM))
            pod_id, cgroup_parent, ids = pod.id, pod.cgroup_parent, [container.id]
    finally:
        kubelet.remove_all()
    assert cri_containerd.cri.list_pod_sandbox() == []
    assert cri_containerd.pod_leftovers(pod_id, cgroup_parent, ids) == []
    runc_default = Path(RUNC_DEFAULT_ROOT)
    assert not any(runc_default.glob(f"{pod_id}*")) and not any(runc_default.glob(f"{ids[0]}*"))
