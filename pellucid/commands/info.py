"""version, check, env, assets: the commands about pellucid itself rather than a container."""

from __future__ import annotations

import json
import os
import platform

from .. import __version__, config, protocol
from ..errors import PellucidError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..cli import Args


def version(args: Args) -> int:
    print(f"pellucid version {__version__}")
    print("spec: 1.0.2")
    print(f"agent protocol: {protocol.VERSION}")
    print(f"python: {platform.python_version()}")
    return 0


def check(args: Args) -> int:
    from ..check import check as run_check
    cfg = config.load(args.config)
    report = run_check(cfg, os.path.join(args.root, ".vm"), refresh=not args.cached)
    from ..install import clients  # which container engines here are set up to run pellucid
    engines = clients.present()
    if args.json:
        print(json.dumps({**report.as_json(), "clients": [vars(e) for e in engines]}, indent=2))
    else:
        for engine in engines:
            print(f"INFO[{engine.client}] {clients.describe(engine)}")
        for item in report.items:
            level = "INFO" if item.ok else ("ERROR" if item.required else "WARN")
            print(f"{level}[{item.name}] {item.detail}")
        if report.boot:
            b = report.boot
            print(f"INFO[summary] accelerator={b['accelerator']} guest_kernel={b['guest_kernel']} "
                  f"host_kernel={b['host_kernel']} rootfs_dax={str(b['rootfs_dax']).lower()} boot_ms={b['boot_ms']}")
        print("System is capable of running pellucid" if report.ok else "System cannot run pellucid")
    return 0 if report.ok else 1


def env(args: Args) -> int:
    from ..build import cache
    from ..vm import accel
    from ..vm.assets import resolve
    from ..errors import AssetError
    cfg = config.load(args.config)
    out: dict = {
        "config_file": cfg.path or f"{config.DEFAULT_PATH} (absent: defaults)",
        "runtime": {"version": __version__, "root": args.root, "agent_protocol": protocol.VERSION},
        "hypervisor": vars(cfg.hypervisor).copy(),
        "assets": {**vars(cfg.assets), "kernel_path": cfg.kernel_path, "image_path": cfg.image_path},
        "network": vars(cfg.network).copy(),
    }
    try:
        a = resolve(cfg)
        out["assets"].update(kernel_resolved=a.kernel, kernel_release=a.kernel_release, kernel_key=a.kernel_key,
                             image_resolved=a.image, image_key=a.image_key, image_size=a.image_size,
                             image_packages=cache.manifest_of(a.image).get("packages", {}))
        probe = accel.cached(cfg, a)
        out["accelerator_probe"] = vars(probe) if probe else None
    except AssetError as err:
        out["assets"]["error"] = str(err)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for section, values in out.items():
            if isinstance(values, dict):
                print(f"[{section}]")
                for k, v in values.items():
                    print(f"  {k} = {json.dumps(v)}")
            else:
                print(f"{section} = {json.dumps(values)}")
    return 0


def assets(args: Args) -> int:
    from ..build import kernel, rootfs
    if args.action != "build":
        raise PellucidError(f"unknown assets action {args.action!r}: use `pellucid assets build`")
    cfg = config.load(args.config)
    k = kernel.ensure(cfg.assets.dir, cfg.assets.kernel_source)
    i = rootfs.ensure(cfg.assets.dir)
    print(f"kernel: {k}")
    print(f"image: {i}")
    return 0
