"""A private containerd, driven with ctr; dockerd runs on one of its own too."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from .binaries import CNI_BIN_DIR, DEFAULT_PATH, RUNC
from .commands import HarnessError, run_cmd, wait_for
from .images import oci_archive
from .processes import stop_process
from .service import PrivateService, toml_str


class Containerd(PrivateService):
    """A private containerd (own root, state, sockets, CNI config) for `ctr` and for dockerd.

        with Containerd(runtimes={"pellucid": "/usr/local/bin/pellucid"}) as cd:
            cd.import_image(busybox_tarball(tmp), "docker.io/local/busybox:latest")
            cd.run("docker.io/local/busybox:latest", "c1", "echo", "hi", runtime_binary=path)

    `runtimes` become CRI runtime handlers (io.containerd.runc.v2 with BinaryName).
    The CRI plugin is enabled with `restrict_oom_score_adj = true` (root lacks
    CAP_SYS_RESOURCE here); its CNI network is a bridge of its own on 169.254.200.0/24.
    """

    prefix = "pcc-"
    host_paths = ("/run/containerd/s", "/run/containerd/fifo", "/run/containerd")

    def __init__(self, runtimes: Mapping[str, str] | None = None, *, cri: bool = True,
                 namespace: str = "default", cni_subnet: str = "169.254.200.0/24",
                 binary: str = "containerd", ctr_binary: str = "ctr", start_timeout: float = 60) -> None:
        super().__init__()
        self.runtimes = dict(runtimes or {})
        self.cri = cri
        self.namespace = namespace
        self.cni_subnet = cni_subnet
        self.binary = binary
        self.ctr_binary = ctr_binary
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.cni_bridge = ""
        self.cgroup_parents = (f"/{namespace}",)  # ctr puts containers in /<namespace>/<id>

    # paths
    @property
    def address(self) -> str:
        assert self.dir is not None
        return str(self.dir / "c.sock")

    @property
    def log_path(self) -> Path:
        assert self.dir is not None
        return self.dir / "containerd.log"

    def logs(self) -> list[Path]:
        return [self.log_path]

    @property
    def runc_root(self) -> str:
        """The runtime's --root for containers run through us (not /run/containerd/runc)."""
        assert self.dir is not None
        return str(self.dir / "runc")

    def config_toml(self) -> str:
        """The generated config.toml (version 2)."""
        assert self.dir is not None
        d = self.dir
        lines = [
            "version = 2",
            f"root = {toml_str(str(d / 'root'))}",
            f"state = {toml_str(str(d / 'state'))}",
            "disabled_plugins = []" if self.cri else 'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
            "[grpc]", f"  address = {toml_str(self.address)}",
            "[ttrpc]", f"  address = {toml_str(self.address + '.ttrpc')}",
            "[debug]", '  address = ""', '  level = "info"',
            "[metrics]", '  address = ""',
            '[plugins."io.containerd.internal.v1.opt"]', f"  path = {toml_str(str(d / 'opt'))}",
        ]
        if self.cri:
            cri = 'plugins."io.containerd.grpc.v1.cri"'
            lines += [
                f"[{cri}]",
                "  restrict_oom_score_adj = true",
                '  stream_server_address = "127.0.0.1"',
                '  stream_server_port = "0"',
                "  netns_mounts_under_state_dir = true",
                f"[{cri}.containerd]",
                '  default_runtime_name = "runc"',
            ]
            for name, path in {"runc": RUNC, **self.runtimes}.items():
                lines += [f"[{cri}.containerd.runtimes.{toml_str(name)}]",
                          '  runtime_type = "io.containerd.runc.v2"',
                          f"[{cri}.containerd.runtimes.{toml_str(name)}.options]",
                          f"  BinaryName = {toml_str(path)}",
                          f"  Root = {toml_str(self.runc_root)}"]
            lines += [f"[{cri}.cni]",
                      f"  bin_dir = {toml_str(CNI_BIN_DIR)}",
                      f"  conf_dir = {toml_str(str(d / 'cni'))}",
                      "  max_conf_num = 1"]
        return "\n".join(lines) + "\n"

    def cni_conflist(self) -> dict[str, Any]:
        """The CRI plugin's CNI network: a bridge of our own, host-local IPAM in our dir, no NAT."""
        assert self.dir is not None
        return {"cniVersion": "0.4.0", "name": "pellucid-test", "plugins": [
            {"type": "bridge", "bridge": self.cni_bridge, "isGateway": False, "ipMasq": False,
             "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": str(self.dir / "cni-ipam"),
                      "ranges": [[{"subnet": self.cni_subnet}]]}},
            {"type": "loopback"}]}

    # lifecycle
    def start(self) -> None:
        """Write the config and start containerd; return when `ctr version` answers."""
        if not shutil.which(self.binary):
            raise HarnessError(f"{self.binary} not found (apt-get install containerd)")
        d = self._make_dir()
        for sub in ("root", "state", "opt", "cni", "cni-ipam", "fifo"):
            (d / sub).mkdir()
        if self.cri:
            if not os.path.isdir(CNI_BIN_DIR):
                raise HarnessError(f"{CNI_BIN_DIR} missing (apt-get install containernetworking-plugins)")
            self.cni_bridge = self._new_bridge_name("c")
            self.bridges.append(self.cni_bridge)
            (d / "cni/10-pellucid-test.conflist").write_text(json.dumps(self.cni_conflist(), indent=1))
        (d / "config.toml").write_text(self.config_toml())
        env = {**os.environ, "PATH": os.environ.get("PATH", "") + ":" + DEFAULT_PATH}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([self.binary, "--config", str(d / "config.toml")],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env=env, start_new_session=True)
        wait_for(lambda: os.path.exists(self.address) and
                  self.ctr("version", check=False, timeout=10).returncode == 0,
                  self.start_timeout, "containerd", self.proc, self.log_path)

    def stop(self) -> None:
        """Remove all tasks and containers, stop containerd and its shims, clean the host."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                with contextlib.suppress(HarnessError):
                    self._remove_everything()
            stop_process(self.proc)
        finally:
            self._final_cleanup()

    def _remove_everything(self) -> None:
        namespaces = self.ctr("namespaces", "ls", "-q", check=False, timeout=20).stdout.split()
        for ns in namespaces:
            ids = self.ctr("-n", ns, "containers", "ls", "-q", check=False, timeout=20, ns=None).stdout.split()
            for cid in ids:
                self.ctr("-n", ns, "tasks", "kill", "-s", "SIGKILL", cid, check=False, timeout=20, ns=None)
            for cid in ids:
                for _ in range(20):
                    res = self.ctr("-n", ns, "tasks", "rm", "-f", cid, check=False, timeout=20, ns=None)
                    if res.returncode == 0 or "not found" in res.stderr:
                        break
                    time.sleep(0.2)
                self.ctr("-n", ns, "containers", "rm", cid, check=False, timeout=20, ns=None)
                self.cgroups.append(f"/{ns}/{cid}")

    # client
    def ctr(self, *args: str, check: bool = True, timeout: float = 120, ns: str | None = "",
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run `ctr --address <ours> -n <namespace> ARGS` (`ns=None`: no -n; `ns="x"`: that one)."""
        argv = [self.ctr_binary, "--address", self.address]
        namespace = self.namespace if ns == "" else ns
        if namespace is not None:
            argv += ["-n", namespace]
        return run_cmd(argv + list(args), check=check, timeout=timeout, input=input)

    def import_image(self, tarball: Path, ref: str = "docker.io/local/busybox:latest",
                     namespace: str | None = None) -> str:
        """Import a rootfs tarball as image `ref`: wrap it in an OCI archive, `ctr images import` it."""
        assert self.dir is not None
        archive = oci_archive(Path(tarball), self.dir / "image-oci.tar", ref)
        try:
            self.ctr("images", "import", str(archive), ns=namespace or "")  # unpacks for linux/amd64
        finally:
            archive.unlink()
        return ref

    def run(self, image: str, cid: str, *cmd: str, runtime_binary: str | None = None,
            flags: Sequence[str] = (), check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`ctr run --rm --runc-root/--fifo-dir <ours> [--runc-binary PATH] FLAGS IMAGE ID CMD...`, waiting for it to exit."""
        assert self.dir is not None
        argv = ["run", "--rm", "--runc-root", self.runc_root, "--fifo-dir", str(self.dir / "fifo")]
        if runtime_binary is not None:
            argv += ["--runc-binary", runtime_binary]
        self.cgroups.append(f"/{self.namespace}/{cid}")
        return self.ctr(*argv, *flags, image, cid, *cmd, check=check, timeout=timeout)
