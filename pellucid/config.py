"""The runtime configuration: one TOML file, every key optional, defaults documented here."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields

from .errors import ConfigError
from .messages import MSIZE_MAX, MSIZE_MIN, SHARE_CACHES, SHARE_TAG, VOLUME_TAG

DEFAULT_PATH = "/etc/pellucid/config.toml"
ENV_PATH = "PELLUCID_CONFIG"

ACCELERATORS = ("auto", "kvm", "tcg")
MACHINES = ("q35", "microvm")
NETWORK_MODES = ("tcfilter", "macvtap")
#: TCG's code cache: below a few MiB it thrashes (QEMU flushes it whole when full); 1 GiB is QEMU's own default
MIN_TB_SIZE_MIB, MAX_TB_SIZE_MIB = 4, 1024


@dataclass(frozen=True)
class HypervisorConfig:
    path: str = "/usr/bin/qemu-system-x86_64"
    #: "q35" (legacy parts off, qboot, root image on virtio-pmem with DAX) or "microvm" (virtio-mmio, no DAX)
    machine: str = "q35"
    firmware: str = "/usr/share/qemu/qboot.rom"
    #: "auto" probes KVM with a real boot and falls back to TCG; "kvm" or "tcg" force one
    accelerator: str = "auto"
    vcpus: int = 1
    memory_mib: int = 256
    #: the guest's serial console written to console.log in the VM's directory, kernel messages on
    debug_console: bool = False
    #: seconds to wait for the agent's handshake after QEMU starts
    boot_timeout: float = 30.0
    #: start each VM as a clone of a template of its size class (built on first need); false: boot cold
    templates: bool = True
    #: where templates are kept: their RAM files, so a tmpfs
    template_dir: str = "/dev/shm/pellucid-templates"
    #: under TCG, the cap on each VM's translated-code cache (QEMU's ``tb-size``), MiB; 0: QEMU's default,
    #: min(1 GiB, host RAM / 8), filled as the guest runs new code and never given back. 64 is above
    #: what a clone's start and small workloads fill (no measurable cost, bench/clone --tb-sizes) and
    #: bounds the growth; 32 saves 4-20 MiB per VM for 30-45 % more CPU, 16 about 25-40 MiB for twice
    #: the CPU. A template's build has QEMU's default: the cache is not migrated, so it is not part
    #: of what a clone restores
    tcg_tb_size_mib: int = 64


@dataclass(frozen=True)
class AssetsConfig:
    #: where built assets live, each in a directory named by the hash of its inputs
    dir: str = "/var/lib/pellucid"
    #: an explicit kernel or image path; empty means the one last built in ``dir``
    kernel: str = ""
    image: str = ""
    kernel_source: str = "/usr/src/linux-source-6.1.tar.xz"


@dataclass(frozen=True)
class NetworkConfig:
    #: how a tap reaches the namespace's interface: "tcfilter" (tc redirect both ways) or "macvtap"
    mode: str = "tcfilter"


@dataclass(frozen=True)
class FilesystemConfig:
    """How the container's rootfs and volumes reach the VM (9p; see the README's "Files" section)."""

    #: the guest's 9p cache for the container's rootfs: "loose" (pages, names and attributes read are
    #: cached and dropped before each exec; writes go through, with pellucid's kernel patch), "mmap"
    #: (nothing cached but mmap'ed pages: every access asks the host) or "none"
    cache: str = "loose"
    #: the same for bind-mounted volumes, which the host and other containers change at any time
    volume_cache: str = "mmap"
    #: the largest 9p message in bytes (6.1's virtio transport takes up to 512000)
    msize: int = 512000

    @property
    def volume_tag(self) -> str:
        """The 9p share volumes reach the guest by: the rootfs's own unless their cache modes differ."""
        return VOLUME_TAG if self.volume_cache != self.cache else SHARE_TAG

    def cache_of(self, tag: str) -> str:
        return self.volume_cache if tag == VOLUME_TAG else self.cache


@dataclass(frozen=True)
class OverheadConfig:
    """What a VM costs the host beyond its container's limits, added to them in its host cgroup."""

    #: QEMU outside guest RAM, the monitor and the shims, and under TCG QEMU's translated-code cache;
    #: the guest's base RAM (hypervisor.memory_mib) is added to it
    memory_mib: int = 192
    #: thousandths of a CPU added to the CPU quota and to the shares: the guest kernel and agent
    cpu_millis: int = 250
    #: the bound on the VM's host processes and threads (QEMU's, the monitor's, the shims')
    pids: int = 512


@dataclass(frozen=True)
class Config:
    path: str = ""
    hypervisor: HypervisorConfig = field(default_factory=HypervisorConfig)
    assets: AssetsConfig = field(default_factory=AssetsConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    filesystem: FilesystemConfig = field(default_factory=FilesystemConfig)
    overhead: OverheadConfig = field(default_factory=OverheadConfig)

    @property
    def kernel_path(self) -> str:
        return self.assets.kernel or os.path.join(self.assets.dir, "vmlinux")

    @property
    def image_path(self) -> str:
        return self.assets.image or os.path.join(self.assets.dir, "root.img")


def _section(cls: type, data: object, name: str):
    if not isinstance(data, dict):
        raise ConfigError(f"[{name}] must be a table")
    known = {f.name: f for f in fields(cls)}
    values = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"unknown key {name}.{key}")
        want = type(known[key].default)
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not want:
            raise ConfigError(f"{name}.{key} must be a {want.__name__}")
        values[key] = value
    return cls(**values)


def parse(text: str, path: str = "<string>") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: {err}") from None
    unknown = set(data) - {"hypervisor", "assets", "network", "filesystem", "overhead"}
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(sorted(unknown))}")
    hv = _section(HypervisorConfig, data.get("hypervisor", {}), "hypervisor")
    assets = _section(AssetsConfig, data.get("assets", {}), "assets")
    network = _section(NetworkConfig, data.get("network", {}), "network")
    fs = _section(FilesystemConfig, data.get("filesystem", {}), "filesystem")
    for key in ("cache", "volume_cache"):
        if getattr(fs, key) not in SHARE_CACHES:
            raise ConfigError(f"{path}: filesystem.{key} must be one of {', '.join(SHARE_CACHES)}")
    if not MSIZE_MIN <= fs.msize <= MSIZE_MAX:
        raise ConfigError(f"{path}: filesystem.msize must be between {MSIZE_MIN} and {MSIZE_MAX}")
    overhead = _section(OverheadConfig, data.get("overhead", {}), "overhead")
    if overhead.memory_mib < 0 or overhead.cpu_millis < 0 or overhead.pids < 0:
        raise ConfigError(f"{path}: overhead values must not be negative")
    if network.mode not in NETWORK_MODES:
        raise ConfigError(f"{path}: network.mode must be one of {', '.join(NETWORK_MODES)}")
    if hv.accelerator not in ACCELERATORS:
        raise ConfigError(f"{path}: hypervisor.accelerator must be one of {', '.join(ACCELERATORS)}")
    if hv.machine not in MACHINES:
        raise ConfigError(f"{path}: hypervisor.machine must be one of {', '.join(MACHINES)}")
    if not 1 <= hv.vcpus <= 64:
        raise ConfigError(f"{path}: hypervisor.vcpus must be between 1 and 64")
    if hv.tcg_tb_size_mib != 0 and not MIN_TB_SIZE_MIB <= hv.tcg_tb_size_mib <= MAX_TB_SIZE_MIB:
        raise ConfigError(f"{path}: hypervisor.tcg_tb_size_mib must be 0 (QEMU's default) or between "
                          f"{MIN_TB_SIZE_MIB} and {MAX_TB_SIZE_MIB}")
    if not 64 <= hv.memory_mib <= 65536:
        raise ConfigError(f"{path}: hypervisor.memory_mib must be between 64 and 65536")
    return Config(path=path, hypervisor=hv, assets=assets, network=network, filesystem=fs, overhead=overhead)


def load(path: str | None = None) -> Config:
    """The configuration from ``path``, $PELLUCID_CONFIG or the default path; defaults if absent."""
    path = path or os.environ.get(ENV_PATH) or DEFAULT_PATH
    try:
        with open(path) as f:
            return parse(f.read(), path)
    except FileNotFoundError:
        if path != DEFAULT_PATH:
            raise ConfigError(f"configuration file {path} does not exist") from None
        return Config(path="")
