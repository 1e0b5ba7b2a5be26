"""A private dockerd 20.10 with its own containerd, driven with the docker CLI."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .binaries import DEFAULT_PATH, DOCKER_CLI
from .commands import HarnessError, run_cmd, wait_for
from .containerd import Containerd
from .mounts import unmount_all_under
from .network import create_bridge
from .processes import descendants, kill_pids, stop_process
from .service import PrivateService


class Dockerd(PrivateService):
    """A private dockerd 20.10 on its own socket, data-root, exec-root, bridge and containerd.

        with Dockerd(runtimes={"pellucid": "/usr/local/bin/pellucid"}, default_runtime="pellucid") as d:
            d.import_image(busybox_tarball(tmp))
            d.docker("run", "--rm", "local/busybox", "echo", "hi")

    `edit_config`, if given, is called with the path of the daemon.json just written, before
    dockerd starts with it (how a test has `pellucid install docker` edit the daemon's file).

    Its default bridge is one it creates (`bridge` in daemon.json; dockerd refuses `bip`
    with `bridge`) holding `bip` (169.254.77.1/24); user networks come from
    169.254.100.0/22. iptables, ip-masq and ip-forward are off, so the host firewall and
    sysctls are untouched; `-p 127.0.0.1:PORT:N` works through docker-proxy.
    """

    prefix = "pcd-"
    host_paths = ("/etc/docker/key.json", "/etc/docker", "/run/docker/plugins", "/run/docker")

    def __init__(self, runtimes: Mapping[str, str] | None = None, default_runtime: str | None = None, *,
                 bip: str = "169.254.77.1/24", address_pool: str = "169.254.100.0/22",
                 storage_driver: str = "overlay2", extra_config: Mapping[str, Any] | None = None,
                 dockerd: str = "dockerd", docker_cli: str = DOCKER_CLI, start_timeout: float = 60,
                 edit_config: Callable[[Path], None] | None = None) -> None:
        super().__init__()
        self.edit_config = edit_config
        self.runtimes = dict(runtimes or {})
        self.default_runtime = default_runtime
        self.bip = bip
        self.address_pool = address_pool
        self.storage_driver = storage_driver
        self.extra_config = dict(extra_config or {})
        self.dockerd_binary = dockerd
        self.docker_cli = docker_cli
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.containerd: Containerd | None = None
        self.bridge = ""
        self.cgroup_parent = ""

    @property
    def socket(self) -> str:
        assert self.dir is not None
        return str(self.dir / "docker.sock")

    @property
    def host(self) -> str:
        return "unix://" + self.socket

    @property
    def log_path(self) -> Path:
        assert self.dir is not None
        return self.dir / "dockerd.log"

    def daemon_json(self) -> dict[str, Any]:
        """The generated daemon.json."""
        config: dict[str, Any] = {
            "bridge": self.bridge,
            "default-address-pools": [{"base": self.address_pool, "size": 26}],
            "iptables": False, "ip6tables": False, "ip-masq": False, "ip-forward": False,
            "userland-proxy": True,
            "storage-driver": self.storage_driver,
            "cgroup-parent": self.cgroup_parent,
            "exec-opts": ["native.cgroupdriver=cgroupfs"],
            "live-restore": False,
            "features": {"buildkit": False},
            "log-driver": "json-file",
            "debug": True,
            "runtimes": {name: {"path": path} for name, path in self.runtimes.items()},
        }
        if self.default_runtime:
            config["default-runtime"] = self.default_runtime
        config.update(self.extra_config)
        return config

    def start(self) -> None:
        """Create the bridge, start a private containerd, then dockerd; wait for /_ping."""
        if not shutil.which(self.dockerd_binary):
            raise HarnessError(f"{self.dockerd_binary} not found (apt-get install docker.io)")
        d = self._make_dir()
        self.bridge = self._new_bridge_name("d")
        self.bridges.append(self.bridge)
        create_bridge(self.bridge, self.bip)
        self.cgroup_parent = "/" + d.name
        self.cgroups.append(self.cgroup_parent)
        # Our own containerd: dockerd 20.10 would otherwise attach to a system containerd
        # whose socket exists at /run/containerd/containerd.sock.
        self.containerd = Containerd(cri=False, namespace="moby")
        self.containerd.__enter__()
        try:
            self._start_dockerd()
        except HarnessError as exc:
            if self.storage_driver != "overlay2" or not self._graphdriver_failed():
                raise
            reason = str(exc).strip().splitlines()[-1]
            warnings.warn(f"dockerd: storage driver overlay2 failed ({reason}); falling back to vfs")
            self._stop_dockerd()
            unmount_all_under(d / "data")
            shutil.rmtree(d / "data", ignore_errors=True)
            self.storage_driver = "vfs"
            self._start_dockerd()

    def _graphdriver_failed(self) -> bool:
        """Did dockerd's log say that the storage driver could not be set up?"""
        with contextlib.suppress(OSError):
            for line in self.log_path.read_text(errors="replace").splitlines():
                if ("graphdriver" in line or "overlay" in line) and \
                        ("level=error" in line or "level=fatal" in line or "failed to start" in line):
                    return True
        return False

    def _start_dockerd(self) -> None:
        assert self.dir is not None and self.containerd is not None
        d = self.dir
        (d / "data").mkdir(exist_ok=True)
        (d / "x").mkdir(exist_ok=True)
        (d / "cli").mkdir(exist_ok=True)
        (d / "daemon.json").write_text(json.dumps(self.daemon_json(), indent=1))
        if self.edit_config is not None:
            self.edit_config(d / "daemon.json")
        argv = [self.dockerd_binary,
                "--config-file", str(d / "daemon.json"),
                "--data-root", str(d / "data"),
                "--exec-root", str(d / "x"),
                "--pidfile", str(d / "dockerd.pid"),
                "-H", self.host,
                "--containerd", self.containerd.address,
                "--containerd-namespace", "moby",
                "--containerd-plugins-namespace", "plugins.moby"]
        env = {**os.environ, "PATH": os.environ.get("PATH", "") + ":" + DEFAULT_PATH}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env=env, start_new_session=True)
        wait_for(self._ping, self.start_timeout, "dockerd", self.proc, self.log_path)

    def _ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(self.socket)
                s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                return s.recv(4096).split(b"\r\n\r\n", 1)[-1].startswith(b"OK")
        except OSError:
            return False

    def _stop_dockerd(self) -> None:
        if self.proc is None:
            return
        children = descendants(self.proc.pid)  # docker-proxy etc. outlive a SIGKILLed dockerd
        stop_process(self.proc)
        kill_pids(children, grace=2.0)

    def stop(self) -> None:
        """Remove all containers, stop dockerd and its containerd, clean the host."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                ids = self.docker("ps", "-aq", check=False, timeout=30).stdout.split()
                if ids:
                    self.docker("rm", "-f", *ids, check=False, timeout=120)
            self._stop_dockerd()
        except HarnessError:
            self._stop_dockerd()
        finally:
            try:
                if self.containerd is not None:
                    self.containerd.stop()
            finally:
                self._final_cleanup()

    def logs(self) -> list[Path]:
        return [self.log_path, *(self.containerd.logs() if self.containerd is not None else [])]

    def leftovers(self) -> list[str]:
        out = super().leftovers()
        if self.containerd is not None:
            out += self.containerd.leftovers()
        return out

    def env(self) -> dict[str, str]:
        """Environment for the docker CLI: our host, a private config dir, no inherited context."""
        assert self.dir is not None
        env = {k: v for k, v in os.environ.items()
               if k not in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH")}
        env["DOCKER_CONFIG"] = str(self.dir / "cli")
        return env

    def docker(self, *args: str, check: bool = True, timeout: float = 120,
               input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run `docker -H unix://<ours> ARGS`."""
        return run_cmd([self.docker_cli, "-H", self.host, *args], check=check, timeout=timeout,
                       env=self.env(), input=input)

    def import_image(self, tarball: Path, name: str = "local/busybox", cmd: Sequence[str] = ("/bin/sh",)) -> str:
        """`docker import` a rootfs tarball as `name` with CMD `cmd`; return the image id."""
        change = f"CMD {json.dumps(list(cmd))}"
        return self.docker("import", "--change", change, str(tarball), name).stdout.strip()
