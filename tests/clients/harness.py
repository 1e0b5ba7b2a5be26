"""Drive real container clients (dockerd, containerd/ctr, podman) against a runtime binary.

Every client runs PRIVATELY: its own temporary directory under /tmp (short, because unix
socket paths are limited to 108 bytes), its own sockets, state and storage, and its own
bridge in 169.254.0.0/16. Nothing is shared with a system dockerd, containerd or podman
that may be running. Each helper is a context manager whose exit tears everything down
in `finally`: containers, daemons (SIGTERM, then SIGKILL), shims, left-over processes,
mounts under its directory, cgroups, bridges, and the directory itself. `leftovers()`
lists anything that survived, for tests to assert on.

Standard library only (Python 3.11).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

BUSYBOX = "/bin/busybox"
RUNC = shutil.which("runc") or "/usr/sbin/runc"
# The docker CLI from Debian's docker.io matches dockerd 20.10; /usr/local/bin/docker
# may be a much newer CLI.
DOCKER_CLI = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else (shutil.which("docker") or "docker")
CNI_BIN_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins
LINK_LOCAL_PREFIX = "169.254."
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# ---------------------------------------------------------------------------------------
# Errors


class HarnessError(Exception):
    """Root of the harness's errors: a client could not be set up or did not behave."""


class CommandError(HarnessError):
    """A client command exited non-zero; carries its argv and output."""

    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(f"{' '.join(self.argv)} exited {returncode}\n"
                         f"stdout: {stdout[-2000:]}\nstderr: {stderr[-2000:]}")


def run_cmd(argv: Sequence[str], *, check: bool = True, timeout: float = 120,
            env: Mapping[str, str] | None = None, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run argv, capture text output; raise CommandError on a non-zero exit if `check`."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              env=dict(env) if env is not None else None, input=input)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        raise CommandError(argv, -1, out, err + f"\n(timed out after {timeout}s)") from None
    if check and proc.returncode != 0:
        raise CommandError(argv, proc.returncode, proc.stdout, proc.stderr)
    return proc


# ---------------------------------------------------------------------------------------
# Images: a busybox rootfs, its tarball, and an OCI image archive made from it


PASSWD = ("root:x:0:0:root:/root:/bin/sh\n"
          "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
GROUP = "root:x:0:\nnobody:x:65534:\nnogroup:x:65534:\n"
IMAGE_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]


def need(*binaries: str) -> None:
    """The README's set-up installs every client: a missing one is a set-up defect, not a skip."""
    missing = [b for b in binaries if shutil.which(b) is None]
    assert not missing, f"not installed: {', '.join(missing)} (run scripts/setup host)"


def busybox_rootfs(dest: Path, busybox: str = BUSYBOX) -> Path:
    """Build a minimal rootfs in `dest` (created; must not exist or be empty) from a static busybox.

    /bin/busybox plus one absolute symlink per applet at the place `busybox --list-full`
    names (what `busybox --install -s` does), /etc/passwd and /etc/group with root and
    nobody, /tmp and /var/tmp 1777, and the mount points and files runtimes expect.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise HarnessError(f"{dest} is not empty")
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "usr/local/bin", "etc", "root", "home", "mnt",
              "proc", "sys", "dev", "dev/pts", "dev/shm", "run", "var/log", "var/run", "tmp", "var/tmp"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    os.chmod(dest, 0o755)
    os.chmod(dest / "root", 0o700)
    for d in ("tmp", "var/tmp"):
        os.chmod(dest / d, 0o1777)
    shutil.copy2(busybox, dest / "bin/busybox")
    os.chmod(dest / "bin/busybox", 0o755)
    applets = run_cmd([busybox, "--list-full"]).stdout.split()
    for rel in applets:
        rel = rel.lstrip("/")
        if rel == "bin/busybox":
            continue
        link = dest / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists() and not link.is_symlink():
            link.symlink_to("/bin/busybox")
    files = {
        "etc/passwd": (PASSWD, 0o644),
        "etc/group": (GROUP, 0o644),
        "etc/shadow": ("root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n", 0o640),
        "etc/hosts": ("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n", 0o644),
        "etc/hostname": ("busybox\n", 0o644),
        "etc/resolv.conf": ("", 0o644),
        "etc/nsswitch.conf": ("passwd: files\ngroup: files\nhosts: files dns\n", 0o644),
        "etc/mtab": (None, 0),
    }
    for rel, (text, mode) in files.items():
        path = dest / rel
        if text is None:
            path.symlink_to("/proc/mounts")
            continue
        path.write_text(text)
        os.chmod(path, mode)
    return dest


def _root_owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = 0
    return info


def busybox_tarball(dest_dir: Path, name: str = "busybox-rootfs.tar") -> Path:
    """Build the busybox rootfs under `dest_dir` and pack it into `dest_dir/name` (all owned by root)."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    root = busybox_rootfs(Path(tempfile.mkdtemp(prefix="rootfs-", dir=dest_dir)))
    out = dest_dir / name
    try:
        with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
            tar.add(root, arcname=".", filter=_root_owned)
    finally:
        shutil.rmtree(root)
    return out


def _blob(layout: tarfile.TarFile, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    info = _root_owned(tarfile.TarInfo(f"blobs/sha256/{digest}"))
    info.size = len(data)
    info.mode = 0o644
    layout.addfile(info, io.BytesIO(data))
    return {"digest": f"sha256:{digest}", "size": len(data)}


def oci_archive(rootfs_tarball: Path, dest: Path, ref: str, cmd: Sequence[str] = ("/bin/sh",)) -> Path:
    """Write `dest`: an OCI image-layout tar (oci-layout, index.json, blobs) of one gzip layer.

    The index entry carries `io.containerd.image.name = ref` (how `ctr images import`
    names it) and `org.opencontainers.image.ref.name` = the tag.
    """
    layer_raw = Path(rootfs_tarball).read_bytes()
    diff_id = "sha256:" + hashlib.sha256(layer_raw).hexdigest()
    layer = gzip.compress(layer_raw, mtime=0)
    config = {
        "created": "1970-01-01T00:00:00Z",
        "architecture": "amd64", "os": "linux",
        "config": {"Env": IMAGE_ENV, "Cmd": list(cmd), "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "pellucid test harness"}],
    }
    tag = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else "latest"
    with tarfile.open(dest, "w") as layout:
        layer_desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **_blob(layout, layer)}
        config_desc = {"mediaType": "application/vnd.oci.image.config.v1+json",
                       **_blob(layout, json.dumps(config, sort_keys=True).encode())}
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": config_desc, "layers": [layer_desc]}
        manifest_desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                         **_blob(layout, json.dumps(manifest, sort_keys=True).encode()),
                         "platform": {"architecture": "amd64", "os": "linux"},
                         "annotations": {"io.containerd.image.name": ref,
                                         "org.opencontainers.image.ref.name": tag}}
        for name, obj in (("oci-layout", {"imageLayoutVersion": "1.0.0"}),
                          ("index.json", {"schemaVersion": 2, "manifests": [manifest_desc]})):
            data = json.dumps(obj).encode()
            info = _root_owned(tarfile.TarInfo(name))
            info.size, info.mode = len(data), 0o644
            layout.addfile(info, io.BytesIO(data))
    return Path(dest)


# ---------------------------------------------------------------------------------------
# Host-state helpers: processes, mounts, links, cgroups


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unescape_mountinfo(field: str) -> str:
    return field.encode().decode("unicode_escape") if "\\" in field else field


def mounts_under(path: str | Path) -> list[str]:
    """Mount points at or below `path` in this mount namespace, deepest first."""
    base = os.path.realpath(path).rstrip("/")
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = _unescape_mountinfo(line.split()[4])
            if point == base or point.startswith(base + "/"):
                found.append(point)
    return sorted(set(found), key=lambda p: (p.count("/"), len(p)), reverse=True)


def unmount_all_under(path: str | Path) -> None:
    """Lazily unmount everything at or below `path`, deepest first, until nothing is left."""
    for _ in range(10):
        points = mounts_under(path)
        if not points:
            return
        for point in points:
            subprocess.run(["umount", "-l", point], capture_output=True)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return pids


def pids_referencing(text: str) -> list[int]:
    """Processes (not us or our ancestors) whose command line contains `text`."""
    mine = _ancestors()
    return [pid for pid in _all_pids() if pid not in mine and text in _cmdline(pid)]


def descendants(root: int) -> list[int]:
    """All processes below `root` in the process tree, as seen now."""
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def kill_pids(pids: Iterable[int], grace: float = 5.0) -> None:
    """SIGTERM the given processes, then SIGKILL whichever is still alive after `grace` s."""
    pids = [p for p in pids if _alive(p)]
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            pids = [p for p in pids if _alive(p)]
            if not pids:
                return
            time.sleep(0.05)


def stop_process(proc: subprocess.Popen[Any] | None, grace: float = 20.0) -> None:
    """Stop a process we started: SIGTERM, wait `grace` s, then SIGKILL; always reaps it."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(10)


def link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def create_bridge(name: str, cidr: str | None) -> None:
    """Create bridge `name`, give it `cidr` (e.g. 169.254.77.1/24) if any, and bring it up."""
    if cidr is not None:
        if not cidr.startswith(LINK_LOCAL_PREFIX):
            raise HarnessError(f"{cidr}: harness bridges stay in 169.254.0.0/16")
        prefix = cidr.split("/")[0].rsplit(".", 1)[0] + "."
        for line in run_cmd(["ip", "-o", "-4", "addr", "show"]).stdout.splitlines():
            fields = line.split()
            if fields[3].startswith(prefix):
                raise HarnessError(f"{fields[3]} already on {fields[1]}: another harness, or a "
                                   f"leftover bridge (delete it with `ip link del {fields[1]}`)")
    run_cmd(["ip", "link", "add", "name", name, "type", "bridge"])
    try:
        if cidr is not None:
            run_cmd(["ip", "addr", "add", cidr, "dev", name])
        run_cmd(["ip", "link", "set", name, "up"])
    except BaseException:
        delete_link(name)
        raise


def delete_link(name: str) -> None:
    if link_exists(name):
        subprocess.run(["ip", "link", "del", name], capture_output=True)


def veths() -> set[str]:
    """Names of the host's veth interfaces."""
    out = run_cmd(["ip", "-o", "link", "show", "type", "veth"]).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}


def _cgroup_dirs(rel: str) -> list[Path]:
    """The directories of cgroup `rel` (e.g. /pc-1234/abc) under every v1 hierarchy and v2."""
    rel = rel.strip("/")
    if not rel:
        return []
    base = Path("/sys/fs/cgroup")
    candidates = [base / rel] + [d / rel for d in base.iterdir() if d.is_dir()]
    return [c for c in candidates if c.is_dir() and (c / "cgroup.procs").exists()]


def remove_cgroup(rel: str) -> None:
    """Kill every process in cgroup `rel` (all hierarchies) and remove it, deepest first."""
    for top in _cgroup_dirs(rel):
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        pids: set[int] = set()
        for d in dirs + [top]:
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(x) for x in (d / "cgroup.procs").read_text().split())
        kill_pids(pids, grace=1.0)
        for d in dirs + [top]:
            for _ in range(20):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)


# ---------------------------------------------------------------------------------------
# A private service directory with a log; the common part of every helper


class PrivateService:
    """A private temp dir under /tmp, logs, and the common cleanup steps."""

    prefix = "pc-"

    # Paths outside our dir that the client creates itself when missing (e.g. dockerd's
    # /etc/docker/key.json, the shims' /run/containerd/s): removed again if we caused them.
    host_paths: tuple[str, ...] = ()
    # Cgroups (relative paths) the client creates as parents and never removes.
    cgroup_parents: tuple[str, ...] = ()

    def __enter__(self) -> Any:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        log = getattr(self, "log_path", None)
        if exc[0] is not None and self.dir is not None and log is not None:
            sys.stderr.write(f"--- {type(self).__name__} log ({log}) ---\n{_tail(log)}\n")
        self.stop()

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __init__(self) -> None:
        self.dir: Path | None = None
        self.bridges: list[str] = []
        self.cgroups: list[str] = []
        self._absent_host_paths: list[str] = []
        self._absent_cgroups: list[Path] = []

    def _make_dir(self) -> Path:
        self._absent_host_paths = [p for p in self.host_paths if not os.path.lexists(p)]
        self._absent_cgroups = [h / rel.strip("/") for rel in self.cgroup_parents
                                for h in Path("/sys/fs/cgroup").iterdir()
                                if (h / "cgroup.procs").exists() and not (h / rel.strip("/")).exists()]
        self.dir = Path(tempfile.mkdtemp(prefix=self.prefix, dir="/tmp"))
        os.chmod(self.dir, 0o711)
        return self.dir

    def _new_bridge_name(self, tag: str) -> str:
        return f"pc{tag}{uuid.uuid4().hex[:8]}"  # <= 15 bytes (IFNAMSIZ)

    def _final_cleanup(self) -> None:
        """Kill anything that still names our dir, unmount, drop cgroups and bridges, remove the dir."""
        if self.dir is None:
            return
        kill_pids(pids_referencing(str(self.dir)), grace=2.0)
        for cg in self.cgroups:
            remove_cgroup(cg)
        unmount_all_under(self.dir)
        for name in self.bridges:
            delete_link(name)
        for cg in sorted(self._absent_cgroups, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                cg.rmdir()  # fails harmlessly if someone else's cgroups live in it
        for path in self._absent_host_paths:  # deepest first; only if still empty
            with contextlib.suppress(OSError):
                if os.path.isdir(path) and not os.path.islink(path):
                    if not os.listdir(path) and mounts_under(path) == [path]:
                        subprocess.run(["umount", path], capture_output=True)  # CNI's /run/netns bind
                    os.rmdir(path)
                else:
                    os.unlink(path)
        for _ in range(3):
            try:
                shutil.rmtree(self.dir)
                break
            except FileNotFoundError:
                break
            except OSError:
                unmount_all_under(self.dir)
                time.sleep(0.2)

    def leftovers(self) -> list[str]:
        """What of ours is still on the host: processes, mounts, the dir, bridges, cgroups."""
        if self.dir is None:
            return []
        out = [f"process {p}: {_cmdline(p)}" for p in pids_referencing(str(self.dir))]
        out += [f"mount {m}" for m in mounts_under(self.dir)]
        if self.dir.exists():
            out.append(f"directory {self.dir}")
        out += [f"link {b}" for b in self.bridges if link_exists(b)]
        out += [f"cgroup {d}" for cg in self.cgroups for d in _cgroup_dirs(cg)]
        return out


def _tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _wait_for(predicate: Any, timeout: float, what: str, proc: subprocess.Popen[Any] | None = None,
              log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise HarnessError(f"{what}: process exited {proc.returncode}\n{_tail(log) if log else ''}")
        time.sleep(0.1)
    raise HarnessError(f"{what}: not ready after {timeout}s\n{_tail(log) if log else ''}")


def _toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string for our paths


# ---------------------------------------------------------------------------------------
# containerd


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
            f"root = {_toml_str(str(d / 'root'))}",
            f"state = {_toml_str(str(d / 'state'))}",
            "disabled_plugins = []" if self.cri else 'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
            "[grpc]", f"  address = {_toml_str(self.address)}",
            "[ttrpc]", f"  address = {_toml_str(self.address + '.ttrpc')}",
            "[debug]", '  address = ""', '  level = "info"',
            "[metrics]", '  address = ""',
            '[plugins."io.containerd.internal.v1.opt"]', f"  path = {_toml_str(str(d / 'opt'))}",
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
                lines += [f"[{cri}.containerd.runtimes.{_toml_str(name)}]",
                          '  runtime_type = "io.containerd.runc.v2"',
                          f"[{cri}.containerd.runtimes.{_toml_str(name)}.options]",
                          f"  BinaryName = {_toml_str(path)}",
                          f"  Root = {_toml_str(self.runc_root)}"]
            lines += [f"[{cri}.cni]",
                      f"  bin_dir = {_toml_str(CNI_BIN_DIR)}",
                      f"  conf_dir = {_toml_str(str(d / 'cni'))}",
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
        _wait_for(lambda: os.path.exists(self.address) and
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


# ---------------------------------------------------------------------------------------
# dockerd


class Dockerd(PrivateService):
    """A private dockerd 20.10 on its own socket, data-root, exec-root, bridge and containerd.

        with Dockerd(runtimes={"pellucid": "/usr/local/bin/pellucid"}, default_runtime="pellucid") as d:
            d.import_image(busybox_tarball(tmp))
            d.docker("run", "--rm", "local/busybox", "echo", "hi")

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
                 dockerd: str = "dockerd", docker_cli: str = DOCKER_CLI, start_timeout: float = 60) -> None:
        super().__init__()
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
        _wait_for(self._ping, self.start_timeout, "dockerd", self.proc, self.log_path)

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

    def import_image(self, tarball: Path, name: str = "local/busybox") -> str:
        """`docker import` a rootfs tarball as `name` (CMD /bin/sh); return the image id."""
        return self.docker("import", "--change", 'CMD ["/bin/sh"]', str(tarball), name).stdout.strip()


# ---------------------------------------------------------------------------------------
# podman


class Podman(PrivateService):
    """Podman 4.3 with conmon on private storage, config and CNI network (no daemon).

        with Podman(runtime="/usr/local/bin/pellucid") as p:
            p.import_image(busybox_tarball(tmp))
            p.podman("run", "--rm", "local/busybox", "echo", "hi")

    containers.conf sets `default_ulimits` low enough for a root without
    CAP_SYS_RESOURCE; its default network "podman" is a bridge of ours on 169.254.88.0/24.
    """

    prefix = "pcp-"
    host_paths = ("/var/lib/containers/cache/blob-info-cache-v1.boltdb", "/var/lib/containers/cache",
                  "/var/lib/containers", "/var/lib/cni/results", "/var/lib/cni", "/run/netns")

    def __init__(self, runtime: str = RUNC, *, subnet: str = "169.254.88.0/24",
                 ulimits: Sequence[str] = ("nofile=20000:20000", "nproc=32768:32768"),
                 binary: str = "podman") -> None:
        super().__init__()
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
            f"events_logfile_path = {_toml_str(str(d / 'events.log'))}",
            f"tmp_dir = {_toml_str(str(d / 'tmp'))}",
            f"volume_path = {_toml_str(str(d / 'volumes'))}",
            f"static_dir = {_toml_str(str(d / 'root/libpod'))}",
            "[network]",
            'network_backend = "cni"',
            f"network_config_dir = {_toml_str(str(d / 'net'))}",
            f"cni_plugin_dirs = [{_toml_str(CNI_BIN_DIR)}]",
            'default_network = "podman"',
            f"default_subnet = {_toml_str(self.subnet)}",
        ]) + "\n"

    def storage_conf(self) -> str:
        assert self.dir is not None
        return "\n".join(["[storage]", 'driver = "overlay"',
                          f"graphroot = {_toml_str(str(self.dir / 'root'))}",
                          f"runroot = {_toml_str(str(self.dir / 'run'))}"]) + "\n"

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

    def env(self) -> dict[str, str]:
        assert self.dir is not None
        return {**os.environ,
                "CONTAINERS_CONF": str(self.dir / "containers.conf"),
                "CONTAINERS_STORAGE_CONF": str(self.dir / "storage.conf"),
                "CONTAINERS_REGISTRIES_CONF": str(self.dir / "registries.conf"),
                "PATH": os.environ.get("PATH", "") + ":" + DEFAULT_PATH}

    def podman(self, *args: str, check: bool = True, timeout: float = 120,
               input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run `podman --root --runroot --runtime --cgroup-manager=cgroupfs --events-backend=file ARGS`."""
        assert self.dir is not None
        argv = [self.binary, "--root", str(self.dir / "root"), "--runroot", str(self.dir / "run"),
                "--runtime", self.runtime, "--cgroup-manager=cgroupfs", "--events-backend=file",
                "--tmpdir", str(self.dir / "tmp"), *args]
        return run_cmd(argv, check=check, timeout=timeout, env=self.env(), input=input)

    def import_image(self, tarball: Path, name: str = "local/busybox") -> str:
        """`podman import` a rootfs tarball as `name` (CMD /bin/sh); return the image id."""
        return self.podman("import", "--change", 'CMD ["/bin/sh"]', str(tarball), name).stdout.strip().splitlines()[-1]


def logging_runtime(path: Path, log: Path, runtime: str = RUNC) -> Path:
    """Write an executable at `path` that appends its argv to `log` and execs `runtime`."""
    path = Path(path)
    path.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {runtime} "$@"\n')
    path.chmod(0o755)
    return path
