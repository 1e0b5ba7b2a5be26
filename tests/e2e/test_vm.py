"""The VM foundation with real QEMU: boot to the agent's handshake, DAX root, accelerator probe,
and QEMU never left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pellucid import config as config_mod
from pellucid import messages
from pellucid.errors import VMError
from pellucid.vm import accel
from pellucid.vm.assets import resolve
from pellucid.vm.machine import VM
from pellucid.vm.spec import make_spec

from .conftest import PELLUCID, host_boot_id, qemu_pids

pytestmark = pytest.mark.vm

ASSETS_DIR = os.environ.get("PELLUCID_TEST_ASSETS_DIR", "")  # a checkout whose guest code differs builds its own


def config_text(text: str = "", assets: str = "") -> str:
    """The configuration ``text``, its [assets] table ``assets``, with the tests' asset directory."""
    table = (f'dir = "{ASSETS_DIR}"\n' if ASSETS_DIR else "") + assets
    return text + (f"[assets]\n{table}" if table else "")


def config(text: str = "", assets: str = "") -> config_mod.Config:
    return config_mod.parse(config_text(text, assets))


def cli_env(tmp_path) -> dict[str, str]:
    """The environment of a pellucid command that must use the tests' asset directory."""
    if not ASSETS_DIR:
        return dict(os.environ)
    path = tmp_path / "assets.toml"
    path.write_text(f'[assets]\ndir = "{ASSETS_DIR}"\n')
    return {**os.environ, config_mod.ENV_PATH: str(path)}


def vm_for(cfg: config_mod.Config, tmp_path, accelerator: str = "tcg") -> VM:
    """A VM, not yet started: use it in a with statement."""
    return VM(make_spec(cfg, resolve(cfg), accelerator, console_file=str(tmp_path / "console.log")), str(tmp_path))


def test_check_json_reports_a_real_guest(tmp_path):
    """`pellucid check --json` probes the accelerator, boots the guest and reports what it saw."""
    out = subprocess.run([PELLUCID, "--root", str(tmp_path), "check", "--json"], capture_output=True, text=True,
                         timeout=600, env=cli_env(tmp_path))
    report = json.loads(out.stdout)
    assert out.returncode == 0, out.stdout + out.stderr
    kvm = next(c for c in report["checks"] if c["name"] == "kvm")
    # Whatever this host is, the answer must follow from the real KVM boot: here /dev/kvm is PVM and fails.
    assert report["accelerator"] == ("kvm" if kvm["ok"] else "tcg")
    assert report["guest_kernel"] != report["host_kernel"] == os.uname().release
    assert report["guest_boot_id"] != report["host_boot_id"] == host_boot_id()
    assert report["rootfs_dax"] is True
    assert 0 < report["timeline_ms"]["kernel"] < report["timeline_ms"]["init"] <= report["boot_ms"]
    templates = next(c for c in report["checks"] if c["name"] == "templates")
    assert templates["ok"] and templates["detail"].startswith("on: VMs start as clones")  # the default
    checks = {c["name"]: c for c in report["checks"]}
    assert "rootfs cache=loose, volumes cache=mmap (a second device)" in checks["filesystem"]["detail"]
    assert checks["9p writes"]["ok"], checks["9p writes"]  # the assets' kernel has the write-through patch
    assert qemu_pids(tmp_path) == set()


def test_handshake_ping_and_clean_stop(tmp_path):
    cfg = config()
    with vm_for(cfg, tmp_path) as vm:
        hello = vm.handshake(240)
        assert hello.kernel != os.uname().release and hello.rootfs_dax
        assert vm.agent.call(messages.Ping()).uptime_ms > 0
        pid = vm.proc.pid
    assert vm.proc.poll() is not None
    assert not os.path.exists(f"/proc/{pid}")


def test_microvm_boots_with_its_root_on_virtio_blk(tmp_path):
    """The microvm machine stays a configurable option: no DAX there (no device memory region)."""
    cfg = config('[hypervisor]\nmachine = "microvm"\n')
    with vm_for(cfg, tmp_path) as vm:
        hello = vm.handshake(240)
    assert hello.rootfs_dax is False and hello.kernel != os.uname().release


def test_qemu_dies_with_its_parent(tmp_path):
    """A caller killed with SIGKILL leaves no QEMU behind (PR_SET_PDEATHSIG)."""
    script = textwrap.dedent(f"""
        import sys, time
        from pellucid import config
        from pellucid.vm.assets import resolve
        from pellucid.vm.machine import VM
        from pellucid.vm.spec import make_spec
        cfg = config.parse({config_text()!r})
        vm = VM(make_spec(cfg, resolve(cfg), "tcg"), {str(tmp_path)!r})
        vm.start()
        print(vm.proc.pid, flush=True)
        time.sleep(600)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    qemu = int(child.stdout.readline())
    assert qemu in qemu_pids()
    child.send_signal(signal.SIGKILL)
    child.wait()
    deadline = time.monotonic() + 10
    while qemu in qemu_pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert qemu_pids(tmp_path) == set()


def test_a_vm_that_does_not_come_up_is_reported_and_removed(tmp_path):
    bogus = tmp_path / "vmlinux"
    bogus.write_bytes(b"\x7fELF not a kernel")
    cfg = config(assets=f'kernel = "{bogus}"\n')
    vm = VM(make_spec(cfg, resolve(cfg), "tcg"), str(tmp_path))
    with pytest.raises(VMError, match="did not come up"):
        with vm:
            vm.handshake(20)
    assert qemu_pids(tmp_path) == set()


def test_accelerator_probe_falls_back_and_is_cached(tmp_path):
    """On a host where KVM cannot run our guest, the probe says TCG and why; the verdict is cached."""
    cfg = config_mod.parse(f'[assets]\ndir = "{tmp_path}"\nkernel = "{config().kernel_path}"\n'
                           f'image = "{config().image_path}"\n')
    assets = resolve(cfg)
    accelerator, probe = accel.choose(cfg, assets, str(tmp_path / "run"))
    assert probe is not None and accelerator == probe.accelerator
    if accelerator == "tcg":
        assert probe.kvm_error
    again, cached = accel.choose(cfg, assets, str(tmp_path / "run"))
    assert cached == probe and again == accelerator
    forced, none = accel.choose(config_mod.parse('[hypervisor]\naccelerator = "tcg"\n'), assets, str(tmp_path))
    assert (forced, none) == ("tcg", None)


def test_env_names_the_assets_in_effect_and_the_probe(tmp_path):
    out = subprocess.run([PELLUCID, "env", "--json"], capture_output=True, text=True, timeout=60, check=True,
                         env=cli_env(tmp_path))
    env = json.loads(out.stdout)
    assets = env["assets"]
    assert assets["kernel_release"] and assets["kernel_release"] != os.uname().release
    assert os.path.isfile(assets["kernel_resolved"]) and os.path.isfile(assets["image_resolved"])
    assert "python3.11-minimal" in assets["image_packages"] and "crun" in assets["image_packages"]
    assert env["hypervisor"]["machine"] in ("q35", "microvm")
    assert env["network"]["mode"] in ("tcfilter", "macvtap")
