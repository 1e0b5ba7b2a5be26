"""The QEMU command line builder: a pure function, checked by comparing lists."""

import pytest

from pellucid.vm.qemu_args import Nic, Share, VMSpec, build_argv, kernel_cmdline, maxmem_mib


def spec(**kw):
    base = dict(qemu="/usr/bin/qemu-system-x86_64", machine="q35", accelerator="tcg", kernel="/a/vmlinux",
                image="/a/root.img", image_size=64 << 20, firmware="/usr/share/qemu/qboot.rom", agent_fd=5,
                qmp_fd=6)
    base.update(kw)
    return VMSpec(**base)


def pairs(argv, flag):
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_q35_machine_has_legacy_parts_off_and_qboot():
    argv = build_argv(spec())
    assert argv[0] == "/usr/bin/qemu-system-x86_64"
    assert pairs(argv, "-machine") == [
        "q35,sata=off,smbus=off,hpet=off,i8042=off,vmport=off,usb=off,graphics=off,mem-merge=on"]
    assert pairs(argv, "-accel") == ["tcg"]
    assert pairs(argv, "-bios") == ["/usr/share/qemu/qboot.rom"]
    assert "-nodefaults" in argv and "-no-reboot" in argv
    assert pairs(argv, "-cpu") == ["max"]
    assert pairs(argv, "-m") == [f"256M,slots=2,maxmem={256 + 128 + 2048}M"]
    assert pairs(argv, "-kernel") == ["/a/vmlinux"]


def test_q35_root_is_read_only_virtio_pmem_with_dax():
    argv = build_argv(spec())
    assert pairs(argv, "-object")[0] == (
        "memory-backend-file,id=rootmem,mem-path=/a/root.img,size=67108864,share=on,readonly=on")
    assert "virtio-pmem-pci,memdev=rootmem,id=rootpmem" in pairs(argv, "-device")
    cmdline = pairs(argv, "-append")[0]
    assert "root=/dev/pmem0 rootflags=dax" in cmdline and " ro " in cmdline


def test_microvm_uses_virtio_mmio_block_root_without_dax():
    argv = build_argv(spec(machine="microvm"))
    assert pairs(argv, "-machine")[0].startswith("microvm,")
    assert pairs(argv, "-accel") == ["tcg"]
    assert "-bios" not in argv
    assert pairs(argv, "-drive") == ["id=root,file=/a/root.img,format=raw,if=none,readonly=on,cache=none,aio=threads"]
    devices = pairs(argv, "-device")
    assert "virtio-blk-device,drive=root" in devices
    assert "virtio-serial-device,id=vser0" in devices
    assert "root=/dev/vda" in pairs(argv, "-append")[0]
    assert "dax" not in pairs(argv, "-append")[0]


def test_kvm_uses_host_cpu():
    argv = build_argv(spec(accelerator="kvm"))
    assert pairs(argv, "-cpu") == ["host"]
    assert pairs(argv, "-accel") == ["kvm"]
    assert not [a for a in argv if "accel=" in a]  # -machine accel= and -accel exclude each other


def test_channels_are_inherited_sockets():
    argv = build_argv(spec())
    chardevs = pairs(argv, "-chardev")
    assert "socket,id=agent,fd=5" in chardevs
    assert "socket,id=qmp,fd=6" in chardevs
    assert "virtserialport,bus=vser0.0,chardev=agent,name=org.pellucid.agent.0" in pairs(argv, "-device")
    assert pairs(argv, "-mon") == ["chardev=qmp,mode=control"]


def test_console_is_a_bounded_ring_buffer_unless_debugging():
    assert "ringbuf,id=console,size=65536" in pairs(build_argv(spec()), "-chardev")
    argv = build_argv(spec(console_file="/x/console.log", debug=True))
    assert "file,id=console,path=/x/console.log" in pairs(argv, "-chardev")
    assert "quiet" not in pairs(argv, "-append")[0]
    assert "quiet" in kernel_cmdline(spec())


def test_shares_are_9p_with_passthrough_and_remapped_inodes():
    argv = build_argv(spec(shares=(Share("pellucid-shared", "/run/x"), Share("ro", "/data", readonly=True))))
    assert pairs(argv, "-fsdev") == [
        "local,id=fs0,path=/run/x,security_model=passthrough,multidevs=remap",
        "local,id=fs1,path=/data,security_model=passthrough,multidevs=remap,readonly=on"]
    assert "virtio-9p-pci,fsdev=fs0,mount_tag=pellucid-shared" in pairs(argv, "-device")


def test_maxmem_leaves_room_for_the_image():
    assert maxmem_mib(spec(image_size=(128 << 20) + 1, memory_mib=512)) == 512 + 256 + 2048


@pytest.mark.parametrize("bad", [dict(machine="pc"), dict(accelerator="hvf")])
def test_unknown_machine_or_accelerator(bad):
    with pytest.raises(ValueError):
        build_argv(spec(**bad))


def test_nics_are_virtio_net_on_taps_with_the_interfaces_mac():
    argv = build_argv(spec(nics=(Nic(mac="02:42:a9:fe:4d:02", tap="pltap0", mtu=1450),
                                 Nic(mac="02:00:00:00:00:01", fd=9))))
    assert pairs(argv, "-netdev") == ["tap,id=net0,ifname=pltap0,script=no,downscript=no,vhost=off",
                                      "tap,id=net1,fd=9,vhost=off"]
    assert "virtio-net-pci,netdev=net0,mac=02:42:a9:fe:4d:02,host_mtu=1450" in pairs(argv, "-device")
    assert "virtio-net-device,netdev=net0,mac=02:00:00:00:00:01,host_mtu=1500" in pairs(
        build_argv(spec(machine="microvm", nics=(Nic(mac="02:00:00:00:00:01", tap="t"),))), "-device")


def test_microvm_under_tcg_is_told_the_tsc_frequency(monkeypatch):
    """microvm has no HPET or PM timer: without a given TSC frequency the guest hangs when its PIT
    calibration fails on a busy host."""
    from pellucid import config
    from pellucid.vm import spec as spec_mod
    from pellucid.vm.assets import Assets
    assets = Assets("/k", "/i", 1 << 20, "6.1", "k", "i")
    monkeypatch.setattr(spec_mod, "host_tsc_khz", lambda: 2445404)
    micro = spec_mod.make_spec(config.parse('[hypervisor]\nmachine = "microvm"\n'), assets, "tcg")
    assert "tsc_early_khz=2445404" in kernel_cmdline(micro)
    for machine, accel in (("q35", "tcg"), ("microvm", "kvm")):
        other = spec_mod.make_spec(config.parse(f'[hypervisor]\nmachine = "{machine}"\n'), assets, accel)
        assert "tsc_early_khz" not in kernel_cmdline(other)


def test_the_guest_trusts_its_tsc_where_the_host_keeps_time_by_it(monkeypatch, tmp_path):
    """Under TCG the guest's TSC is the host's: trusted (no clocksource watchdog waking an idle guest
    twice a second) only where the host's own clocksource is the TSC; under KVM always."""
    from pellucid import config
    from pellucid.vm import spec as spec_mod
    from pellucid.vm.assets import Assets
    assets = Assets("/k", "/i", 1 << 20, "6.1", "k", "i")
    source = tmp_path / "current_clocksource"
    monkeypatch.setattr(spec_mod, "CLOCKSOURCE", str(source))

    def cmdline(accel: str) -> list[str]:
        return kernel_cmdline(spec_mod.make_spec(config.parse(""), assets, accel)).split()

    source.write_text("tsc\n")
    assert cmdline("tcg").count("tsc=reliable") == 1 and cmdline("kvm").count("tsc=reliable") == 1
    for host in ("hpet\n", "kvm-clock\n", None):
        if host is None:
            source.unlink()
        else:
            source.write_text(host)
        assert "tsc=reliable" not in cmdline("tcg") and "tsc=reliable" in cmdline("kvm")


def test_ram_in_a_file_shared_for_a_template_private_for_a_clone():
    for machine, accel in (("q35", "tcg"), ("q35", "kvm"), ("microvm", "tcg"), ("microvm", "kvm")):
        template = build_argv(spec(machine=machine, accelerator=accel, ram_file="/t/ram", memory_mib=512))
        clone = build_argv(spec(machine=machine, accelerator=accel, ram_file="/t/ram", memory_mib=512,
                                ram_shared=False, incoming=True))
        assert "memory-backend-file,id=ram0,mem-path=/t/ram,size=512M,share=on" in pairs(template, "-object")
        assert "memory-backend-file,id=ram0,mem-path=/t/ram,size=512M,share=off" in pairs(clone, "-object")
        assert pairs(template, "-machine")[0].startswith(f"{machine},")
        assert pairs(template, "-accel") == [accel]
        assert pairs(template, "-machine")[0].endswith(",memory-backend=ram0")
        assert "-S" not in template and "-incoming" not in template
        assert clone[-3:] == ["-S", "-incoming", "defer"]
        # Nothing that discards RAM (it would punch holes in the template's file).
        assert not [a for a in clone if "balloon" in a or "virtio-mem" in a]
    assert not [a for a in build_argv(spec()) if "memory-backend=" in a or "ram0" in a]


def test_a_nic_without_backend_is_connected_to_nothing():
    argv = build_argv(spec(nics=(Nic(mac="02:70:6c:74:00:00"), Nic(mac="02:70:6c:74:00:01", tap="t1"))))
    assert pairs(argv, "-netdev") == ["tap,id=net1,ifname=t1,script=no,downscript=no,vhost=off"]
    assert pairs(argv, "-device")[-2:] == ["virtio-net-pci,mac=02:70:6c:74:00:00,host_mtu=1500",
                                           "virtio-net-pci,netdev=net1,mac=02:70:6c:74:00:01,host_mtu=1500"]


@pytest.mark.parametrize("machine", ["q35", "microvm"])
def test_tcg_caps_its_code_cache_and_kvm_has_no_such_option(machine):
    assert pairs(build_argv(spec(machine=machine, tcg_tb_size_mib=64)), "-accel") == ["tcg,tb-size=64"]
    assert pairs(build_argv(spec(machine=machine, tcg_tb_size_mib=0)), "-accel") == ["tcg"]  # QEMU's default
    kvm = build_argv(spec(machine=machine, accelerator="kvm", tcg_tb_size_mib=64))
    assert pairs(kvm, "-accel") == ["kvm"] and not [a for a in kvm if "tb-size" in a]


def test_the_configured_code_cache_cap_reaches_tcg_vms_only():
    from pellucid import config
    from pellucid.vm import spec as spec_mod
    from pellucid.vm.assets import Assets
    assets = Assets("/k", "/i", 1 << 20, "6.1", "k", "i")
    cfg = config.parse("[hypervisor]\ntcg_tb_size_mib = 48\n")
    assert pairs(build_argv(spec_mod.make_spec(cfg, assets, "tcg")), "-accel") == ["tcg,tb-size=48"]
    assert pairs(build_argv(spec_mod.make_spec(cfg, assets, "kvm")), "-accel") == ["kvm"]
    default = spec_mod.make_spec(config.parse(""), assets, "tcg")
    assert default.tcg_tb_size_mib == config.HypervisorConfig().tcg_tb_size_mib
