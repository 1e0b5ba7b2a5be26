"""The content-addressed asset cache and the kernel fragment checks."""

import json
import os

import pytest

from pellucid.build import cache, kernel
from pellucid.errors import AssetError


def test_digest_separates_parts():
    assert cache.digest(["ab", "c"]) != cache.digest(["a", "bc"])
    assert cache.digest(["x"]) == cache.digest([b"x"])


def test_commit_lookup_and_link(tmp_path):
    assert cache.lookup(tmp_path, "kernel", "k1", "vmlinux") is None
    staging = tmp_path / ".staging"
    staging.mkdir()
    (staging / "vmlinux").write_bytes(b"ELF")
    path = cache.commit(tmp_path, "kernel", "k1", staging, {"release": "6.1"}, "vmlinux", "vmlinux")
    assert path == tmp_path / "kernel-k1" / "vmlinux"
    assert cache.lookup(tmp_path, "kernel", "k1", "vmlinux") == path
    assert os.readlink(tmp_path / "vmlinux") == "kernel-k1/vmlinux"
    assert cache.manifest_of(tmp_path / "vmlinux") == {"release": "6.1"}
    # a second build moves the link
    staging2 = tmp_path / ".staging2"
    staging2.mkdir()
    (staging2 / "vmlinux").write_bytes(b"ELF2")
    cache.commit(tmp_path, "kernel", "k2", staging2, {}, "vmlinux", "vmlinux")
    assert os.readlink(tmp_path / "vmlinux") == "kernel-k2/vmlinux"
    assert (tmp_path / "vmlinux").read_bytes() == b"ELF2"
    assert not path.exists()  # the older build is pruned


def test_incomplete_build_is_not_a_hit(tmp_path):
    d = tmp_path / "image-k"
    d.mkdir()
    (d / "root.img").write_bytes(b"")
    assert cache.lookup(tmp_path, "image", "k", "root.img") is None  # no manifest: interrupted build
    (d / "manifest.json").write_text(json.dumps({}))
    assert cache.lookup(tmp_path, "image", "k", "root.img") == d / "root.img"


def test_kernel_fragment_is_checked_against_the_final_config():
    frag = "CONFIG_A=y\nCONFIG_B=n\n# CONFIG_C is not set\nCONFIG_D=64\n"
    final = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\nCONFIG_D=64\n"
    assert kernel.missing_options(frag, final) == ["CONFIG_C=n (got y)"]
    assert kernel.missing_options("CONFIG_X=y\n", "") == ["CONFIG_X=y (got n)"]


def test_our_fragment_asks_for_what_the_design_needs():
    opts = kernel.parse_fragment(kernel.fragment_text())
    for needed in ("CONFIG_PVH", "CONFIG_VIRTIO_PMEM", "CONFIG_FS_DAX", "CONFIG_NET_9P_VIRTIO", "CONFIG_9P_FS",
                   "CONFIG_VIRTIO_CONSOLE", "CONFIG_VIRTIO_NET", "CONFIG_OVERLAY_FS", "CONFIG_SECCOMP_FILTER",
                   "CONFIG_PID_NS", "CONFIG_CGROUPS", "CONFIG_DEVTMPFS", "CONFIG_EXT4_FS", "CONFIG_VIRTIO_MMIO",
                   # pods: iptables with both backends, NAT for IPv4 and IPv6, FUSE, virtio-fs
                   "CONFIG_IP_NF_NAT", "CONFIG_IP6_NF_NAT", "CONFIG_NF_TABLES", "CONFIG_NFT_COMPAT", "CONFIG_NFT_NAT",
                   "CONFIG_NETFILTER_XT_TARGET_REDIRECT", "CONFIG_FUSE_FS", "CONFIG_VIRTIO_FS"):
        assert opts[needed] == "y", needed
    assert "m" not in opts.values(), "the guest loads no modules: everything is built in"
    assert opts["CONFIG_RTC_CLASS"] == "n"
    assert "CONFIG_MODULES" not in opts or opts["CONFIG_MODULES"] == "n"


def test_kernel_patches_are_in_the_cache_key(tmp_path, monkeypatch):
    source = tmp_path / "linux-source-6.1.tar.xz"
    source.write_bytes(b"tar")
    assert [name for name, _ in kernel.patches()] == ["9p-loose-write-through.patch"]
    shipped = kernel.cache_key(str(source))
    monkeypatch.setattr(kernel, "patches", lambda: [("9p-loose-write-through.patch", "another text")])
    assert kernel.cache_key(str(source)) != shipped
    monkeypatch.setattr(kernel, "patches", lambda: [])
    assert kernel.cache_key(str(source)) != shipped


def test_kernel_patch_applies_or_the_build_stops(tmp_path):
    src = tmp_path / "linux-6.1"
    (src / "fs").mkdir(parents=True)
    (src / "fs/a.c").write_text("one\ntwo\nthree\n")
    patch = "--- a/fs/a.c\n+++ b/fs/a.c\n@@ -1,3 +1,3 @@\n one\n-two\n+deux\n three\n"
    with open(tmp_path / "build.log", "w") as log:
        kernel._apply(src, "x.patch", patch, log)
        assert (src / "fs/a.c").read_text() == "one\ndeux\nthree\n"
        with pytest.raises(AssetError, match="x.patch does not apply"):
            kernel._apply(src, "x.patch", patch, log)  # already applied: refused, not reversed
    assert (src / "fs/a.c").read_text() == "one\ndeux\nthree\n"
