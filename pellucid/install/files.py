"""Editing a configuration file safely: read, transform, show the diff, back up, write atomically."""

from __future__ import annotations

import difflib
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

from . import InstallError

NEW_FILE_MODE = 0o644
NEW_DIR_MODE = 0o755


@dataclass
class Outcome:
    """What an edit did (or, with dry_run, would do) to one file."""

    path: str
    changed: bool
    diff: str = ""
    backup: str = ""
    removed: bool = False


def read(path: str) -> str | None:
    """The file's text, or None if it does not exist."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise InstallError(f"cannot read {path}: {err}") from None


def end_with_one_newline(text: str) -> str:
    """Without the blank lines at the end of the file (a TOML library leaves there the blank line
    it put before a table it appended, once that table is removed again)."""
    return text.rstrip("\n \t") + "\n" if text.strip() else ""


def unified_diff(path: str, old: str | None, new: str | None) -> str:
    return "".join(difflib.unified_diff(
        (old or "").splitlines(keepends=True), (new or "").splitlines(keepends=True),
        fromfile=path if old is not None else "/dev/null", tofile=path if new is not None else "/dev/null"))


def backup_path(path: str) -> str:
    """A timestamped name beside the file; for a file in a drop-in directory (`*.d`), beside that
    directory instead, where the engine will not read it as configuration."""
    directory, name = os.path.split(path)
    if directory.endswith(".d"):
        directory = os.path.dirname(directory)
    base = os.path.join(directory, f"{name}.pellucid-backup-{time.strftime('%Y%m%dT%H%M%S')}")
    candidate, n = base, 1
    while os.path.lexists(candidate):
        candidate, n = f"{base}.{n}", n + 1
    return candidate


def write_atomic(path: str, text: str, like: str | None = None) -> None:
    """Replace ``path`` by ``text`` in one rename, with the mode and owner of ``like`` (the file
    being replaced), or 0644 for a new file; the data is on disk before the rename."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=NEW_DIR_MODE, exist_ok=True)
    st = os.stat(like) if like and os.path.exists(like) else None
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".pellucid-tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), (st.st_mode & 0o7777) if st else NEW_FILE_MODE)
            if st and (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                os.fchown(f.fileno(), st.st_uid, st.st_gid)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy(src: str, dst: str) -> None:
    """A byte-for-byte copy of ``src`` with its mode, written atomically."""
    st = os.stat(src)
    with open(src, "rb") as f:
        data = f.read()
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, st.st_mode & 0o7777)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def update(path: str, transform: Callable[[str | None], str | None], dry_run: bool = False) -> Outcome:
    """Apply ``transform`` (old text or None if absent -> new text, or None to remove the file).

    Nothing is written when the text does not change or with ``dry_run``; otherwise the old file is
    backed up first. A symbolic link is followed: the file it names is the one replaced.
    """
    path = os.path.realpath(path) if os.path.islink(path) else path
    old = read(path)
    new = transform(old)
    if new == old:
        return Outcome(path, changed=False)
    outcome = Outcome(path, changed=True, diff=unified_diff(path, old, new), removed=new is None)
    if dry_run:
        return outcome
    try:
        if old is not None:
            outcome.backup = backup_path(path)
            _copy(path, outcome.backup)
        if new is None:
            os.unlink(path)
            _fsync_dir(os.path.dirname(path) or ".")
        else:
            write_atomic(path, new, like=path)
    except OSError as err:
        raise InstallError(f"cannot write {path}: {err}") from None
    return outcome
