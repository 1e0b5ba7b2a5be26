"""The guest root image: a read-only ext4 image (4 KiB blocks, for DAX) with the agent,
Debian's minimal Python and crun, extracted from Debian's .debs (no debootstrap system).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import AssetError
from . import cache
from .progress import Progress

RECIPE = "rootfs-1"  # bump when the build steps change
ARTIFACT = "root.img"
LINK = "root.img"
PYTHON = "python3.11"

PACKAGES = (
    # the agent's interpreter
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib",
    "libc6", "zlib1g", "libexpat1", "libffi8",
    # crun carries out each container's OCI config inside the VM
    "crun", "libcap2", "libseccomp2", "libyajl2", "libsystemd0",
    "libgcrypt20", "libgpg-error0", "liblz4-1", "liblzma5", "libzstd1",
)

# Left out of the image: documentation, and modules whose libraries the image does not carry.
PRUNE = (
    "usr/share/doc", "usr/share/man", "usr/share/lintian", "usr/share/locale", "usr/share/info",
    "usr/share/bug", "usr/share/binfmts", "usr/share/applications", "usr/share/pixmaps",
    "usr/lib/python3.11/test", "usr/lib/python3.11/idlelib", "usr/lib/python3.11/tkinter",
    "usr/lib/python3.11/ensurepip", "usr/lib/python3.11/lib2to3", "usr/lib/python3.11/pydoc_data",
    "usr/lib/python3.11/turtledemo", "usr/lib/python3.11/sqlite3", "usr/lib/python3.11/curses",
    "usr/lib/python3.11/dbm", "usr/lib/python3.11/config-3.11-x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu/gconv", "usr/bin/pydoc3.11", "usr/bin/pygettext3.11",
)
PRUNE_DYNLOAD_PREFIXES = ("_curses", "_sqlite3", "_dbm", "_gdbm", "readline", "nis", "_test", "_ctypes_test",
                          "xxlimited", "_xxtestfuzz", "ossaudiodev", "audioop", "_tkinter", "_crypt")

DIRS = ("proc", "sys", "dev", "run", "tmp", "etc", "sbin", "mnt", "var/tmp")

INIT = f"""#!/usr/bin/{PYTHON} -IS
# pellucid guest init: the agent is PID 1.
import sys
sys.path.insert(0, "/usr/lib/pellucid")
from pellucid.guest.main import main
main()
"""


def agent_sources() -> list[Path]:
    """The files of the pellucid package that go into the guest: the protocol and the guest code."""
    pkg = Path(__file__).resolve().parent.parent
    return [pkg / "__init__.py", pkg / "protocol.py", pkg / "messages.py", pkg / "linux.py",
            *sorted((pkg / "guest").glob("*.py"))]


def candidate_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    out = subprocess.run(["apt-cache", "show", "--no-all-versions", *packages], capture_output=True, text=True)
    versions: dict[str, str] = {}
    name = None
    for line in out.stdout.splitlines():
        if line.startswith("Package: "):
            name = line.split(": ", 1)[1]
        elif line.startswith("Version: ") and name:
            versions[name] = line.split(": ", 1)[1]
    missing = [p for p in packages if p not in versions]
    if missing:
        raise AssetError(f"Debian packages not known to apt: {', '.join(missing)} (run apt-get update)")
    return versions


def cache_key(versions: dict[str, str]) -> str:
    parts: list[bytes | str] = [RECIPE, INIT]
    parts += [f"{k}={v}" for k, v in sorted(versions.items())]
    for src in agent_sources():
        parts += [src.name, src.read_bytes()]
    return cache.digest(parts)


def ensure(assets_dir: str) -> Path:
    """The cached root image for the current packages and agent, built first if need be."""
    versions = candidate_versions()
    key = cache_key(versions)
    hit = cache.lookup(assets_dir, "image", key, ARTIFACT)
    if hit:
        cache.point(assets_dir, LINK, hit)
        return hit
    return build(assets_dir, key, versions)


def _run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if result.returncode != 0:
        raise AssetError(f"{what} failed: {(result.stderr or result.stdout).strip()[-2000:]}")
    return result


def download(debs_dir: Path, versions: dict[str, str]) -> list[Path]:
    debs_dir.mkdir(parents=True, exist_ok=True)
    wanted = [f"{p}={v}" for p, v in versions.items()]
    _run(["apt-get", "download", *wanted], "apt-get download", cwd=debs_dir)
    found = []
    for pkg, ver in versions.items():
        quoted = ver.replace(":", "%3a")
        matches = list(debs_dir.glob(f"{pkg}_{quoted}_*.deb"))
        if not matches:
            raise AssetError(f"downloaded package {pkg} {ver} not found in {debs_dir}")
        found.append(matches[0])
    return found


def populate(root: Path, debs: list[Path]) -> None:
    for deb in debs:
        _run(["dpkg-deb", "-x", str(deb), str(root)], f"extracting {deb.name}")
    for rel in PRUNE:
        target = root / rel
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
    dynload = root / "usr/lib/python3.11/lib-dynload"
    for so in dynload.iterdir():
        if so.name.startswith(PRUNE_DYNLOAD_PREFIXES):
            so.unlink()
    for d in DIRS:
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    dest = root / "usr/lib/pellucid/pellucid"
    (dest / "guest").mkdir(parents=True, exist_ok=True)
    for src in agent_sources():
        shutil.copy2(src, dest / ("guest" if src.parent.name == "guest" else "") / src.name)
    init = root / "sbin/init"
    init.write_text(INIT)
    init.chmod(0o755)
    (root / "etc/hostname").write_text("pellucid\n")
    (root / "etc/passwd").write_text("root:x:0:0:root:/:/sbin/nologin\n")
    (root / "etc/group").write_text("root:x:0:\n")


def compile_python(root: Path) -> None:
    """Byte-compile with the image's own interpreter: Debian's .debs carry no .pyc and the root is read-only."""
    _run(["chroot", str(root), f"/usr/bin/{PYTHON}", "-I", "-m", "compileall", "-q",
          "--invalidation-mode", "unchecked-hash", "/usr/lib/python3.11", "/usr/lib/pellucid"], "compileall")


def check_libraries(root: Path) -> None:
    """Every executable and shared object in the image finds its libraries inside the image."""
    _run(["ldconfig", "-r", str(root)], "ldconfig")
    elves = [p for d in ("usr/bin", "usr/sbin", "usr/lib/python3.11/lib-dynload") if (root / d).is_dir()
             for p in (root / d).iterdir() if p.is_file() and not p.is_symlink() and _is_elf(p)]
    broken = []
    for elf in elves:
        rel = "/" + str(elf.relative_to(root))
        out = subprocess.run(["chroot", str(root), "/lib64/ld-linux-x86-64.so.2", "--list", rel],
                             capture_output=True, text=True)
        if "not found" in out.stdout:
            broken.append(f"{rel}: " + ", ".join(l.split()[0] for l in out.stdout.splitlines() if "not found" in l))
    if broken:
        raise AssetError("libraries missing from the guest image: " + "; ".join(broken))


def _is_elf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def make_image(root: Path, image: Path) -> int:
    used = int(_run(["du", "-s", "--block-size=1", str(root)], "du").stdout.split()[0])
    align = 2 << 20  # virtio-pmem maps the file in 2 MiB units
    size = ((used * 5 // 4 + (8 << 20)) + align - 1) // align * align
    with open(image, "wb") as f:
        f.truncate(size)
    _run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-m", "0", "-O", "^has_journal", "-L", "pellucid-root",
          "-E", "root_owner=0:0", "-d", str(root), str(image)], "mkfs.ext4")
    image.chmod(0o444)
    return size


def build(assets_dir: str, key: str, versions: dict[str, str]) -> Path:
    os.makedirs(assets_dir, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".image-", dir=assets_dir))
    progress = Progress("image", 6)
    try:
        root = staging / "root"
        root.mkdir()
        progress.step(f"downloading {len(versions)} Debian packages")
        debs = download(Path(assets_dir) / "debs", versions)
        progress.step("extracting packages and installing the agent")
        populate(root, debs)
        progress.step(f"byte-compiling Python with the guest's {PYTHON}")
        compile_python(root)
        progress.step("checking shared libraries")
        check_libraries(root)
        progress.step("writing the ext4 image")
        size = make_image(root, staging / ARTIFACT)
        shutil.rmtree(root)
        manifest = {"kind": "image", "key": key, "recipe": RECIPE, "packages": versions, "size": size,
                    "python": PYTHON}
        path = cache.commit(assets_dir, "image", key, staging, manifest, LINK, ARTIFACT)
        progress.finish(f"built {size >> 20} MiB image -> {path}")
        return path
    finally:
        shutil.rmtree(staging, ignore_errors=True)
