"""The client harness, proven with runc: each real client runs a busybox container and leaves nothing behind.

runc is registered through a logging wrapper, so each scenario also proves that the client
really called the runtime binary the harness was given (as it will call pellucid later).
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from . import harness

pytestmark = pytest.mark.clients


@pytest.fixture(scope="module")
def tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return harness.busybox_tarball(tmp_path_factory.mktemp("image"))


@pytest.fixture
def wrapper(tmp_path: Path) -> tuple[Path, Path]:
    """A runc wrapper that logs every call: (its path, its log)."""
    log = tmp_path / "runtime-calls.log"
    return harness.logging_runtime(tmp_path / "logging-runc", log), log


@pytest.fixture
def host_unchanged():
    """Fail if a scenario leaves a network link, a veth, or a harness mount behind."""
    links_before = set(os.listdir("/sys/class/net"))
    veths_before = harness.veths()
    yield
    assert set(os.listdir("/sys/class/net")) == links_before
    assert harness.veths() == veths_before
    assert [m for m in harness.mounts_under("/tmp") if m.startswith(("/tmp/pcc-", "/tmp/pcd-", "/tmp/pcp-"))] == []


def _calls(log: Path) -> list[str]:
    """The runtime verbs the client called, in order (first word after the global flags)."""
    verbs = []
    for line in log.read_text().splitlines():
        words = line.split()
        while words and words[0].startswith("--") and words[0] != "--version":
            words = words[2:] if words[0] in ("--root", "--log", "--log-format") else words[1:]
        verbs.append(words[0] if words else "")
    return verbs


def _assert_gone(service: harness.PrivateService, *procs) -> None:
    for proc in procs:
        assert proc is not None and proc.poll() is not None, "daemon still running"
    assert service.leftovers() == []


def test_busybox_rootfs_layout(tmp_path: Path) -> None:
    """The rootfs has busybox, its applet links, users, and the usual mount points."""
    root = harness.busybox_rootfs(tmp_path / "rootfs")
    assert os.readlink(root / "bin/sh") == "/bin/busybox"
    assert os.readlink(root / "usr/sbin/httpd") == "/bin/busybox"
    assert (root / "etc/passwd").read_text().splitlines()[0] == "root:x:0:0:root:/root:/bin/sh"
    assert "nobody:x:65534:" in (root / "etc/group").read_text()
    assert (root / "tmp").stat().st_mode & 0o7777 == 0o1777
    for d in ("proc", "sys", "dev", "etc", "root", "run"):
        assert (root / d).is_dir()


def test_docker_run_echo(tarball: Path, wrapper: tuple[Path, Path], host_unchanged: None) -> None:
    """docker run --rm with the registered runtime prints exactly what the container echoes."""
    harness.need("dockerd", "containerd")
    runtime, log = wrapper
    with harness.Dockerd(runtimes={"logrunc": str(runtime)}) as dockerd:
        dockerd.import_image(tarball, "local/busybox")
        out = dockerd.docker("run", "--rm", "--runtime", "logrunc", "local/busybox", "echo", "hello from docker")
        assert out.stdout == "hello from docker\n"
        assert dockerd.storage_driver == "overlay2"
        # What a failed client test keeps (tests/evidence.py): both daemons' logs, written.
        assert [p.name for p in dockerd.logs() if p.stat().st_size] == ["dockerd.log", "containerd.log"]
    # The runtime really was the wrapper, and the teardown left nothing.
    assert ["create", "start", "delete"] == [v for v in _calls(log) if v in ("create", "start", "delete")][:3]
    _assert_gone(dockerd, dockerd.proc, dockerd.containerd.proc)


def test_docker_published_port(tarball: Path, wrapper: tuple[Path, Path], host_unchanged: None) -> None:
    """A detached busybox httpd published on 127.0.0.1:PORT answers through docker-proxy."""
    harness.need("dockerd", "containerd")
    runtime, log = wrapper
    port = harness.free_port()
    with harness.Dockerd(runtimes={"logrunc": str(runtime)}, default_runtime="logrunc") as dockerd:
        dockerd.import_image(tarball)
        # The container serves a page of its own making from /www.
        script = "mkdir -p /www && echo served-by-busybox > /www/index.html && exec httpd -f -p 80 -h /www"
        cid = dockerd.docker("run", "-d", "-p", f"127.0.0.1:{port}:80", "local/busybox",
                             "sh", "-c", script).stdout.strip()
        ip = dockerd.docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}", cid).stdout.strip()
        assert ip.startswith("169.254.77.")
        body, last_error = None, None
        for _ in range(50):  # only ever 127.0.0.1
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=2) as resp:
                    body = resp.read().decode()
                break
            except (urllib.error.URLError, ConnectionError, OSError) as exc:
                last_error = exc
                time.sleep(0.2)
        assert body == "served-by-busybox\n", last_error
    assert "kill" in _calls(log)
    _assert_gone(dockerd, dockerd.proc, dockerd.containerd.proc)


def test_dockerd_cleans_up_after_a_failing_test(tarball: Path, host_unchanged: None) -> None:
    """An exception inside the block still removes the container, the daemons, mounts and bridge."""
    harness.need("dockerd", "containerd")
    with pytest.raises(RuntimeError, match="test failed"):
        with harness.Dockerd() as dockerd:
            dockerd.import_image(tarball)
            dockerd.docker("run", "-d", "local/busybox", "sleep", "600")
            raise RuntimeError("test failed")
    _assert_gone(dockerd, dockerd.proc, dockerd.containerd.proc)


def test_ctr_run_echo(tarball: Path, wrapper: tuple[Path, Path], host_unchanged: None) -> None:
    """ctr run --rm --runc-binary WRAPPER prints the echo; the CRI plugin loaded with our config."""
    harness.need("containerd", "ctr")
    runtime, log = wrapper
    with harness.Containerd(runtimes={"logrunc": str(runtime)}) as containerd:
        plugins = containerd.ctr("plugins", "ls", ns=None).stdout
        assert any(line.split()[:2] == ["io.containerd.grpc.v1", "cri"] and line.split()[-1] == "ok"
                   for line in plugins.splitlines()), plugins
        ref = containerd.import_image(tarball, "docker.io/local/busybox:latest")
        out = containerd.run(ref, "echo1", "echo", "hello from ctr", runtime_binary=str(runtime))
        assert out.stdout == "hello from ctr\n"
        assert [p.name for p in containerd.logs() if p.stat().st_size] == ["containerd.log"]
    assert _calls(log)[:2] == ["create", "start"]
    assert f"--root {containerd.runc_root}" in log.read_text()
    _assert_gone(containerd, containerd.proc)


def test_podman_run_echo(tarball: Path, wrapper: tuple[Path, Path], host_unchanged: None) -> None:
    """podman run --rm with --runtime WRAPPER prints the echo, with the lowered ulimits."""
    harness.need("podman", "conmon")
    runtime, log = wrapper
    with harness.Podman(runtime=str(runtime)) as podman:
        podman.import_image(tarball, "local/busybox")
        out = podman.podman("run", "--rm", "local/busybox", "sh", "-c", "echo hello from podman; ulimit -n")
        assert out.stdout == "hello from podman\n20000\n"
        assert [p.name for p in podman.logs() if p.stat().st_size] == ["events.log"]
    assert _calls(log)[:3] == ["--version", "create", "start"]
    _assert_gone(podman)
