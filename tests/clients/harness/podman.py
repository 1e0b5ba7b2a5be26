"""A private podman with conmon (no daemon): its own storage, config and CNI network."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable, Sequence

from .binaries import CNI_BIN_DIR, DEFAULT_PATH, RUNC
from .commands import HarnessError, run_cmd
from .network import create_bridge
from .service import PrivateService, toml_str


class Podman(PrivateService):
    """Podman 4.3 with conmon on private storage, config and CNI network (no daemon).

        with Podman(runtime="/usr/local/bin/pellucid") as p:
            p.import_image(busybox_tarball(tmp))
            p.podman("run", "--rm", "local/busybox", "echo", "hi")

    containers.conf sets `default_ulimits` low enough for a root without
    CAP_SYS_RESOURCE; its default network "podman" is a bridge of ours on 169.254.88.0/24.
    `runtime=None` passes no `--runtime`: containers.conf's `[engine] runtime` decides.
    `edit_config`, if given, is called with the path of the containers.conf just written,
    before podman first reads it.
    """

    prefix = "pcp-"
    host_paths = ("/var/lib/containers/cache/blob-info-cache-v1.boltdb", "/var/lib/containers/cache",
                  "/var/lib/containers", "/var/lib/cni/results", "/var/lib/cni", "/run/netns")

    def __init__(self, runtime: str | None = RUNC, *, subnet: str = "169.254.88.0/24",
                 ulimits: Sequence[str] = ("nofile=20000:20000", "nproc=32768:32768"),
                 binary: str = "podman", edit_config: Callable[[Path], None] | None = None) -> None:
        super().__init__()
        self.edit_config = edit_config
        self.runtime = runtime
        self.subnet = subnet
        self.cgroup_parents = ("/libpod_parent/conmon", "/libpod_parent")
        self.ulimits = list(ulimits)
        self.binary = binary
        self.bridge = ""

    def containers_conf(self) -> str:
        assert self.dir is not None
        d = self.dir
        return "\n".join([
            "[containers]",
            f"default_ulimits = {json.dumps(self.ulimits)}",
            "[engine]",
            'cgroup_manager = "cgroupfs"',
            'events_logger = "file"',
            f"events_logfile_path = {toml_str(str(d / 'events.log'))}",
            f"tmp_dir = {toml_str(str(d / 'tmp'))}",
            f"volume_path = {toml_str(str(d / 'volumes'))}",
            f"static_dir = {toml_str(str(d / 'root/libpod'))}",
            "[network]",
            'network_backend = "cni"',
            f"network_config_dir = {toml_str(str(d / 'net'))}",
            f"cni_plugin_dirs = [{toml_str(CNI_BIN_DIR)}]",
            'default_network = "podman"',
            f"default_subnet = {toml_str(self.subnet)}",
        ]) + "\n"

    def storage_conf(self) -> str:
        assert self.dir is not None
        return "\n".join(["[storage]", 'driver = "overlay"',
                          f"graphroot = {toml_str(str(self.dir / 'root'))}",
                          f"runroot = {toml_str(str(self.dir / 'run'))}"]) + "\n"

    def cni_conflist(self) -> dict[str, Any]:
        assert self.dir is not None
        return {"cniVersion": "0.4.0", "name": "podman", "plugins": [
            {"type": "bridge", "bridge": self.bridge, "isGateway": False, "ipMasq": False,
             "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": str(self.dir / "cni-ipam"),
                      "ranges": [[{"subnet": self.subnet}]]}}]}

    def start(self) -> None:
        """Write containers.conf, storage.conf, registries.conf and the CNI network; make the bridge."""
        if not shutil.which(self.binary):
            raise HarnessError(f"{self.binary} not found (apt-get install podman)")
        d = self._make_dir()
        for sub in ("root", "run", "tmp", "volumes", "net", "cni-ipam"):
            (d / sub).mkdir()
        self.bridge = self._new_bridge_name("p")
        self.bridges.append(self.bridge)
        # The host gets the first address so that it can reach containers on the bridge
        # without IP forwarding; CNI's bridge plugin then runs with isGateway false.
        net, bits = self.subnet.split("/")
        create_bridge(self.bridge, f"{net.rsplit('.', 1)[0]}.1/{bits}")
        (d / "net/podman.conflist").write_text(json.dumps(self.cni_conflist(), indent=1))
        (d / "containers.conf").write_text(self.containers_conf())
        if self.edit_config is not None:
            self.edit_config(d / "containers.conf")
        (d / "storage.conf").write_text(self.storage_conf())
        (d / "registries.conf").write_text("unqualified-search-registries = []\nshort-name-mode = \"permissive\"\n")
        self.podman("info", timeout=60)

    def stop(self) -> None:
        """Remove every container, then clean the host."""
        try:
            if self.dir is not None and (self.dir / "containers.conf").exists():
                with contextlib.suppress(HarnessError):
                    self.podman("rm", "--all", "--force", "--time", "0", check=False, timeout=120)
                    self.podman("pod", "rm", "--all", "--force", check=False, timeout=60)
        finally:
            self._final_cleanup()

    def logs(self) -> list[Path]:
        """Podman has no daemon: its events log is what it wrote."""
        assert self.dir is not None
        return [self.dir / "events.log"]

    def env(self) -> dict[str, str]:
        assert self.dir is not None
        return {**os.environ,
                "CONTAINERS_CONF": str(self.dir / "containers.conf"),
                "CONTAINERS_STORAGE_CONF": str(self.dir / "storage.conf"),
                "CONTAINERS_REGISTRIES_CONF": str(self.dir / "registries.conf"),
                "PATH": os.environ.get("PATH", "") + ":" + DEFAULT_PATH}

    def argv(self, *args: str) -> list[str]:
        """`podman --root --runroot [--runtime] --cgroup-manager=cgroupfs --events-backend=file ARGS`
        (for a test that runs it itself, on a terminal say, with `env()`)."""
        assert self.dir is not None
        return [self.binary, "--root", str(self.dir / "root"), "--runroot", str(self.dir / "run"),
                *(["--runtime", self.runtime] if self.runtime is not None else []),
                "--cgroup-manager=cgroupfs", "--events-backend=file", "--tmpdir", str(self.dir / "tmp"), *args]

    def podman(self, *args: str, check: bool = True, timeout: float = 120,
               input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run `argv(ARGS)`."""
        return run_cmd(self.argv(*args), check=check, timeout=timeout, env=self.env(), input=input)

    def import_image(self, tarball: Path, name: str = "local/busybox") -> str:
        """`podman import` a rootfs tarball as `name` (CMD /bin/sh); return the image id."""
        return self.podman("import", "--change", 'CMD ["/bin/sh"]', str(tarball), name).stdout.strip().splitlines()[-1]
