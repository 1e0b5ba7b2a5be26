"""The guest kernel: Debian's linux-source-6.1 with our patches, ``make tinyconfig``, our fragment on
top, ``vmlinux``.

The uncompressed ``vmlinux`` carries a PVH entry note, so QEMU boots it directly (no bootloader,
no legacy BIOS path).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from ..errors import AssetError
from . import cache
from .progress import Progress

RECIPE = "kernel-2"  # bump when the build steps change
FRAGMENT = "kernel.config"
PATCHES = "kernel-patches"  # applied in name order with ``patch -p1``
ARTIFACT = "vmlinux"
LINK = "vmlinux"
# Objects compiled for this configuration, for the progress estimate; the real count is recorded.
EXPECTED_OBJECTS = 1553


def fragment_text() -> str:
    return resources.files(__package__).joinpath(FRAGMENT).read_text()


def patches() -> list[tuple[str, str]]:
    """(name, text) of each patch applied to the source, in order."""
    found = [p for p in resources.files(__package__).joinpath(PATCHES).iterdir() if p.name.endswith(".patch")]
    return [(p.name, p.read_text()) for p in sorted(found, key=lambda p: p.name)]


def parse_fragment(text: str) -> dict[str, str]:
    """CONFIG_X -> value ("n" for ``=n`` and ``# CONFIG_X is not set``)."""
    opts: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        m = re.fullmatch(r"# (CONFIG_\w+) is not set", line)
        if m:
            opts[m.group(1)] = "n"
        elif line.startswith("CONFIG_"):
            key, _, value = line.partition("=")
            opts[key] = value
    return opts


def missing_options(fragment: str, dotconfig: str) -> list[str]:
    """Options the fragment asks for that the final .config does not have (dependencies unmet)."""
    have = parse_fragment(dotconfig)
    return [f"{k}={v} (got {have.get(k, 'n')})" for k, v in parse_fragment(fragment).items() if have.get(k, "n") != v]


def cache_key(source: str) -> str:
    cc = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    applied = [part for name, text in patches() for part in (name, text)]
    return cache.digest([RECIPE, fragment_text(), *applied, cache.file_digest(source), cc])


def ensure(assets_dir: str, source: str, jobs: int | None = None) -> Path:
    """The cached kernel for these inputs, built first if need be."""
    if not os.path.isfile(source):
        raise AssetError(f"kernel source {source} not found (install Debian's linux-source-6.1)")
    key = cache_key(source)
    hit = cache.lookup(assets_dir, "kernel", key, ARTIFACT)
    if hit:
        cache.point(assets_dir, LINK, hit)
        return hit
    return build(assets_dir, source, key, jobs or (os.cpu_count() or 1) + 1)


def _make(src: Path, *args: str, log) -> None:
    result = subprocess.run(["make", "-C", str(src), *args], stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise AssetError(f"kernel build failed: make {' '.join(args)} (see {log.name})")


def build(assets_dir: str, source: str, key: str, jobs: int) -> Path:
    os.makedirs(assets_dir, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".kernel-", dir=assets_dir))
    work = Path(tempfile.mkdtemp(prefix=".kernel-src-", dir=assets_dir))
    progress = Progress("kernel", EXPECTED_OBJECTS)
    try:
        progress.step(f"extracting {os.path.basename(source)}")
        subprocess.run(["tar", "-xf", source, "-C", str(work)], check=True)
        (src,) = [p for p in work.iterdir() if p.is_dir()]
        with open(Path(assets_dir) / "kernel-build.log", "w") as log:
            for name, text in patches():
                progress.step(f"applying {name}")
                _apply(src, name, text, log)
            progress.step("configuring: tinyconfig + pellucid fragment")
            _make(src, "tinyconfig", log=log)
            (src / "pellucid.config").write_text(fragment_text())
            merged = subprocess.run([str(src / "scripts/kconfig/merge_config.sh"), "-m", ".config", "pellucid.config"],
                                    cwd=src, stdout=log, stderr=subprocess.STDOUT)
            if merged.returncode != 0:
                raise AssetError("kernel config merge failed")
            _make(src, "olddefconfig", log=log)
            missing = missing_options(fragment_text(), (src / ".config").read_text())
            if missing:
                raise AssetError("kernel config: options not applied: " + ", ".join(missing))
            progress.step(f"compiling vmlinux with {jobs} jobs")
            objects = _compile(src, jobs, log, progress)
        release = (src / "include/config/kernel.release").read_text().strip()
        shutil.copy2(src / "vmlinux", staging / ARTIFACT)
        shutil.copy2(src / ".config", staging / "config")
        manifest = {"kind": "kernel", "key": key, "release": release, "recipe": RECIPE,
                    "source": source, "patches": [name for name, _ in patches()], "objects": objects}
        path = cache.commit(assets_dir, "kernel", key, staging, manifest, LINK, ARTIFACT)
        progress.finish(f"built {release} -> {path}")
        return path
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)


def _apply(src: Path, name: str, text: str, log) -> None:
    log.write(f"applying {name}\n")
    log.flush()
    result = subprocess.run(["patch", "-p1", "--batch", "--forward", "--no-backup-if-mismatch"], cwd=src,
                            input=text.encode(), stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise AssetError(f"kernel patch {name} does not apply to {src.name} (see {log.name})")


def _compile(src: Path, jobs: int, log, progress: Progress) -> int:
    proc = subprocess.Popen(["make", "-C", str(src), f"-j{jobs}", "vmlinux"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    objects = 0
    assert proc.stdout is not None
    for line in proc.stdout:
        log.write(line)
        if line.lstrip().startswith("CC "):
            objects += 1
            progress.advance(1, line.split()[-1])
    if proc.wait() != 0:
        log.flush()
        raise AssetError(f"kernel build failed (see {log.name})")
    return objects
