"""`pellucid template list|build|verify|remove`: the VM templates clones start from."""

from __future__ import annotations

import json
import os
import time

from .. import config
from ..errors import PellucidError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..cli import Args


def template(args: Args) -> int:
    from ..vm import template as tpl
    cfg = config.load(args.config)
    root = args.dir or cfg.hypervisor.template_dir
    action = args.action
    if action == "list":
        return _list(tpl, root, args.json)
    if action == "build":
        return _build(tpl, cfg, args, root)
    if action == "verify":
        return _verify(tpl, root, args.key)
    if action == "remove":
        if not args.key:
            raise PellucidError("`pellucid template remove KEY`: which template? (`pellucid template list`)")
        if not tpl.remove(root, args.key):
            raise PellucidError(f"no template {args.key} in {root}")
        return 0
    raise PellucidError(f"unknown template action {action!r}: use list, build, verify or remove")


def _list(tpl, root: str, as_json: bool) -> int:
    found = tpl.list_templates(root)
    if as_json:
        print(json.dumps([{"key": t.key, "dir": t.dir, **t.manifest} for t in found], indent=2))
        return 0
    print(f"{'KEY':<34}{'MEMORY':>8}{'VCPUS':>6}{'NICS':>5}  {'ACCEL':<6}{'BUILT':<21}{'BUILD':>8}")
    for t in found:
        m, s = t.manifest, t.shape
        built = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m.get("built_at", 0)))
        print(f"{t.key:<34}{s.memory_mib:>6}Mi{s.vcpus:>6}{s.nic_slots:>5}  {m.get('accelerator', ''):<6}"
              f"{built:<21}{m.get('build_ms', 0):>6}ms")
    return 0


def _build(tpl, cfg: config.Config, args: Args, root: str) -> int:
    from ..messages import SHARE_TAG
    from ..vm import accel, cloning
    from ..vm.assets import resolve
    from ..vm.size_class import size_class
    memory = int(args.memory) if args.memory else cfg.hypervisor.memory_mib
    vcpus = int(args.vcpus) if args.vcpus else cfg.hypervisor.vcpus
    size = size_class(memory, vcpus, os.cpu_count() or 1)
    if size is None:
        raise PellucidError(f"{memory} MiB and {vcpus} vCPUs are beyond the largest size class: such VMs boot cold")
    accelerator, _ = accel.choose(cfg, resolve(cfg), os.path.join(args.root, ".vm"))
    cloning.join_cgroups(cloning.prepare_cgroups())  # the template's RAM is charged to pellucid, not the caller
    factory = tpl.Factory(root, boot_timeout=cfg.hypervisor.boot_timeout)
    t = factory.ensure(tpl.class_spec(cfg, accelerator, size, (SHARE_TAG,)), verify_ram=True)
    print(f"template {t.key} ({size.name}, {accelerator}) in {t.dir}, built in {t.manifest.get('build_ms')} ms")
    return 0


def _verify(tpl, root: str, key: str) -> int:
    found = [t for t in tpl.list_templates(root) if not key or t.key == key]
    if key and not found:
        raise PellucidError(f"no template {key} in {root}")
    bad = 0
    for t in found:
        problems = tpl.problems(t, full=True)
        bad += bool(problems)
        print(f"{t.key}: " + ("; ".join(problems) if problems else "ok"))
    return 1 if bad else 0
