"""config.json as the guest's crun must see it: a pure function of the bundle's config.

The rootfs and every bind-mount source reach the VM over 9p, under the container's directory in
the sandbox's shared directory; hooks that run on the host are taken out; the network namespace
is the VM's own; host-only security labels are dropped.
"""

from __future__ import annotations

import copy
import os
from typing import Any, NamedTuple

from ..errors import BundleError

GUEST_SHARED = "/run/pellucid/shared"
HOST_HOOKS = ("prestart", "createRuntime", "poststart", "poststop")
UNSUPPORTED_NAMESPACES = ("user", "time")


class Bind(NamedTuple):
    """A host path the container needs, and its name under the container's shared directory."""

    source: str
    name: str
    is_dir: bool
    readonly: bool


def is_bind(mount: dict[str, Any]) -> bool:
    options = mount.get("options") or []
    return mount.get("type") == "bind" or "bind" in options or "rbind" in options


def guest_dir(tag: str, container_id: str) -> str:
    return f"{GUEST_SHARED}/{tag}/{container_id}"


def translate(config: dict[str, Any], bundle: str, container_id: str, tag: str,
              namespace_paths: dict[str, str] | None = None) -> tuple[dict[str, Any], list[Bind]]:
    """The guest's config and the binds the host must make under the container's shared directory.

    ``namespace_paths`` maps a namespace type to a guest path to join (containers of a pod join
    their sandbox's namespaces); any other namespace path is refused: it names a host namespace.
    """
    cfg = copy.deepcopy(config)
    base = guest_dir(tag, container_id)
    root = cfg.get("root") or {}
    binds = [Bind("", "rootfs", True, bool(root.get("readonly")))]
    cfg["root"] = {"path": f"{base}/rootfs", "readonly": bool(root.get("readonly"))}

    mounts = []
    for i, mount in enumerate(cfg.get("mounts") or []):
        if is_bind(mount):
            source = mount.get("source", "")
            if not os.path.isabs(source):
                source = os.path.join(bundle, source)
            options = mount.get("options") or []
            name = f"mounts/{i}"
            binds.append(Bind(source, name, os.path.isdir(source), "ro" in options))
            mount = {**mount, "source": f"{base}/{name}"}
        mounts.append(mount)
    cfg["mounts"] = mounts

    hooks = cfg.get("hooks") or {}
    guest_hooks = {k: v for k, v in hooks.items() if k not in HOST_HOOKS}
    if guest_hooks:
        cfg["hooks"] = guest_hooks
    else:
        cfg.pop("hooks", None)

    linux = cfg.setdefault("linux", {})
    namespaces = []
    for ns in linux.get("namespaces") or []:
        kind = ns.get("type")
        if kind in UNSUPPORTED_NAMESPACES:
            raise BundleError(f"{kind} namespaces are not supported by pellucid")
        if kind == "network":
            continue  # the VM is the container's network namespace
        if ns.get("path"):
            joined = (namespace_paths or {}).get(kind)
            if joined is None:
                raise BundleError(f"cannot join {kind} namespace {ns['path']}: it is a host namespace, "
                                  "and the container runs in a VM")
            ns = {"type": kind, "path": joined}
        namespaces.append(ns)
    linux["namespaces"] = namespaces
    linux["cgroupsPath"] = f"/pellucid/{container_id}"
    # Network sysctls belong to a network namespace the container no longer has: the agent sets them
    # on the VM's, which is the container's (see net_sysctls).
    sysctl = linux.get("sysctl") or {}
    if sysctl:
        linux["sysctl"] = {k: v for k, v in sysctl.items() if not k.startswith("net.")}
    # Block I/O limits would name the guest's disks, not the container's (its rootfs is on 9p).
    resources = linux.get("resources")
    if isinstance(resources, dict):
        resources.pop("blockIO", None)
    linux.pop("mountLabel", None)
    linux.pop("intelRdt", None)
    process = cfg.get("process")
    if isinstance(process, dict):
        process.pop("apparmorProfile", None)
        process.pop("selinuxLabel", None)
    return cfg, binds


def net_sysctls(config: dict[str, Any]) -> dict[str, str]:
    """The config's net.* sysctls, for the VM's network namespace."""
    sysctl = (config.get("linux") or {}).get("sysctl") or {}
    return {k: str(v) for k, v in sysctl.items() if k.startswith("net.")}


def process_for_guest(process: dict[str, Any]) -> dict[str, Any]:
    """An exec'd process's spec as the guest's crun must see it."""
    p = dict(process)
    p.pop("apparmorProfile", None)
    p.pop("selinuxLabel", None)
    return p
