"""config.json as the guest's crun must see it, from the bundle's config.

The rootfs and every bind-mount source reach the VM over 9p, under the container's directory in
the sandbox's shared directory; hooks that run on the host are taken out; the network namespace
is the VM's own; host-only security labels are dropped. The config is then brought to what the
guest's crun (Debian 12's 1.8, which takes ociVersion 1.0.x only) carries out: see
:data:`SPEC_ADDITIONS`. Fields dropped there are logged as warnings; the rest is pure.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Callable, NamedTuple

from .. import log, messages
from ..errors import BundleError

HOST_HOOKS = ("prestart", "createRuntime", "poststart", "poststop")
UNSUPPORTED_NAMESPACES = ("time",)
#: crun 1.8 refuses any ociVersion without "1.0" in it ("unknown version specified")
GUEST_OCI_VERSION = "1.0.2"

PASS, DROP, REFUSE = "pass", "drop", "refuse"

#: What runtime-spec 1.1.0, 1.2.0 and 1.3.0 added, and what pellucid does with it given the guest's
#: crun 1.8 (which parses a field it does not carry out and then ignores it, silently):
#: (field, "[]" for each element of a list; spec version; action; why). PASS: crun 1.8 carries it
#: out. DROP: removed with a logged warning, because doing without it cannot weaken the container's
#: confinement (a hint on scheduling, placement or a host-only resource). REFUSE: create fails: the
#: field asks for confinement, or for something the container relies on, that the VM cannot give.
#: Relative mount destinations (1.2.0) are translated, as runc does, by pellucid.oci.bundle.
SPEC_ADDITIONS: tuple[tuple[str, str, str, str], ...] = (
    ("domainname", "1.1.0", PASS, "crun 1.7+ sets it in the container's UTS namespace"),
    ("process.user.umask", "1.0.2", PASS, "crun sets it"),
    ("linux.personality", "1.0.2", PASS, "crun 1.8 sets LINUX and LINUX32"),
    ("linux.seccomp.flags", "1.0.2", PASS, "crun 1.8 knows TSYNC, SPEC_ALLOW, LOG, WAIT_KILLABLE_RECV and "
     "refuses any other flag"),
    ("linux.seccomp.defaultErrnoRet", "1.1.0", PASS, "crun 1.8 applies it (and errnoRet per rule)"),
    ("linux.resources.cpu.idle", "1.1.0", PASS, "crun 1.8 writes cpu.idle"),
    ("linux.resources.memory.checkBeforeUpdate", "1.1.0", PASS, "crun 1.8 honours it on cgroup v2"),
    ("linux.resources.unified", "1.1.0", PASS, "crun 1.8 writes the cgroup v2 files"),
    ("process.ioPriority", "1.1.0", DROP, "I/O priority among the guest's processes is not set by crun 1.8; "
     "the VM's I/O is one host process's"),
    ("process.scheduler", "1.1.0", DROP, "a scheduling policy inside the VM is not set by crun 1.8; the VM's "
     "vCPUs are ordinary host threads"),
    ("process.execCPUAffinity", "1.2.1", DROP, "CPU affinity names host CPUs; the VM has vCPUs of its own"),
    ("linux.resources.cpu.burst", "1.1.0", DROP, "crun 1.8 does not set a CFS burst: the quota holds without it"),
    ("linux.memoryPolicy", "1.3.0", DROP, "a NUMA policy names host nodes; the VM has one node"),
    ("linux.intelRdt", "1.0.2", DROP, "Intel RDT partitions the host's caches among host processes; the "
     "container runs in a VM without RDT"),
    ("vm", "1.3.0", DROP, "pellucid boots the kernel and image its configuration names, with its hypervisor"),
    ("linux.timeOffsets", "1.1.0", REFUSE, "time namespaces are not supported by pellucid"),
    ("linux.netDevices", "1.3.0", REFUSE, "moving host network devices into the container is not supported: "
     "the VM gets the interfaces of the container's network namespace"),
    ("linux.seccomp.listenerPath", "1.1.0", REFUSE, "a seccomp agent on the host cannot receive notifications "
     "from a VM's kernel"),
    ("mounts[].uidMappings", "1.1.0", REFUSE, "idmapped mounts are not supported: the container's files reach "
     "the VM over 9p, which cannot be idmapped"),
    ("mounts[].gidMappings", "1.1.0", REFUSE, "idmapped mounts are not supported: the container's files reach "
     "the VM over 9p, which cannot be idmapped"),
)
#: mount options (1.2.0) that ask for an idmapping; "idmap=..." is crun's own form
IDMAP_OPTIONS = ("idmap", "ridmap")
#: bind options that make the bind a member of a peer group
SHARED_PROPAGATION = frozenset(("shared", "rshared"))
#: platform sections a Linux runtime has no use for
OTHER_PLATFORMS = ("windows", "solaris", "zos", "freebsd")


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
    return f"{messages.share_mount_point(tag)}/{container_id}"


def translate(config: dict[str, Any], bundle: str, container_id: str, tag: str,
              namespace_paths: dict[str, str] | None = None,
              volume_tag: str = "") -> tuple[dict[str, Any], list[Bind]]:
    """The guest's config and the binds the host must make under the container's shared directory.
    The rootfs reaches the guest by share ``tag``, bind mounts by ``volume_tag`` (by default the same
    share; another share of the same directory when volumes are mounted with another cache mode).

    ``namespace_paths`` maps a namespace type to a guest path to join (containers of a pod join
    their sandbox's namespaces; "": a new one); any other namespace path is refused: it names a host
    namespace.
    """
    cfg = copy.deepcopy(config)
    base = guest_dir(tag, container_id)
    volume_base = guest_dir(volume_tag or tag, container_id)
    root = cfg.get("root") or {}
    binds = [Bind("", "rootfs", True, bool(root.get("readonly")))]
    cfg["root"] = {"path": f"{base}/rootfs", "readonly": bool(root.get("readonly"))}

    mounts = []
    # Binds of one source share one guest path: a mount made under one of them then propagates to
    # the others, as on the host, where the container asks for shared propagation.
    names: dict[tuple[str, bool], str] = {}
    peers: dict[str, str] = {}  # source -> where its first bind with shared propagation is
    for i, mount in enumerate(cfg.get("mounts") or []):
        if is_bind(mount):
            source = mount.get("source", "")
            if not os.path.isabs(source):
                source = os.path.join(bundle, source)
            options = mount.get("options") or []
            readonly = "ro" in options
            name = names.get((source, readonly))
            if name is None:
                name = names[(source, readonly)] = f"mounts/{i}"
                binds.append(Bind(source, name, os.path.isdir(source), readonly))
            mount = {**mount, "source": f"{volume_base}/{name}"}
            destination = mount.get("destination", "")
            if SHARED_PROPAGATION.intersection(options) and isinstance(destination, str):
                first = peers.setdefault(source, destination)
                if first != destination:
                    # runc makes the container's / shared first, so binds of one source are peers;
                    # crun 1.8 binds each from a private copy: bind the first bind instead, which
                    # is shared by then (crun mounts in the config's order, below the rootfs).
                    mount["source"] = f"{base}/rootfs/{first.lstrip('/')}"
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
            ns = {"type": kind, "path": joined} if joined else {"type": kind}
        namespaces.append(ns)
    linux["namespaces"] = namespaces
    linux["cgroupsPath"] = f"/pellucid/{container_id}"
    # Network sysctls belong to a network namespace the container no longer has: the agent sets them
    # on the VM's, which is the container's (see net_sysctls).
    sysctl = linux.get("sysctl") or {}
    if sysctl:
        linux["sysctl"] = {k: v for k, v in sysctl.items() if not k.startswith("net.")}
    resources = linux.get("resources")
    if isinstance(resources, dict):
        linux["resources"] = resources_for_guest(resources)
    linux.pop("mountLabel", None)
    process = cfg.get("process")
    if isinstance(process, dict):
        process.pop("apparmorProfile", None)
        process.pop("selinuxLabel", None)
    return normalise(cfg), binds


def resources_for_guest(resources: dict[str, Any]) -> dict[str, Any]:
    """linux.resources (or an update's) as the guest's cgroups take them. The cpuset names host CPUs
    and NUMA nodes: the VM's host cgroup confines the whole VM to them, and in the guest the
    container has every vCPU of its VM (written there, the host's CPU numbers fail with ERANGE).
    Block I/O limits would name the guest's disks, not the container's (its rootfs is on 9p)."""
    out = {k: v for k, v in resources.items() if k != "blockIO"}
    cpu = out.get("cpu")
    if isinstance(cpu, dict) and ("cpus" in cpu or "mems" in cpu):
        out["cpu"] = {k: v for k, v in cpu.items() if k not in ("cpus", "mems")}
    return out


def _apply(obj: Any, path: list[str], field: str, action: str, reason: str, warn: Callable[[str], None]) -> None:
    """Carry out ``action`` on the field at ``path`` below ``obj`` ("[]": each element of a list)."""
    if not path:
        return
    name, rest = path[0], path[1:]
    if name.endswith("[]"):
        items = obj.get(name[:-2]) if isinstance(obj, dict) else None
        for item in items if isinstance(items, list) else ():
            _apply(item, rest, field, action, reason, warn)
        return
    if not isinstance(obj, dict) or name not in obj or obj[name] in (None, {}, []):
        return  # absent, null or empty: nothing asked for
    if rest:
        _apply(obj[name], rest, field, action, reason, warn)
    elif action == REFUSE:
        raise BundleError(f"config.json: {field} cannot be honoured: {reason}")
    elif action == DROP:
        del obj[name]
        warn(f"config.json: {field} ignored: {reason}")


def normalise(cfg: dict[str, Any], warn: Callable[[str], None] = log.warning) -> dict[str, Any]:
    """Bring a runtime-spec 1.x config (in place) to what the guest's crun 1.8 carries out, following
    :data:`SPEC_ADDITIONS`; refuses what cannot be honoured with a BundleError."""
    for field, _, action, reason in SPEC_ADDITIONS:
        if action != PASS:
            _apply(cfg, field.split("."), field, action, reason, warn)
    for i, mount in enumerate(cfg.get("mounts") or []):
        options = mount.get("options") or []
        if any(o.partition("=")[0] in IDMAP_OPTIONS for o in options if isinstance(o, str)):
            raise BundleError(f"config.json: mounts[{i}] ({mount.get('destination')}): idmapped mounts are not "
                              "supported: the container's files reach the VM over 9p, which cannot be idmapped")
    if "run.oci.seccomp.receiver" in (cfg.get("annotations") or {}):
        raise BundleError("config.json: annotation run.oci.seccomp.receiver cannot be honoured: a seccomp agent "
                          "on the host cannot receive notifications from a VM's kernel")
    for platform in OTHER_PLATFORMS:
        if cfg.pop(platform, None) is not None:
            warn(f"config.json: {platform} ignored: it is for another platform")
    cfg["ociVersion"] = GUEST_OCI_VERSION
    return cfg


def mount_points(config: dict[str, Any], bundle: str) -> list[tuple[str, bool]]:
    """What a read-only root must already hold: (destination, is a directory) for each mount whose
    destination lies on the rootfs itself rather than under an earlier mount (``/dev/pts`` is made
    in ``/dev``'s tmpfs). crun creates the rest after mounting, as runc does. Empty unless
    ``root.readonly``: crun creates the mount points in a writable root itself."""
    if not (config.get("root") or {}).get("readonly"):
        return []
    points: list[tuple[str, bool]] = []
    seen: list[str] = []
    for mount in config.get("mounts") or []:
        destination = os.path.normpath(mount.get("destination") or "/")
        if destination == "/" or any(destination.startswith(d.rstrip("/") + "/") for d in seen):
            seen.append(destination)
            continue
        seen.append(destination)
        is_dir = True
        if is_bind(mount):
            source = mount.get("source", "")
            is_dir = os.path.isdir(source if os.path.isabs(source) else os.path.join(bundle, source))
        points.append((destination, is_dir))
    return points


def net_sysctls(config: dict[str, Any]) -> dict[str, str]:
    """The config's net.* sysctls, for the VM's network namespace."""
    sysctl = (config.get("linux") or {}).get("sysctl") or {}
    return {k: str(v) for k, v in sysctl.items() if k.startswith("net.")}


def process_for_guest(process: dict[str, Any], warn: Callable[[str], None] = log.warning) -> dict[str, Any]:
    """An exec'd process's spec as the guest's crun must see it (:data:`SPEC_ADDITIONS` of process.*)."""
    p = copy.deepcopy(process)
    p.pop("apparmorProfile", None)
    p.pop("selinuxLabel", None)
    for field, _, action, reason in SPEC_ADDITIONS:
        if action != PASS and field.startswith("process."):
            _apply(p, field.split(".")[1:], field, action, reason, warn)
    return p
