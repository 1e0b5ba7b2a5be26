"""Content-addressed asset cache: ``DIR/<kind>-<hash>/`` holds one build; ``DIR/<link>`` points at the newest."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterable


def digest(parts: Iterable[bytes | str]) -> str:
    """A short hex hash of the inputs, each length-prefixed so that concatenations cannot collide."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()[:16]


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def entry_dir(root: str | os.PathLike, kind: str, key: str) -> Path:
    return Path(root) / f"{kind}-{key}"


def lookup(root: str | os.PathLike, kind: str, key: str, artifact: str) -> Path | None:
    """The cached artifact for these inputs, if a complete build is there."""
    d = entry_dir(root, kind, key)
    if (d / "manifest.json").is_file() and (d / artifact).is_file():
        return d / artifact
    return None


def commit(root: str | os.PathLike, kind: str, key: str, staging: Path, manifest: dict,
           link: str, artifact: str) -> Path:
    """Move a finished build from ``staging`` into the cache and point ``root/link`` at it."""
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    final = entry_dir(root, kind, key)
    if final.exists():
        shutil.rmtree(final)
    os.rename(staging, final)
    point(root, link, final / artifact)
    prune(root, kind, keep=final.name)
    return final / artifact


def prune(root: str | os.PathLike, kind: str, keep: str) -> None:
    """Remove older builds of ``kind``: QEMU processes still mapping an old image keep their pages."""
    for entry in Path(root).glob(f"{kind}-*"):
        if entry.name != keep and entry.is_dir() and (entry / "manifest.json").exists():
            shutil.rmtree(entry, ignore_errors=True)


def point(root: str | os.PathLike, link: str, artifact: Path) -> None:
    """Make ``root/link`` point at ``artifact`` (atomically, relative), unless it already does."""
    path = Path(root) / link
    target = f"{artifact.parent.name}/{artifact.name}"
    if path.is_symlink() and os.readlink(path) == target:
        return
    tmp = Path(root) / f".{link}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, path)


def manifest_of(artifact: str | os.PathLike) -> dict:
    """The manifest beside a cached artifact (following the ``root/link`` symlink), or {}."""
    try:
        real = Path(os.path.realpath(artifact))
        return json.loads((real.parent / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
