"""Images built locally: a busybox rootfs, its tarball, and an OCI image archive made from it."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from .binaries import BUSYBOX
from .commands import HarnessError, run_cmd

PASSWD = ("root:x:0:0:root:/root:/bin/sh\n"
          "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
GROUP = "root:x:0:\nnobody:x:65534:\nnogroup:x:65534:\n"
IMAGE_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]


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


# Debian 12's python3.11 and the libraries its interpreter and the modules the benchmarks import need:
# the .debs `pellucid assets build` downloads for the guest image (apt-get download), extracted.
PYTHON_DEBS = ("libc6_", "zlib1g_", "libexpat1_", "libffi8_", "liblzma5_", "libpython3.11-minimal_",
               "libpython3.11-stdlib_", "python3.11-minimal_")


def python_rootfs(dest: Path, debs_dir: Path, busybox: str = BUSYBOX) -> Path:
    """The busybox rootfs plus Debian 12's python3 (as /usr/bin/python3), from the .debs in `debs_dir`."""
    debs = sorted(Path(debs_dir).glob("*.deb"))
    wanted = [d for d in debs if d.name.startswith(PYTHON_DEBS)]
    missing = [p for p in PYTHON_DEBS if not any(d.name.startswith(p) for d in wanted)]
    if missing:
        raise HarnessError(f"no {', '.join(m.rstrip('_') for m in missing)} .deb in {debs_dir} "
                           "(pellucid assets build downloads them)")
    busybox_rootfs(dest, busybox)
    for deb in wanted:
        run_cmd(["dpkg-deb", "-x", str(deb), str(dest)])
    python = Path(dest) / "usr/bin/python3"
    if not python.exists():
        python.symlink_to("python3.11")
    # What Debian's postinst does: the standard library's bytecode, so no import writes it.
    run_cmd(["chroot", str(dest), "/usr/bin/python3", "-m", "compileall", "-q", "-j0", "/usr/lib/python3.11"],
            timeout=300)
    return Path(dest)


def python_tarball(dest_dir: Path, debs_dir: Path, name: str = "python-rootfs.tar") -> Path:
    """:func:`python_rootfs` packed into `dest_dir/name` (all owned by root)."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    root = python_rootfs(Path(tempfile.mkdtemp(prefix="rootfs-", dir=dest_dir)), debs_dir)
    out = dest_dir / name
    try:
        with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
            tar.add(root, arcname=".", filter=_root_owned)
    finally:
        shutil.rmtree(root)
    return out


def _root_owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = 0
    return info


def rootfs_tarball(root: Path, out: Path) -> Path:
    """Pack the directory `root` into the tarball `out`, everything owned by root."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(root, arcname=".", filter=_root_owned)
    return Path(out)


def busybox_tarball(dest_dir: Path, name: str = "busybox-rootfs.tar",
                    extra: Callable[[Path], object] | None = None) -> Path:
    """Build the busybox rootfs under `dest_dir`, let `extra` add to it, and pack it into
    `dest_dir/name` (all owned by root)."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    root = busybox_rootfs(Path(tempfile.mkdtemp(prefix="rootfs-", dir=dest_dir)))
    try:
        if extra is not None:
            extra(root)
        return rootfs_tarball(root, dest_dir / name)
    finally:
        shutil.rmtree(root)


def single_file_tarball(binary: Path, out: Path, name: str) -> Path:
    """A tarball holding `binary` as `/name` (root-owned, 0755) and nothing else: what a scratch
    image with one static executable is, without /proc, /dev, /sys or /etc."""
    data = Path(binary).read_bytes()
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        info = _root_owned(tarfile.TarInfo(name))
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    return Path(out)


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
