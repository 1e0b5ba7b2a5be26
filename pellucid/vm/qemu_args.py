"""The QEMU command line as a pure function of a :class:`VMSpec`: no I/O here, tested by comparing lists."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import protocol

MiB = 1 << 20
GiB = 1 << 30

# q35 with every legacy part that can go switched off; qboot instead of SeaBIOS.
# QEMU's 9p server: files keep the container's owners and modes (QEMU runs as root), and files of
# the several host file systems under one share (overlay rootfs, volumes) get distinct inode numbers.
FSDEV_OPTIONS = "security_model=passthrough,multidevs=remap"

Q35_OPTIONS = "sata=off,smbus=off,hpet=off,i8042=off,vmport=off,usb=off,graphics=off"
# QEMU's own seccomp filter: no obsolete syscalls, no uid/gid changes (QEMU is not started with
# -runas), no fork/exec, no scheduler or affinity changes. pellucid's filter (vm.confine) is beneath it.
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


@dataclass(frozen=True)
class Share:
    """A host directory exported to the guest over virtio-9p."""

    tag: str
    path: str
    readonly: bool = False


@dataclass(frozen=True)
class Nic:
    """A virtio-net device backed by a tap in the VM's network namespace, by name or open fd (macvtap);
    with neither, connected to nothing (a template's NIC slot, or a clone's unused one; a hub port
    there hangs QEMU 7.2's guest before its kernel prints a line)."""

    mac: str
    tap: str = ""
    fd: int = -1
    mtu: int = 1500


@dataclass(frozen=True)
class VMSpec:
    qemu: str
    machine: str  # "q35" or "microvm"
    accelerator: str  # "kvm" or "tcg"
    kernel: str
    image: str
    image_size: int
    firmware: str
    vcpus: int = 1
    memory_mib: int = 256
    name: str = "pellucid"
    #: file descriptors, inherited by QEMU, of connected sockets for the agent port and QMP
    agent_fd: int = -1
    qmp_fd: int = -1
    #: where the serial console goes: a file path, or "" for a bounded in-QEMU ring buffer
    console_file: str = ""
    #: where QEMU writes its pid (it also names the VM's directory on QEMU's command line)
    pidfile: str = ""
    debug: bool = False
    shares: tuple[Share, ...] = field(default_factory=tuple)
    nics: tuple[Nic, ...] = field(default_factory=tuple)
    extra_cmdline: tuple[str, ...] = field(default_factory=tuple)
    #: guest RAM in this file (a template's, on tmpfs): shared to write it, private (copy-on-write) to clone it
    ram_file: str = ""
    ram_shared: bool = True
    #: start paused, waiting for a migration stream given later over QMP (a clone of a template)
    incoming: bool = False
    #: TCG only: the cap on the translated-code cache, MiB (0: QEMU's default, min(1 GiB, RAM/8))
    tcg_tb_size_mib: int = 0


def cpu_model(accelerator: str) -> str:
    # Under TCG "max" gives RDRAND and the instructions Python's start-up benefits from.
    return "host" if accelerator == "kvm" else "max"


def kernel_cmdline(spec: VMSpec) -> str:
    root = "root=/dev/pmem0 rootflags=dax" if spec.machine == "q35" else "root=/dev/vda"
    args = [root, "rootfstype=ext4", "ro", "init=/sbin/init", "panic=-1", "console=ttyS0",
            "8250.nr_uarts=1", "random.trust_cpu=on", "tsc=reliable" if spec.accelerator == "kvm" else "",
            "printk.time=1" if spec.debug else "quiet", "" if spec.debug else "loglevel=3"]
    if spec.machine == "q35":
        args.append("pci=lastbus=0")
    return " ".join(a for a in (*args, *spec.extra_cmdline) if a)


def _bus(machine: str) -> str:
    return "pci" if machine == "q35" else "device"


def maxmem_mib(spec: VMSpec) -> int:
    """Room above RAM for the root image's device memory, plus headroom for memory hot-plug."""
    image_mib = -(-spec.image_size // (128 * MiB)) * 128
    return spec.memory_mib + image_mib + 2048


def accel_option(spec: VMSpec) -> str:
    """``-accel``'s value: KVM has no option of ours; TCG may cap its code cache (``tb-size``)."""
    if spec.accelerator == "tcg" and spec.tcg_tb_size_mib > 0:
        return f"tcg,tb-size={spec.tcg_tb_size_mib}"
    return spec.accelerator


def build_argv(spec: VMSpec) -> list[str]:
    if spec.machine not in ("q35", "microvm"):
        raise ValueError(f"unknown machine {spec.machine}")
    if spec.accelerator not in ("kvm", "tcg"):
        raise ValueError(f"unknown accelerator {spec.accelerator}")
    bus = _bus(spec.machine)
    argv = [spec.qemu, "-name", f"{spec.name},debug-threads=on", "-nodefaults", "-no-user-config",
            "-display", "none", "-no-reboot", "-sandbox", SANDBOX]
    if spec.pidfile:
        argv += ["-pidfile", spec.pidfile]
    ram = ",memory-backend=ram0" if spec.ram_file else ""
    if spec.ram_file:
        share = "on" if spec.ram_shared else "off"
        argv += ["-object", f"memory-backend-file,id=ram0,mem-path={spec.ram_file},size={spec.memory_mib}M,"
                            f"share={share}"]
    if spec.machine == "q35":
        argv += ["-machine", f"q35,{Q35_OPTIONS},mem-merge=on{ram}",
                 "-bios", spec.firmware,
                 "-m", f"{spec.memory_mib}M,slots=2,maxmem={maxmem_mib(spec)}M"]
    else:
        argv += ["-machine", f"microvm,mem-merge=on,isa-serial=on{ram}",
                 "-m", f"{spec.memory_mib}M"]
    argv += ["-accel", accel_option(spec)]  # -accel and -machine accel= exclude each other
    argv += ["-cpu", cpu_model(spec.accelerator), "-smp", str(spec.vcpus),
             "-kernel", spec.kernel, "-append", kernel_cmdline(spec)]
    # Root image: mapped from the host page cache once for all VMs. Read-only on the host side too,
    # so a hostile guest cannot write into the file every VM shares.
    if spec.machine == "q35":
        argv += ["-object", f"memory-backend-file,id=rootmem,mem-path={spec.image},size={spec.image_size},"
                            "share=on,readonly=on",
                 "-device", "virtio-pmem-pci,memdev=rootmem,id=rootpmem"]
    else:
        argv += ["-drive", f"id=root,file={spec.image},format=raw,if=none,readonly=on,cache=none,aio=threads",
                 "-device", "virtio-blk-device,drive=root"]
    # Host <-> agent channel and QMP, over sockets QEMU inherits already connected.
    argv += ["-chardev", f"socket,id=agent,fd={spec.agent_fd}",
             "-device", f"virtio-serial-{bus},id=vser0",
             "-device", f"virtserialport,bus=vser0.0,chardev=agent,name={protocol.AGENT_PORT_NAME}",
             "-chardev", f"socket,id=qmp,fd={spec.qmp_fd}",
             "-mon", "chardev=qmp,mode=control",
             "-object", "rng-random,id=rng0,filename=/dev/urandom",
             "-device", f"virtio-rng-{bus},rng=rng0"]
    if spec.console_file:
        argv += ["-chardev", f"file,id=console,path={spec.console_file}"]
    else:
        argv += ["-chardev", "ringbuf,id=console,size=65536"]
    argv += ["-serial", "chardev:console"]
    for i, nic in enumerate(spec.nics):
        if nic.fd >= 0:
            argv += ["-netdev", f"tap,id=net{i},fd={nic.fd},vhost=off"]
        elif nic.tap:
            argv += ["-netdev", f"tap,id=net{i},ifname={nic.tap},script=no,downscript=no,vhost=off"]
        netdev = f"netdev=net{i}," if nic.fd >= 0 or nic.tap else ""
        argv += ["-device", f"virtio-net-{bus},{netdev}mac={nic.mac},host_mtu={nic.mtu}"]
    for i, share in enumerate(spec.shares):
        ro = ",readonly=on" if share.readonly else ""
        argv += ["-fsdev", f"local,id=fs{i},path={share.path},{FSDEV_OPTIONS}{ro}",
                 "-device", f"virtio-9p-{bus},fsdev=fs{i},mount_tag={share.tag}"]
    if spec.incoming:
        argv += ["-S", "-incoming", "defer"]
    return argv
