"""A VMSpec from the configuration, the assets and what one VM needs."""

from __future__ import annotations

from ..config import Config
from ..kernfs import read_value
from .assets import Assets
from .qemu_args import Nic, Share, VMSpec

CLOCKSOURCE = "/sys/devices/system/clocksource/clocksource0/current_clocksource"


def make_spec(cfg: Config, assets: Assets, accelerator: str, *, name: str = "pellucid", console_file: str = "",
              shares: tuple[Share, ...] = (), nics: tuple[Nic, ...] = (), vcpus: int | None = None, memory_mib: int | None = None) -> VMSpec:
    hv = cfg.hypervisor
    extra: tuple[str, ...] = ()
    if accelerator == "tcg":
        # Under TCG the guest's TSC is the host's. Where the host keeps time by it, so can the guest,
        # without the clocksource watchdog that wakes every idle guest twice a second (under TCG
        # each wake-up costs host CPU: this cuts an idle VM's to a quarter). Under KVM,
        # kernel_cmdline always gives tsc=reliable.
        if read_value(CLOCKSOURCE) == "tsc":
            extra += ("tsc=reliable",)
        # microvm has no HPET or ACPI PM timer, so the guest calibrates its TSC against the PIT alone,
        # which fails when the host is busy, and then hangs.
        khz = host_tsc_khz() if hv.machine == "microvm" else 0
        extra += (f"tsc_early_khz={khz}",) if khz else ()
    return VMSpec(qemu=hv.path, machine=hv.machine, accelerator=accelerator, kernel=assets.kernel,
                  image=assets.image, image_size=assets.image_size, firmware=hv.firmware,
                  vcpus=vcpus or hv.vcpus, memory_mib=memory_mib or hv.memory_mib, name=name,
                  console_file=console_file, debug=hv.debug_console, shares=shares, nics=nics,
                  extra_cmdline=extra, tcg_tb_size_mib=hv.tcg_tb_size_mib if accelerator == "tcg" else 0)


def host_tsc_khz() -> int:
    """The host's TSC frequency, where the CPU has a constant TSC (0 if unknown)."""
    mhz, constant = 0.0, False
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "cpu MHz" and not mhz:
                    mhz = float(value)
                elif key == "flags":
                    constant = "constant_tsc" in value.split()
                    break
    except (OSError, ValueError):
        return 0
    return int(mhz * 1000) if constant else 0
