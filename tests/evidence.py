"""A failed test keeps its evidence.

Fixtures name what would explain a failure with :func:`keep_on_failure` (a VM's logs and guest
console, the runtime's state directory and its --log file, a client daemon's log). When a test's
setup or call fails, this plugin copies those paths as they are at that moment -- before fixture
teardown runs ``delete --force`` or stops the daemons, which removes them -- into
``<repo>/test-evidence/<test>/`` (or ``$PELLUCID_TEST_EVIDENCE_DIR/<test>/``), and names that
directory in an "evidence" section of the failure report.

The copy never follows a symlink and never enters a mount point (a VM's directory holds the 9p
share, ``vm/shared``, with container root filesystems bind-mounted in it, and the network
namespace's bind mount); ``vm/shared`` is not entered even when nothing is mounted there. Sockets,
FIFOs and devices are skipped, and each file is cut to its last MAX_FILE bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
from pathlib import Path

import pytest

from pellucid.mountinfo import mounts_under

ENV = "PELLUCID_TEST_EVIDENCE_DIR"
DEFAULT_DIR = Path(__file__).resolve().parents[1] / "test-evidence"
MAX_FILE = 8 << 20
MAX_NAME = 120
SHARE = ("vm", "shared")  # <vm dir>/shared: the host side of the guest's 9p share

_KEPT = pytest.StashKey[list[Path]]()


def keep_on_failure(node: pytest.Item | pytest.Collector, *paths: Path | str) -> None:
    """If a test at or below ``node`` fails, copy each path (a file or a directory, whatever it
    holds then) into the test's evidence directory, under its own name. A fixture passes
    ``request.node``; a module-scoped one thereby covers every test of its module."""
    node.stash.setdefault(_KEPT, []).extend(Path(p) for p in paths)


def evidence_dir(nodeid: str) -> Path:
    """The directory for one test: its node id made a safe file name, unique when shortened."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_.") or "test"
    if len(name) > MAX_NAME:
        name = f"{name[:MAX_NAME]}-{hashlib.sha256(nodeid.encode()).hexdigest()[:12]}"
    return Path(os.environ.get(ENV) or DEFAULT_DIR) / name


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    report = outcome.get_result()
    if report.when == "teardown" or not report.failed:
        return
    kept = [entry for node in item.listchain() for entry in node.stash.get(_KEPT, [])]
    if not kept:
        return
    dest = evidence_dir(item.nodeid)
    try:
        notes = save(kept, dest)
    except OSError as e:  # the test's own failure is what the report is about
        report.sections.append(("evidence", f"not kept in {dest}: {e}"))
        return
    report.sections.append(("evidence", f"kept in {dest}\n" + "".join(f"  {n}\n" for n in notes)))


def save(kept: list[Path], dest: Path) -> list[str]:
    """Copy each path into ``dest`` (emptied first) under its name, made unique; returns one line
    per path copied and per problem met."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    notes: list[str] = []
    used: set[str] = set()
    for path in dict.fromkeys(kept):
        name, n = path.name, 1
        while name in used:
            n += 1
            name = f"{path.name}-{n}"
        used.add(name)
        try:
            st = os.lstat(path)
        except OSError:
            notes.append(f"{name}: {path} is gone")
            continue
        real = os.path.realpath(path)
        mounts = set(mounts_under(real))
        if real in mounts:
            notes.append(f"{name}: {path} is a mount point, not entered")
        elif stat.S_ISDIR(st.st_mode):
            notes.append(f"{name}: {path}")
            _copy_dir(path, dest / name, mounts, notes)
        else:
            notes.append(f"{name}: {path}")
            _copy_entry(path, dest / name, st, notes)
    return notes


def _copy_dir(src: Path, dst: Path, mounts: set[str], notes: list[str]) -> None:
    dst.mkdir()
    try:
        entries = sorted(os.scandir(src), key=lambda e: e.name)
    except OSError as e:
        notes.append(f"  not listed: {src}: {e.strerror}")
        return
    for entry in entries:
        path = Path(entry.path)
        if os.path.realpath(path) in mounts or (path.parent.name, path.name) == SHARE:
            notes.append(f"  not entered: {path} (a mount or the 9p share)")
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue  # removed meanwhile
        if stat.S_ISDIR(st.st_mode):
            _copy_dir(path, dst / entry.name, mounts, notes)
        else:
            _copy_entry(path, dst / entry.name, st, notes)


def _copy_entry(src: Path, dst: Path, st: os.stat_result, notes: list[str]) -> None:
    """A regular file (its last MAX_FILE bytes) or a symlink (as a link); anything else is skipped."""
    try:
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), dst)
        elif stat.S_ISREG(st.st_mode):
            # O_NOFOLLOW|O_NONBLOCK: if it was swapped for a link or a FIFO since the lstat, fail or don't hang.
            fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with open(fd, "rb") as f, open(dst, "wb") as out:
                if st.st_size > MAX_FILE:
                    f.seek(st.st_size - MAX_FILE)
                    notes.append(f"  cut to its last {MAX_FILE} bytes: {src}")
                out.write(f.read(MAX_FILE))
    except OSError as e:
        notes.append(f"  not copied: {src}: {e.strerror}")
