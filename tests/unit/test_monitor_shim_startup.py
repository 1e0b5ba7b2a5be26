"""How the monitor and the shim start: what they read from the runtime (vm.json, the shim's
request), checked, and the ready line they answer with. No VM is booted: each case fails
before one would be."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pellucid import messages
from pellucid.errors import ContainerError, VMError
from pellucid.host_messages import MONITOR_GO, MonitorReady, Nic, ShimRequest, VMDescription
from pellucid.monitor import Monitor
from pellucid.runtime import sandbox
from pellucid.runtime.ready import read_line
from pellucid.runtime.shims import ShimHandle

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def start_monitor(vm_dir: str) -> tuple[subprocess.Popen, int, int]:
    """A monitor waiting for its go: (process, go pipe's write end, ready pipe's read end)."""
    go_r, go_w = os.pipe()
    r, w = os.pipe()
    p = subprocess.Popen([sys.executable, "-m", "pellucid.monitor", vm_dir, "--go-fd", str(go_r), "--ready-fd", str(w)],
                         pass_fds=(go_r, w), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    os.close(go_r)
    return p, go_w, r


def run_monitor(vm_dir: str) -> MonitorReady:
    p, go, r = start_monitor(vm_dir)
    os.write(go, MONITOR_GO)
    os.close(go)
    try:
        return MonitorReady.from_json(read_line(r, 30))
    finally:
        os.close(r)
        assert p.wait(30) == 1


def test_a_monitor_whose_caller_gives_up_before_go_exits_without_reading_anything(tmp_path):
    p, go, r = start_monitor(str(tmp_path))  # no vm.json: it must not be read
    os.close(go)
    try:
        assert p.wait(30) == 0
        assert read_line(r, 5) == b""
    finally:
        os.close(r)


def test_monitor_reports_a_bad_vm_description(tmp_path):
    (tmp_path / "vm.json").write_text('{"id": "c1", "vcpus": "two"}')
    ready = run_monitor(str(tmp_path))
    assert not ready.ok and "vm.json: field 'vcpus' has the wrong type" in ready.error


def test_monitor_reports_a_boot_failure(tmp_path):
    (tmp_path / "vm.json").write_text(VMDescription(id="c1", config=str(tmp_path / "missing.toml")).to_json())
    ready = run_monitor(str(tmp_path))
    assert not ready.ok and "missing.toml" in ready.error
    assert not (tmp_path / "monitor.sock").exists()


def test_monitor_reads_its_description(tmp_path):
    desc = VMDescription(id="c1", vcpus=2, netns="/run/netns/x")
    (tmp_path / "vm.json").write_text(desc.to_json())
    assert Monitor(str(tmp_path)).desc == desc
    (tmp_path / "vm.json").write_text("{")
    with pytest.raises(VMError, match="vm.json: invalid JSON"):
        Monitor(str(tmp_path))


def test_monitor_gives_qemu_a_tap_by_name_and_a_macvtap_by_fd(tmp_path):
    (tmp_path / "vm.json").write_text(VMDescription(id="c1").to_json())
    monitor = Monitor(str(tmp_path))
    tap = monitor._nic(Nic(name="eth0", mac="02:00:00:00:00:01", mtu=1400, tap="pltap0"))
    assert (tap.tap, tap.mac, tap.mtu, tap.fd) == ("pltap0", "02:00:00:00:00:01", 1400, -1)
    macvtap = monitor._nic(Nic(name="eth0", mac="02:00:00:00:00:01", mtu=1500, tap="plmvt0", device="/dev/null"))
    assert macvtap.fd >= 0 and monitor._tap_fds == [macvtap.fd]
    os.close(macvtap.fd)


def test_launch_of_a_monitor_that_fails_leaves_no_process(tmp_path):
    vm_dir = tmp_path / "c1" / "vm"
    vm_dir.mkdir(parents=True)
    monitor = sandbox.launch(str(vm_dir))
    monitor.boot(VMDescription(id="c1", config=str(tmp_path / "missing.toml")))
    with pytest.raises(VMError, match="missing.toml"):
        monitor.wait_ready(30)
    assert VMDescription.from_json((vm_dir / "vm.json").read_text()).shares[0].tag == messages.SHARE_TAG
    with pytest.raises(VMError, match="not running"):
        sandbox.connect(str(vm_dir))


def test_shim_reports_a_monitor_it_cannot_reach(tmp_path):
    shim = ShimHandle(None)
    with pytest.raises(ContainerError, match="No such file"):
        shim.send(ShimRequest(monitor=str(tmp_path / "monitor.sock"), op="exec_process", args={"id": "c1"}), 30)
    assert shim.wait() == 1


def test_shim_checks_its_request(tmp_path):
    """A request that is not a ShimRequest is refused by the shim, which says why."""
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    p = subprocess.Popen([sys.executable, "-m", "pellucid.shim", str(r), str(ready_w)], pass_fds=(r, ready_w),
                         cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(r)
    os.close(ready_w)
    os.write(w, b'{"monitor": "/x", "op": "exec_process"}')
    os.close(w)
    try:
        line = read_line(ready_r, 30)
    finally:
        os.close(ready_r)
    assert p.wait(30) == 1
    assert b"missing field 'args'" in line and b'"ok":false' in line


@pytest.fixture
def boot_fake(tmp_path, monkeypatch):
    """boot_fake(templates, clone) -> (monitor, the VMs made): the monitor boots vm.json's VM (2 vCPUs,
    384 MiB, a share, a NIC) on fake VMs; ``clone`` stands for pellucid.vm.cloning.start."""
    from pellucid.host_messages import Address, Network, Share
    from pellucid.vm import assets, cloning, machine
    from pellucid.vm.assets import Assets
    from tests.fakes import FakeVM
    # The monitor imports its boot path when it boots (it must not stay resident): patch it at its source.
    monkeypatch.setattr(assets, "resolve", lambda cfg: Assets("/k", "/i", 1 << 20, "6.1", "k", "i"))
    vms: list[FakeVM] = []
    monkeypatch.setattr(machine, "VM", lambda spec, workdir: vms.append(FakeVM(spec, workdir)) or vms[-1])
    nic = Nic(name="eth0", index=2, mac="02:42:a9:fe:4d:02", mtu=1450, tap="pltap0",
              addresses=[Address(family=4, address="169.254.77.2", prefixlen=24)])

    def boot(templates: bool, clone=None) -> tuple[Monitor, list[FakeVM]]:
        config = tmp_path / "pellucid.toml"
        config.write_text(f'[hypervisor]\naccelerator = "tcg"\nmachine = "q35"\ntemplates = {str(templates).lower()}\n'
                          f'template_dir = "{tmp_path}/templates"\n')
        if clone is not None:
            monkeypatch.setattr(cloning, "start", lambda cfg, spec, workdir: clone(spec, workdir, vms))
        desc = VMDescription(id="c1", config=str(config), vcpus=2, memory_mib=384,
                             shares=[Share(tag="sandbox", path="/s")], network=Network(nics=[nic], dns_relay=True))
        (tmp_path / "vm.json").write_text(desc.to_json())
        monitor = Monitor(str(tmp_path))
        monitor.boot()
        return monitor, vms

    boot.nic = nic
    return boot


def test_monitor_boot_hands_the_description_to_qemu_and_the_agent(boot_fake):
    """vm.json -> QEMU's spec (size, shares, NICs) and the agent's mount_share and configure_network;
    the VM's info as the ready line carries it."""
    monitor, vms = boot_fake(templates=False)
    spec = vms[0].spec
    assert (spec.vcpus, spec.memory_mib, spec.name) == (2, 384, "pellucid-c1")
    # The volumes: the same directory by a second device, mounted without the rootfs's cache.
    assert [(s.tag, s.path) for s in spec.shares] == [("sandbox", "/s"), ("volumes", "/s")]
    assert [(n.tap, n.mac, n.mtu) for n in spec.nics] == [("pltap0", "02:42:a9:fe:4d:02", 1450)]
    assert vms[0].agent_calls == [
        (messages.MountShare.OP, {"tag": "sandbox", "cache": "loose", "msize": 512000}),
        (messages.MountShare.OP, {"tag": "volumes", "cache": "mmap", "msize": 512000}),
        (messages.ConfigureNetwork.OP, {"nics": [boot_fake.nic.for_guest()], "routes": [], "dns_relay": True})]
    info = monitor.info
    assert (info.accelerator, info.vcpus, info.memory_mib, info.guest_kernel, info.boot_ms) == ("tcg", 2, 384,
                                                                                                "6.1.0-fake", 3)
    assert (info.template, info.share_cache, info.volume_cache) == ("", "loose", "mmap")
    assert MonitorReady.from_json(MonitorReady(ok=True, info=info).to_json()).info == info


def test_monitor_boot_starts_a_clone_at_its_size_class_then_mounts_and_configures(boot_fake):
    """With templates on, the VM is the clone cloning.start made (at the class size); the share is
    mounted and the network configured in the clone, as after a cold boot."""
    from dataclasses import replace

    from tests.fakes import FakeVM

    def clone(spec, workdir, vms):
        vm = FakeVM(replace(spec, memory_mib=512), workdir)
        vms.append(vm)
        vm.start()
        vm.handshake(1)
        return vm, "key1"

    monitor, vms = boot_fake(templates=True, clone=clone)
    assert len(vms) == 1 and vms[0].spec.nics[0].tap == "pltap0"
    assert [op for op, _ in vms[0].agent_calls] == [messages.MountShare.OP] * 2 + [messages.ConfigureNetwork.OP]
    assert (monitor.info.template, monitor.info.vcpus, monitor.info.memory_mib) == ("key1", 2, 512)


def test_monitor_boots_cold_when_the_vm_cannot_be_a_clone_and_says_why(boot_fake, capsys):
    from pellucid.vm.template import TemplateError

    def clone(spec, workdir, vms):
        raise TemplateError("the template's build failed (1): no space")

    monitor, vms = boot_fake(templates=True, clone=clone)
    assert len(vms) == 1 and (vms[0].spec.memory_mib, monitor.info.template) == (384, "")
    assert [op for op, _ in vms[0].agent_calls] == [messages.MountShare.OP] * 2 + [messages.ConfigureNetwork.OP]
    assert "booting cold, not as a clone: the template's build failed (1): no space" in capsys.readouterr().err


def test_a_detached_shim_exits_only_after_the_command_that_started_it():
    """containerd 1.6 drops an exit that arrives before the exec command has exited: the shim of
    an exec that ends at once must outlive its starter, by the hold."""
    from pellucid.shim import Starter
    shim_code = ("import time; from pellucid.shim import Starter; s = Starter(); "
                 "s.hold_exit(); print(time.monotonic(), flush=True)")
    command_code = ("import subprocess, sys, time; "
                    f"p = subprocess.Popen([sys.executable, '-c', {shim_code!r}], stdout=sys.stdout); "
                    "time.sleep(0.3); print(time.monotonic(), flush=True)")
    # run() returns at EOF of stdout, which the shim holds too: both lines are there
    out = subprocess.run([sys.executable, "-c", command_code], capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert out.returncode == 0, out.stderr
    command_done, shim_exit = (float(x) for x in out.stdout.split())
    assert shim_exit >= command_done + Starter.HOLD


def test_a_starter_that_outlives_the_timeout_is_not_waited_for():
    import time
    from pellucid.shim import Starter
    s = Starter()  # our parent: pytest's, alive throughout
    started = time.monotonic()
    s.hold_exit(timeout=0.2)
    assert 0.15 < time.monotonic() - started < 5
    assert s.gone_at is None
