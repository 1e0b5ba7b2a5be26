"""A VMSpec from the configuration, the assets and what one VM needs."""

from __future__ import annotations

from ..config import Config
from .assets import Assets
from .qemu_args import Nic, Share, VMSpec


def make_spec(cfg: Config, assets: Assets, accelerator: str, *, name: str = "pellucid", console_file: str = "",
              shares: tuple[Share, ...] = (), nics: tuple[Nic, ...] = (), vcpus: int | None = None, memory_mib: int | None = None) -> VMSpec:
    hv = cfg.hypervisor
    return VMSpec(qemu=hv.path, machine=hv.machine, accelerator=accelerator, kernel=assets.kernel,
                  image=assets.image, image_size=assets.image_size, firmware=hv.firmware,
                  vcpus=vcpus or hv.vcpus, memory_mib=memory_mib or hv.memory_mib, name=name,
                  console_file=console_file, debug=hv.debug_console, shares=shares, nics=nics)
