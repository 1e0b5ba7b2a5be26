"""A private containerd with the CRI plugin, for driving pods the way kubelet does.

    with CriContainerd({"pellucid": "/work/wt/x/.venv/bin/pellucid"}) as cd:
        cd.import_image(pause_archive(tmp))
        cd.cri.version()

Everything is its own: a directory under /tmp (root, state, sockets, the runtimes' --root,
the CNI plugin's leases, kubelet's pod and log directories), a cgroup root /<dir name> for
the pods, and the pods' network, 169.254.160.0/20 by default: one /24 per pod, made by
tests/cri/cni_veth.py (and loopback from /usr/lib/cni, or the same script if absent).
Runtime handlers: `runc`, plus one io.containerd.runc.v2 handler per entry of `handlers`
with `BinaryName` = that path. The CRI section has `restrict_oom_score_adj = true` (root
lacks CAP_SYS_RESOURCE here). `stop()` removes every pod through the CRI, stops containerd
and the shims, then removes what may be left: processes, mounts, veths, cgroups, the
directory; `leftovers()` and `pod_leftovers()` list what survived.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from tests.clients import harness
from tests.cri import cni_veth
from tests.cri.client import CriClient, CriError

CNI_PLUGIN = Path(cni_veth.__file__)
CNI_NETWORK_NAME = "pellucid-cri-test"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string for our paths


def links_with_address_in(network: ipaddress.IPv4Network) -> list[str]:
    """Names of this namespace's links holding an IPv4 address inside `network`."""
    out = harness.run_cmd(["ip", "-j", "-4", "addr", "show"]).stdout
    return sorted({link["ifname"] for link in json.loads(out or "[]")
                   for a in link.get("addr_info", [])
                   if ipaddress.IPv4Address(a["local"]) in network})


class CriContainerd(harness.PrivateService):
    prefix = "pcri-"
    host_paths = ("/run/containerd/s", "/run/containerd/fifo", "/run/containerd")

    def __init__(self, handlers: Mapping[str, str] | None = None, *, network: str = "169.254.160.0/20",
                 sandbox_image: str = "localhost/pellucid-test/pause:3.9", binary: str = "containerd",
                 start_timeout: float = 60, env: Mapping[str, str] | None = None,
                 request_timeout: float = 120) -> None:
        """``env``: added to containerd's environment, which its shims and so the runtimes inherit
        (PELLUCID_CONFIG names the pellucid runtime's configuration). ``request_timeout``: the
        CRI calls' deadline (kubelet's --runtime-request-timeout is 2 minutes)."""
        super().__init__()
        self.env = dict(env or {})
        self.request_timeout = request_timeout
        self.handlers = {"runc": harness.RUNC, **(handlers or {})}
        self.network = ipaddress.IPv4Network(network)
        self.sandbox_image = sandbox_image
        self.binary = binary
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.cri: CriClient | None = None

    # paths
    @property
    def address(self) -> str:
        assert self.dir is not None
        return str(self.dir / "c.sock")

    @property
    def log_path(self) -> Path:
        assert self.dir is not None
        return self.dir / "containerd.log"

    @property
    def cni_data(self) -> Path:
        assert self.dir is not None
        return self.dir / "cni-data"

    @property
    def kubelet_root(self) -> Path:
        assert self.dir is not None
        return self.dir / "kubelet"

    @property
    def cgroup_root(self) -> str:
        """The pods' cgroup parent (kubelet's /kubepods), one per harness."""
        assert self.dir is not None
        return "/" + self.dir.name

    def runtime_root(self, handler: str) -> Path:
        """The handler's --root (where runc or pellucid keep container state)."""
        assert self.dir is not None
        return self.dir / "rt" / handler

    def logs(self) -> list[Path]:
        return [self.log_path, self.cni_data / "plugin.log"]

    def config_toml(self) -> str:
        """The generated config.toml (version 2)."""
        assert self.dir is not None
        d, cri = self.dir, 'plugins."io.containerd.grpc.v1.cri"'
        lines = [
            "version = 2",
            f"root = {_toml_str(str(d / 'root'))}",
            f"state = {_toml_str(str(d / 'state'))}",
            "[grpc]", f"  address = {_toml_str(self.address)}",
            "[ttrpc]", f"  address = {_toml_str(self.address + '.ttrpc')}",
            "[debug]", '  address = ""', '  level = "info"',
            "[metrics]", '  address = ""',
            '[plugins."io.containerd.internal.v1.opt"]', f"  path = {_toml_str(str(d / 'opt'))}",
            f"[{cri}]",
            "  restrict_oom_score_adj = true",
            f"  sandbox_image = {_toml_str(self.sandbox_image)}",
            '  stream_server_address = "127.0.0.1"',
            '  stream_server_port = "0"',
            "  netns_mounts_under_state_dir = true",
            "  enable_selinux = false",
            f"[{cri}.containerd]",
            '  snapshotter = "overlayfs"',
            '  default_runtime_name = "runc"',
        ]
        for name, binary in self.handlers.items():
            lines += [f"[{cri}.containerd.runtimes.{_toml_str(name)}]",
                      '  runtime_type = "io.containerd.runc.v2"',
                      f"[{cri}.containerd.runtimes.{_toml_str(name)}.options]",
                      f"  BinaryName = {_toml_str(binary)}",
                      f"  Root = {_toml_str(str(self.runtime_root(name)))}"]
        lines += [f"[{cri}.cni]",
                  f"  bin_dir = {_toml_str(str(d / 'cni-bin'))}",
                  f"  conf_dir = {_toml_str(str(d / 'cni-conf'))}",
                  "  max_conf_num = 1"]
        return "\n".join(lines) + "\n"

    def cni_conflist(self) -> dict[str, Any]:
        return {"cniVersion": "1.0.0", "name": CNI_NETWORK_NAME, "plugins": [
            {"type": cni_veth.VETH_TYPE, "network": str(self.network), "dataDir": str(self.cni_data)}]}

    # lifecycle
    def start(self) -> None:
        """Write the CNI set-up and config, start containerd; return when the CRI answers."""
        if not shutil.which(self.binary):
            raise harness.HarnessError(f"{self.binary} not found (apt-get install containerd)")
        taken = links_with_address_in(self.network)
        if taken:
            raise harness.HarnessError(f"{self.network} already used by {', '.join(taken)}: another CRI "
                                       "harness, or leftovers (delete them with `ip link del NAME`)")
        d = self._make_dir()
        self.cgroups.append(self.cgroup_root)
        for sub in ("root", "state", "opt", "cni-bin", "cni-conf", "rt", "kubelet"):
            (d / sub).mkdir()
        self.cni_data.mkdir()
        (d / "cni-bin" / cni_veth.VETH_TYPE).symlink_to(CNI_PLUGIN)
        debian_loopback = Path(harness.CNI_BIN_DIR) / "loopback"
        (d / "cni-bin" / "loopback").symlink_to(debian_loopback if debian_loopback.exists() else CNI_PLUGIN)
        (d / "cni-conf" / f"10-{CNI_NETWORK_NAME}.conflist").write_text(json.dumps(self.cni_conflist(), indent=1))
        (d / "config.toml").write_text(self.config_toml())
        env = {**os.environ, **self.env, "PATH": os.environ.get("PATH", "") + ":" + DEFAULT_PATH}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([self.binary, "--config", str(d / "config.toml")],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env=env, start_new_session=True)
        self.cri = CriClient(self.address, timeout=self.request_timeout)
        self._wait(self._cri_ready, "containerd's CRI")

    def _cri_ready(self) -> bool:
        assert self.cri is not None
        if not os.path.exists(self.address):
            return False
        with contextlib.suppress(CriError):
            return bool(self.cri.version(timeout=5).runtime_api_version)
        return False

    def _wait(self, predicate: Any, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.proc is not None and self.proc.poll() is not None:
                log = self.log_path.read_text(errors="replace").splitlines()[-40:]
                raise harness.HarnessError(f"{what}: containerd exited {self.proc.returncode}\n" + "\n".join(log))
            time.sleep(0.1)
        raise harness.HarnessError(f"{what}: not ready after {self.start_timeout}s (log: {self.log_path})")

    def import_image(self, archive: Path) -> None:
        """`ctr -n k8s.io images import` an OCI archive; return when the CRI lists its name."""
        ref = image_name(archive)
        harness.run_cmd(["ctr", "--address", self.address, "-n", "k8s.io", "images", "import", str(archive)])
        assert self.cri is not None
        self._wait(lambda: self.cri.image_status(ref) is not None, f"image {ref} in the CRI")

    def stop(self) -> None:
        """Remove every pod through the CRI, stop containerd and its shims, clean the host."""
        try:
            if self.proc is not None and self.proc.poll() is None and self.cri is not None:
                with contextlib.suppress(CriError):
                    self.remove_all_pods()
            harness.stop_process(self.proc)
        finally:
            try:
                if self.cri is not None:
                    self.cri.close()
                for link in self.our_links():
                    subprocess.run(["ip", "link", "del", link], capture_output=True)
            finally:
                self._final_cleanup()

    def remove_all_pods(self) -> None:
        """StopPodSandbox and RemovePodSandbox for every pod (removing its containers too)."""
        assert self.cri is not None
        for pod in self.cri.list_pod_sandbox():
            with contextlib.suppress(CriError):
                self.cri.stop_pod_sandbox(pod.id)
            self.cri.remove_pod_sandbox(pod.id)

    # what is left
    def our_links(self) -> list[str]:
        """Links of our CNI network: the leases' veths and anything holding one of our addresses."""
        names = set(links_with_address_in(self.network))
        if self.dir is not None and self.cni_data.is_dir():
            for lease in self.cni_data.glob("lease-*"):
                with contextlib.suppress(OSError):
                    cid, ifname = lease.read_text().rsplit("/", 1)
                    names.add(cni_veth.host_link_name(cid, ifname))
        return sorted(n for n in names if os.path.exists(f"/sys/class/net/{n}"))

    def leftovers(self) -> list[str]:
        return super().leftovers() + [f"link {name}" for name in self.our_links()]

    def pod_leftovers(self, pod_id: str, cgroup_parent: str, container_ids: Sequence[str] = ()) -> list[str]:
        """What of a removed pod is still here: processes, mounts, state, cgroups, leases, veths."""
        assert self.dir is not None
        out = []
        for cid in [pod_id, *container_ids]:
            out += [f"process {pid} names {cid[:12]}" for pid in harness.pids_referencing(cid)]
            for found in self._paths_naming(cid):
                out.append(f"path {found}")
            out += [f"mount {m}" for m in harness.mounts_under(self.dir) if cid in m]
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            found = hierarchy / cgroup_parent.strip("/")
            if found.is_dir():
                out.append(f"cgroup {found}" + "".join(f" {c.name}/" for c in found.iterdir() if c.is_dir()))
        for lease in self.cni_data.glob("lease-*"):
            if lease.read_text().startswith(pod_id + "/"):
                out.append(f"CNI lease {lease}")
        link = cni_veth.host_link_name(pod_id, "eth0")
        if os.path.exists(f"/sys/class/net/{link}"):
            out.append(f"link {link}")
        return out

    def _paths_naming(self, cid: str) -> list[Path]:
        """Files and directories under our root, state and runtime roots whose name is `cid`."""
        assert self.dir is not None
        found = []
        for top in ("root", "state", "rt"):
            for dirpath, dirnames, filenames in os.walk(self.dir / top):
                for name in dirnames + filenames:
                    if cid in name:
                        found.append(Path(dirpath) / name)
        return found


def image_name(archive: Path) -> str:
    """The name `ctr images import` gives the image of an OCI archive (its index annotation)."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        assert member is not None, f"{archive} has no index.json"
        return json.load(member)["manifests"][0]["annotations"]["io.containerd.image.name"]
