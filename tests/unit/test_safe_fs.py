"""Untrusted trees: mount points made in a read-only root, and bind targets made in a VM's share
that a compromised guest has written to. Needs root (bind mounts), as the runtime does."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from pellucid.errors import ContainerError
from pellucid.mountinfo import mounts_under
from pellucid.runtime import guest_config, mounts, safe_fs
from pellucid.runtime.guest_config import Bind


def snapshot(path: Path) -> dict[str, str]:
    """Every entry below ``path`` and what it is (links by target), to compare before and after."""
    out = {}
    for entry in sorted(path.rglob("*")):
        out[str(entry)] = f"link:{os.readlink(entry)}" if entry.is_symlink() else ("dir" if entry.is_dir() else "file")
    return out


def test_mount_points_of_a_read_only_cri_sandbox(tmp_path: Path) -> None:
    """containerd's sandbox: only the points on the rootfs itself, files for file binds."""
    (tmp_path / "resolv.conf").write_text("")
    (tmp_path / "shm").mkdir()
    config = {"root": {"path": "rootfs", "readonly": True}, "mounts": [
        {"destination": "/proc", "type": "proc"}, {"destination": "/dev", "type": "tmpfs"},
        {"destination": "/dev/pts", "type": "devpts"}, {"destination": "/dev/shm", "type": "bind",
                                                        "source": str(tmp_path / "shm"), "options": ["rbind"]},
        {"destination": "/sys", "type": "sysfs"}, {"destination": "/sys/fs/cgroup", "type": "cgroup"},
        {"destination": "/etc/resolv.conf", "type": "bind", "source": str(tmp_path / "resolv.conf"),
         "options": ["rbind", "ro"]}]}
    assert guest_config.mount_points(config, str(tmp_path)) == [
        ("/proc", True), ("/dev", True), ("/sys", True), ("/etc/resolv.conf", False)]
    config["root"]["readonly"] = False
    assert guest_config.mount_points(config, str(tmp_path)) == []


def test_mount_points_made_in_an_empty_root(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (rootfs / "pause").write_text("")
    safe_fs.make_mount_points(str(rootfs), [("/proc", True), ("/dev", True), ("/etc/resolv.conf", False)])
    assert (rootfs / "proc").is_dir() and (rootfs / "dev").is_dir()
    assert (rootfs / "etc/resolv.conf").is_file()
    safe_fs.make_mount_points(str(rootfs), [("/proc", True)])  # again: what exists stays


def test_mount_points_never_leave_the_root(tmp_path: Path) -> None:
    """Symlinks in the image resolve inside the rootfs, as the container sees them, never on the host."""
    rootfs, outside = tmp_path / "rootfs", tmp_path / "outside"
    rootfs.mkdir()
    outside.mkdir()
    (rootfs / "etc").symlink_to(str(outside))  # absolute: inside the root it means rootfs/<outside>
    (rootfs / "proc").symlink_to("../../outside")
    before = snapshot(outside)
    with pytest.raises(ContainerError, match="cannot create mount point /etc/resolv.conf"):
        safe_fs.make_mount_points(str(rootfs), [("/etc/resolv.conf", False)])
    (rootfs / "outside").mkdir()
    safe_fs.make_mount_points(str(rootfs), [("/proc/self", True)])  # ../.. stops at the root
    assert (rootfs / "outside/self").is_dir()
    assert snapshot(outside) == before


@pytest.fixture
def share(tmp_path: Path):
    share = tmp_path / "shared"
    share.mkdir()
    yield share
    for point in mounts_under(str(tmp_path)):
        os.system(f"umount -l '{point}'")


def volumes(tmp_path: Path) -> tuple[Path, list[Bind]]:
    rootfs, volume, single = tmp_path / "rootfs", tmp_path / "volume", tmp_path / "hosts"
    rootfs.mkdir()
    volume.mkdir()
    (volume / "data").write_text("volume")
    single.write_text("hosts")
    return rootfs, [Bind("", "rootfs", True, True), Bind(str(volume), "mounts/0", True, True),
                    Bind(str(single), "mounts/1", False, False)]


def test_binds_made_and_removed(tmp_path: Path, share: Path) -> None:
    rootfs, binds = volumes(tmp_path)
    mounts.make_binds(str(share / "c1"), str(rootfs), binds)
    assert (share / "c1/mounts/0/data").read_text() == "volume"
    with pytest.raises(OSError) as err:
        (share / "c1/mounts/0/new").write_text("")
    assert err.value.errno == errno.EROFS
    assert (share / "c1/mounts/1").read_text() == "hosts"
    mounts.unshare(str(share / "c1"))
    assert mounts_under(str(share)) == [] and not (share / "c1").exists()
    assert (tmp_path / "volume/data").read_text() == "volume"


def test_a_compromised_guest_cannot_lead_binds_out_of_the_share(tmp_path: Path, share: Path) -> None:
    """Guest root writes the share over 9p: a directory planted for the next container's id, links
    where the host will make its targets (into a host directory, and dangling): the host refuses,
    and nothing outside the share changes."""
    rootfs, binds = volumes(tmp_path)
    host_dir = tmp_path / "etc-cron.d"
    host_dir.mkdir()
    (share / "c2/mounts").mkdir(parents=True)
    (share / "c2/mounts/0").symlink_to(str(host_dir))
    (share / "c2/mounts/1").symlink_to(str(tmp_path / "created-by-host"))
    (share / "c2/rootfs").symlink_to(str(host_dir))
    before = snapshot(tmp_path)
    with pytest.raises(ContainerError, match="exists"):
        mounts.make_binds(str(share / "c2"), str(rootfs), binds)
    assert mounts_under(str(tmp_path)) == []
    assert snapshot(tmp_path) == before

    # The race: links planted after the host made the container's directory.
    top = os.open(share, os.O_PATH | os.O_DIRECTORY)
    try:
        os.mkdir("c3", dir_fd=top)
        (share / "c3/mounts").symlink_to(str(host_dir))
        (share / "c3/rootfs").symlink_to(str(tmp_path / "dangling"))
        c3 = safe_fs.open_dir(top, "c3", safe_fs.BENEATH)
        for bind in binds:
            with pytest.raises(OSError) as err:
                safe_fs.make_path(c3, bind.name, bind.is_dir, safe_fs.BENEATH)
            assert err.value.errno == errno.ELOOP
        os.close(c3)
    finally:
        os.close(top)
    assert not (tmp_path / "dangling").exists() and list(host_dir.iterdir()) == []

    # Removal after the guest moved a volume's directory away and left a link in its place.
    mounts.make_binds(str(share / "c4"), str(rootfs), binds)
    os.rename(share / "c4/mounts", share / "moved")
    (share / "c4/mounts").symlink_to(str(host_dir))
    mounts.unshare(str(share / "c4"))
    assert list(host_dir.iterdir()) == [] and (tmp_path / "volume/data").read_text() == "volume"
