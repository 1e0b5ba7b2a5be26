"""Files stay coherent between the host and the VM, through a real dockerd, for every 9p cache mode
pellucid offers ([filesystem] cache for the rootfs, volume_cache for bind mounts).

Every check first primes the guest's cache (reads the file in the container), then changes the
file on one side, then reads it on the other. What makes a cached mode coherent is pellucid's, and
these tests hold it to it: the guest kernel writes through (pellucid's patch for cache=loose), the
guest drops its share caches before each `exec`, writes back what shared mappings dirtied before it
reports a process's exit and when the container is paused (`docker commit` pauses it).
No check waits a fixed time. Also here: the short form of bench/fs, to keep it working.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Iterator

import pytest

from tests.evidence import keep_on_failure

from . import harness
from .harness.commands import wait_for

ROOT = Path(__file__).resolve().parents[2]
PELLUCID = str(ROOT / ".venv/bin/pellucid")
ASSETS = os.environ.get("PELLUCID_TEST_ASSETS_DIR", "/var/lib/pellucid")
IMAGE = "local/busybox"
TIMEOUT = 300

# name -> (rootfs cache, volumes cache): the default first, then every mode offered for each.
CONFIGS = {"default": ("loose", "mmap"), "mmap": ("mmap", "mmap"), "none": ("none", "none"),
           "loose": ("loose", "loose")}

pytestmark = pytest.mark.clients


class Ctr:
    """A running container of one configuration, its volume (host side) mounted at /vol."""

    def __init__(self, d: harness.Dockerd, runtime: str, volume: Path) -> None:
        self.d, self.runtime, self.volume = d, runtime, volume
        self.id = d.docker("run", "-d", "--network", "none", "--runtime", runtime, "-v", f"{volume}:/vol",
                           IMAGE, "sleep", "1000000", timeout=TIMEOUT).stdout.strip()

    def sh(self, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.d.docker("exec", self.id, "sh", "-c", script, check=check, timeout=TIMEOUT)

    def read(self, path: str) -> str:
        return self.sh(f"cat {path}").stdout


@pytest.fixture(scope="module")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.Dockerd]:
    harness.need("dockerd", "containerd")
    tmp = tmp_path_factory.mktemp("files")
    runtimes = {}
    for name, (cache, volume_cache) in CONFIGS.items():
        config = tmp / f"{name}.toml"
        config.write_text(f'[assets]\ndir = "{ASSETS}"\n[hypervisor]\nboot_timeout = 180\n'
                          f'[filesystem]\ncache = "{cache}"\nvolume_cache = "{volume_cache}"\n')
        runtimes[f"pellucid-{name}"] = str(harness.configured_runtime(tmp / f"pellucid-{name}", PELLUCID, config))
    with harness.Dockerd(runtimes=runtimes, bip="169.254.78.1/24", address_pool="169.254.108.0/22") as d:
        d.import_image(harness.busybox_tarball(tmp), IMAGE)
        d.containers = {}
        yield d
        ids = d.docker("ps", "-aq", check=False).stdout.split()
        if ids:
            d.docker("rm", "-f", *ids, check=False, timeout=TIMEOUT)
    assert d.leftovers() == []


@pytest.fixture(params=list(CONFIGS))
def ctr(request: pytest.FixtureRequest, dockerd: harness.Dockerd, tmp_path_factory: pytest.TempPathFactory) -> Ctr:
    """One running container per configuration, shared by this module's checks."""
    assert dockerd.dir is not None
    keep_on_failure(request.node, *dockerd.logs(), dockerd.dir / "x")  # pellucid's VM and monitor logs
    name = request.param
    if name not in dockerd.containers:
        dockerd.containers[name] = Ctr(dockerd, f"pellucid-{name}", tmp_path_factory.mktemp(f"vol-{name}"))
    return dockerd.containers[name]


def test_docker_cp_into_a_running_container_is_seen_by_its_next_exec(ctr: Ctr, tmp_path: Path) -> None:
    ctr.sh("echo old > /cp-target")
    assert ctr.read("/cp-target") == "old\n"
    assert ctr.sh("test -e /cp-new", check=False).returncode == 1  # a lookup that found nothing
    for name, text in (("cp-target", "new, and longer\n"), ("cp-new", "fresh\n")):
        (tmp_path / name).write_text(text)
        ctr.d.docker("cp", str(tmp_path / name), f"{ctr.id}:/{name}")
    assert ctr.read("/cp-target") == "new, and longer\n"
    assert ctr.read("/cp-new") == "fresh\n"


def test_a_host_change_in_a_volume_is_seen_in_the_container(ctr: Ctr) -> None:
    f = ctr.volume / "a"
    f.write_text("one\n")
    assert ctr.read("/vol/a") == "one\n"
    with open(f, "r+") as out:  # in place: same inode, new size
        out.write("two, longer\n")
    assert ctr.read("/vol/a") == "two, longer\n"
    (ctr.volume / "a.new").write_text("three\n")
    os.rename(ctr.volume / "a.new", f)  # replaced: another inode under the same name
    assert ctr.read("/vol/a") == "three\n"


def test_a_container_change_in_a_volume_is_seen_on_the_host(ctr: Ctr) -> None:
    f = ctr.volume / "b"
    f.write_text("one\n")
    assert ctr.read("/vol/b") == "one\n"
    ctr.sh("echo two >> /vol/b && echo new > /vol/b2")
    assert f.read_text() == "one\ntwo\n"
    assert (ctr.volume / "b2").read_text() == "new\n"


def test_a_deletion_on_either_side_disappears_on_the_other(ctr: Ctr) -> None:
    (ctr.volume / "c").write_text("c\n")
    (ctr.volume / "d").write_text("d\n")
    assert ctr.read("/vol/c /vol/d") == "c\nd\n"
    os.unlink(ctr.volume / "c")
    ctr.sh("rm /vol/d")
    assert not (ctr.volume / "d").exists()
    assert ctr.sh("test -e /vol/c", check=False).returncode == 1
    assert "c" not in ctr.sh("ls /vol").stdout.split()


def _copied_out(d: harness.Dockerd, cid: str, path: str) -> bytes:
    """The file at ``path`` in container ``cid``, by `docker cp` (a tar stream on stdout)."""
    out = subprocess.run([d.docker_cli, "-H", d.host, "cp", f"{cid}:{path}", "-"], env=d.env(),
                         capture_output=True, check=True, timeout=TIMEOUT).stdout
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        member = tar.extractfile(os.path.basename(path))
        assert member is not None
        return member.read()


def test_docker_cp_out_sees_what_an_exec_wrote(ctr: Ctr) -> None:
    ctr.sh("echo before > /out-file")
    assert ctr.read("/out-file") == "before\n"
    ctr.sh("i=0; while [ $i -lt 2000 ]; do echo line $i; i=$((i+1)); done > /out-file")
    assert _copied_out(ctr.d, ctr.id, "/out-file") == "".join(f"line {i}\n" for i in range(2000)).encode()


def test_docker_cp_out_sees_what_a_running_process_wrote(ctr: Ctr) -> None:
    """Writes go through to the host as they are made (cache=loose too, by the guest kernel's
    patch): no exec, exit or pause comes between the write and `docker cp`."""
    d = ctr.d
    cid = d.docker("run", "-d", "--network", "none", "--runtime", ctr.runtime, IMAGE, "sh", "-c",
                   "i=0; while [ $i -lt 2000 ]; do echo line $i; i=$((i+1)); done > /running; echo written; "
                   "exec sleep 1000000", timeout=TIMEOUT).stdout.strip()
    try:
        wait_for(lambda: "written" in d.docker("logs", cid).stdout, TIMEOUT, "the init's write")
        assert _copied_out(d, cid, "/running") == "".join(f"line {i}\n" for i in range(2000)).encode()
    finally:
        d.docker("rm", "-f", cid, check=False, timeout=TIMEOUT)


def test_a_write_in_the_container_moves_the_files_mtime_as_it_sees_it(ctr: Ctr) -> None:
    """`make` and friends compare mtimes: a write through a cached inode must not leave the old one."""
    out = ctr.sh("touch -d @1000000000 /mtime-file && stat -c %Y /mtime-file && echo x >> /mtime-file && "
                 "stat -c %Y /mtime-file").stdout.split()
    assert out[0] == "1000000000" and int(out[1]) > 1000000000, out


def test_docker_commit_sees_what_the_init_process_wrote(ctr: Ctr) -> None:
    d = ctr.d
    cid = d.docker("run", "-d", "--network", "none", "--runtime", ctr.runtime, IMAGE, "sh", "-c",
                   "cat /etc/hostname > /dev/null; echo committed > /by-init; echo written; exec sleep 1000000",
                   timeout=TIMEOUT).stdout.strip()
    try:
        wait_for(lambda: "written" in d.docker("logs", cid).stdout, TIMEOUT, "the init's write")
        image = f"local/committed-{ctr.runtime}"
        d.docker("commit", cid, image, timeout=TIMEOUT)
        out = d.docker("run", "--rm", "--network", "none", "--runtime", "runc", image, "cat", "/by-init")
        assert out.stdout == "committed\n"
        d.docker("rmi", image, check=False)
    finally:
        d.docker("rm", "-f", cid, check=False, timeout=TIMEOUT)


def test_nothing_written_is_lost_when_the_vm_stops_after_the_process_exits(ctr: Ctr) -> None:
    d = ctr.d
    name = f"exits-{ctr.runtime}"
    d.docker("run", "--name", name, "--network", "none", "--runtime", ctr.runtime, IMAGE, "sh", "-c",
             "cat /bin/busybox > /copy; echo done > /last", timeout=TIMEOUT)
    try:
        assert _copied_out(d, name, "/last") == b"done\n"
        assert _copied_out(d, name, "/copy") == Path(harness.BUSYBOX).read_bytes()
    finally:
        d.docker("rm", "-f", name, check=False, timeout=TIMEOUT)


def test_bench_fs_short_form(tmp_path: Path) -> None:
    """bench/fs end to end with tiny sizes: every row measured for runc and one pellucid mode."""
    out = subprocess.run([str(ROOT / "bench/fs"), "--reps", "1", "--files", "5", "--megabytes", "1",
                          "--modes", "loose/mmap", "--assets-dir", ASSETS, "--json", str(tmp_path / "fs.json")],
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "rep 1/1: pellucid-loose-mmap rootfs" in out.stderr  # progress as it goes
    for row in ("find /usr, first walk", "python3 -c", "docker run --rm", "mmap, touch every page"):
        assert row in out.stdout
    results = json.loads((tmp_path / "fs.json").read_text())["results"]
    entries = results["runc"]["rootfs"]["entries"]
    assert results["pellucid-loose-mmap"]["rootfs"]["entries"] == entries and entries[0] > 1000
