"""VM templates with real QEMU: a template built once, clones started from it that answer, have
secrets of their own, mount the 9p share, get a working NIC, and cannot change the template."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pytest

from pellucid import config as config_mod
from pellucid import messages, protocol
from pellucid.oci.default_spec import default_spec
from pellucid.runtime.guest_config import translate
from pellucid.vm import template as tpl
from pellucid.vm.assets import resolve
from pellucid.vm.machine import VM
from pellucid.vm.qemu_args import Nic, Share
from pellucid.vm.spec import make_spec

from .conftest import qemu_pids

pytestmark = pytest.mark.vm

TAG = "sandbox"
TIMEOUT = 240.0


@pytest.fixture(scope="module")
def cfg() -> config_mod.Config:
    assets = os.environ.get("PELLUCID_TEST_ASSETS_DIR")
    return config_mod.parse(f'[assets]\ndir = "{assets}"\n' if assets else "")


@pytest.fixture(scope="module")
def store():
    """A template store of the tests' own on tmpfs, removed afterwards."""
    path = tempfile.mkdtemp(prefix="pellucid-test-templates-", dir="/dev/shm")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def factory(store) -> tpl.Factory:
    return tpl.Factory(store, boot_timeout=TIMEOUT)


@pytest.fixture(scope="module")
def base_spec(cfg):
    return make_spec(cfg, resolve(cfg), "tcg", shares=(Share(TAG, "/nonexistent"),))


@pytest.fixture(scope="module")
def template(factory, base_spec) -> tpl.Template:
    return factory.ensure(base_spec)


@pytest.fixture
def clones(factory, base_spec, template, tmp_path, busybox_template):
    """start(nics=()) -> a running clone with its own share directory (busybox rootfs ready in it)."""
    started: list[VM] = []

    def start(nics: tuple[Nic, ...] = ()) -> tuple[VM, Path]:
        n = len(started)
        share = tmp_path / f"share{n}"
        share.mkdir()
        workdir = tmp_path / f"vm{n}"
        workdir.mkdir()
        spec = replace(base_spec, name=f"pellucid-clone{n}", shares=(Share(TAG, str(share)),), nics=nics)
        vm = factory.start_clone(spec, str(workdir), template=template)
        started.append(vm)
        return vm, share

    yield start
    for vm in started:
        vm.stop()
    assert qemu_pids(tmp_path) == set()


def run(vm: VM, share: Path, busybox: Path, cid: str, script: str, timeout: float = TIMEOUT) -> tuple[int, bytes]:
    """Run `sh -c script` in a container of the clone (rootfs on the 9p share); its status and stdout."""
    if not (share / cid).exists():
        shutil.copytree(busybox, share / cid / "rootfs", symlinks=True)
    config = default_spec()
    config["process"].update(args=["sh", "-c", script], terminal=False)
    config["root"]["readonly"] = False
    guest_cfg, _ = translate(config, str(share), cid, TAG)
    out = bytearray()
    exits: list[int] = []
    vm.agent.on_stream = lambda id, data: out.extend(data) if protocol.split_stream_id(id)[1] == protocol.STDOUT else None

    def on_event(msg: dict) -> None:
        event = messages.read_event(msg)
        if isinstance(event, messages.Exit):
            exits.append(event.status)

    vm.agent.on_event = on_event
    vm.agent.call(messages.MountShare(TAG), timeout=timeout)
    vm.agent.call(messages.CreateContainer(cid, guest_cfg), timeout=timeout)
    vm.agent.call(messages.StartContainer(cid), timeout=timeout)
    deadline = time.monotonic() + timeout
    while not exits:
        assert time.monotonic() < deadline, "the container did not exit"
        vm.agent.call(messages.Ping(), timeout=timeout)  # pumps the channel: stream frames and events arrive meanwhile
        time.sleep(0.05)
    vm.agent.call(messages.DeleteContainer(cid), timeout=timeout)
    return exits[0], bytes(out)


def digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 << 20):
            h.update(chunk)
    return h.hexdigest()


def test_the_template_is_private_and_checksummed(template, store):
    assert os.stat(store).st_mode & 0o777 == 0o700
    for path in (template.ram, template.state, os.path.join(template.dir, "manifest.json")):
        assert os.stat(path).st_mode & 0o777 == 0o600
    assert tpl.problems(template, full=True) == []
    assert os.path.getsize(template.ram) == template.manifest["memory_mib"] << 20
    assert 0 < template.manifest["state_bytes"] < 4 << 20  # device state only: the RAM stays in its file


def test_two_clones_answer_with_their_own_boot_ids_and_random_bytes(clones, busybox_template, template):
    """Both clones resume from the same instant; each is reseeded before anything reads the RNG."""
    a, share_a = clones()
    b, share_b = clones()
    assert a.agent.call(messages.Ping()).uptime_ms > 0 and b.agent.call(messages.Ping()).uptime_ms > 0
    assert a.hello.boot_id and b.hello.boot_id and a.hello.boot_id != b.hello.boot_id
    assert a.hello.rootfs_dax and a.hello.kernel == template.manifest["guest_kernel"]
    script = "head -c 64 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; cat /proc/sys/kernel/random/boot_id"
    status_a, out_a = run(a, share_a, busybox_template, "c1", script)
    status_b, out_b = run(b, share_b, busybox_template, "c1", script)
    assert status_a == status_b == 0
    random_a, boot_a = out_a.decode().split()
    random_b, boot_b = out_b.decode().split()
    assert len(random_a) == len(random_b) == 128 and random_a != random_b
    assert (boot_a, boot_b) == (a.hello.boot_id, b.hello.boot_id)


def test_a_clone_that_writes_all_its_memory_leaves_the_template_unchanged(clones, busybox_template, template):
    """A container fills most of the guest's free RAM with random bytes; the template's file is as built."""
    before = digest(template.ram)
    assert before == template.manifest["ram_sha256"]
    vm, share = clones()
    # dd's buffer is written by each read: its pages become the clone's own (copy-on-write).
    free_kib = "$(awk '/MemAvailable/ {print $2}' /proc/meminfo)"
    status, out = run(vm, share, busybox_template, "fill",
                      f"n=$(( {free_kib} * 85 / 100 / 1024 )); dd if=/dev/urandom of=/dev/null bs=${{n}}M count=1 "
                      "2>&1 | tail -1; echo $n")
    assert status == 0, out
    assert int(out.split()[-1]) > 100  # MiB written: most of a 256 MiB guest
    vm.stop()
    assert digest(template.ram) == before
    assert tpl.problems(template, full=True) == []


def test_a_clone_mounts_its_9p_share(clones, busybox_template):
    """The template never mounted 9p (that would block its migration); a clone mounts the container's
    share, runs a container whose root is on it, and both sides see each other's files."""
    vm, share = clones()
    shutil.copytree(busybox_template, share / "c9p" / "rootfs", symlinks=True)
    (share / "c9p" / "rootfs" / "from-host").write_text("hello from the host\n")
    status, out = run(vm, share, busybox_template, "c9p", "cat /from-host; echo written > /from-guest")
    assert (status, out) == (0, b"hello from the host\n")
    assert (share / "c9p" / "rootfs" / "from-guest").read_text() == "written\n"


TUNSETIFF, IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x400454CA, 0x0002, 0x1000, 0x4000


@pytest.fixture
def netns_with_tap():
    """A network namespace of the test's own holding a tap (169.254.91.1/24); the tap's fd for QEMU."""
    name = f"pltpl{os.getpid() % 100000}"
    ns = f"pltpl-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
        subprocess.run(["ip", "link", "set", name, "netns", ns], check=True)
        for cmd in (["ip", "addr", "add", "169.254.91.1/24", "dev", name], ["ip", "link", "set", name, "up"]):
            subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True)
        yield ns, fd
    finally:
        os.close(fd)
        subprocess.run(["ip", "netns", "delete", ns], check=False)


def test_a_clone_gets_the_containers_nic(clones, netns_with_tap):
    """The template's NIC slot had no backend; the clone's is the container's tap, with the container's
    MAC given by the agent: the guest answers ping from the tap's namespace."""
    ns, tap_fd = netns_with_tap
    mac = "02:42:a9:fe:5b:02"
    vm, _ = clones(nics=(Nic(mac=mac, fd=tap_fd),))
    result = vm.agent.call(messages.ConfigureNetwork(nics=[messages.Nic(
        name="eth0", mac=mac, mtu=1500, addresses=[messages.Address(family=4, address="169.254.91.2", prefixlen=24)])]),
        timeout=TIMEOUT)
    assert result.interfaces == ["eth0"]
    ping = subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "3", "-W", "20", "169.254.91.2"],
                          capture_output=True, text=True, timeout=120)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    neigh = subprocess.run(["ip", "netns", "exec", ns, "ip", "neigh", "show", "169.254.91.2"],
                           capture_output=True, text=True).stdout
    assert mac in neigh  # the guest answers with the container's MAC, not the template slot's


def test_concurrent_first_builders_wait_for_one_build(cfg, base_spec, tmp_path):
    """Two processes need the same missing template at once: one builds it, the other waits and uses it."""
    store = tempfile.mkdtemp(prefix="pellucid-test-templates-", dir="/dev/shm")
    try:
        script = ("import sys; from pellucid import config; from pellucid.vm import template as tpl; "
                  "from pellucid.vm.assets import resolve; from pellucid.vm.spec import make_spec; "
                  "from pellucid.vm.qemu_args import Share; "
                  f"cfg = config.parse({cfg_text(cfg)!r}); "
                  f"t = tpl.Factory({store!r}, boot_timeout={TIMEOUT}).ensure("
                  f"make_spec(cfg, resolve(cfg), 'tcg', shares=(Share({TAG!r}, '/x'),))); "
                  "print(t.key, t.manifest['built_at'])")
        procs = [subprocess.Popen([os.sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
                 for _ in range(2)]
        outs = [p.communicate(timeout=600)[0].split() for p in procs]
        assert all(p.returncode == 0 for p in procs)
        assert outs[0] == outs[1]  # same key, same build
        assert [n for n in os.listdir(store) if not n.startswith(".")] == [outs[0][0]]
    finally:
        shutil.rmtree(store, ignore_errors=True)


def cfg_text(cfg: config_mod.Config) -> str:
    return f'[assets]\ndir = "{cfg.assets.dir}"\n'
