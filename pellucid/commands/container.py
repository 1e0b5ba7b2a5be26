"""The OCI lifecycle commands, as runc has them: parse nothing, call pellucid.runtime, print."""

from __future__ import annotations

import json
import os
import sys
import time

from ..errors import ContainerError
from ..store import Store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..cli import Args


def _store(args: Args) -> Store:
    return Store(args.root)


def _config(args: Args):
    from ..config import load
    return load(args.config)


def _print_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def _no_preserved_fds(args: Args) -> None:
    # runc hands file descriptors 3..3+N to the container; they cannot cross into a VM.
    if args.preserve_fds not in ("0", ""):
        raise ContainerError("--preserve-fds is not supported: a container in a VM cannot inherit host file "
                             "descriptors")


def create(args: Args) -> int:
    from ..runtime.create import create as create_container
    _no_preserved_fds(args)
    create_container(_store(args), _config(args), args.id, args.bundle, pid_file=args.pid_file,
                     console_socket=args.console_socket)
    return 0


def run(args: Args) -> int:
    from ..runtime import lifecycle
    from ..runtime.create import create as create_container
    _no_preserved_fds(args)
    store = _store(args)
    shim = create_container(store, _config(args), args.id, args.bundle, pid_file=args.pid_file,
                            console_socket=args.console_socket, detached=args.detach)
    try:
        lifecycle.start(store, args.id)
    except BaseException:
        lifecycle.delete(store, args.id, force=True)
        raise
    if args.detach:
        return 0
    code = shim.wait()
    if not args.keep:
        lifecycle.delete(store, args.id, force=True)
    return code


def start(args: Args) -> int:
    from ..runtime import lifecycle
    lifecycle.start(_store(args), args.id)
    return 0


def state(args: Args) -> int:
    from ..state import oci_state, status
    st = _store(args).load(args.id)
    if st.retired:  # deleted; the state holds only the VM others still use
        from ..errors import NotFound
        raise NotFound("container does not exist")
    _print_json(oci_state(st, status(st)))
    return 0


def kill(args: Args) -> int:
    from ..runtime import lifecycle
    lifecycle.kill(_store(args), args.id, args.signal or "SIGTERM", args.all)
    return 0


def delete(args: Args) -> int:
    from ..runtime import lifecycle
    lifecycle.delete(_store(args), args.id, force=args.force)
    return 0


def _exec_spec(args: Args, store: Store) -> dict:
    from ..oci import bundle
    if args.process:
        return bundle.load_process(args.process)
    if not args.argv:
        raise ContainerError("exec needs a command, or a process with --process")
    base = bundle.load_config(store.load(args.id).bundle).get("process", {})
    process = {"terminal": args.tty, "args": args.argv, "cwd": args.cwd or base.get("cwd", "/"),
               "env": list(base.get("env", [])) + args.env, "user": dict(base.get("user", {"uid": 0, "gid": 0})),
               "noNewPrivileges": args.no_new_privs or base.get("noNewPrivileges", False)}
    for key in ("capabilities", "rlimits", "apparmorProfile", "oomScoreAdj"):
        if key in base:
            process[key] = base[key]
    if args.user:
        uid, _, gid = args.user.partition(":")
        if not uid.isdigit() or (gid and not gid.isdigit()):
            raise ContainerError(f"invalid user {args.user!r}: use UID[:GID]")
        process["user"] = {"uid": int(uid), "gid": int(gid or 0)}
    if args.additional_gids:
        process["user"]["additionalGids"] = [int(g) for g in args.additional_gids]
    return process


def exec_(args: Args) -> int:
    from ..runtime.exec import exec_process
    _no_preserved_fds(args)
    store = _store(args)
    process = _exec_spec(args, store)
    if args.tty:
        process["terminal"] = True
    shim = exec_process(store, args.id, process, pid_file=args.pid_file,
                                  console_socket=args.console_socket, detach=args.detach)
    return 0 if args.detach else shim.wait()


def ps(args: Args) -> int:
    from ..runtime import lifecycle
    if args.format == "json":
        # runc answers with host pids, which callers look up in the host's process table (docker top
        # does). The container's processes run in its VM: they have no host pids to give.
        raise ContainerError("ps --format json: the container's processes run in its VM and have no host "
                             "pids; use ps --format table")
    procs = lifecycle.ps(_store(args), args.id)
    print(f"{'UID':<8} {'PID':>7} {'PPID':>7} {'STAT':<4} CMD")
    for p in procs:
        print(f"{p['uid']:<8} {p['pid']:>7} {p['ppid']:>7} {p['state']:<4} {p['cmd']}")
    return 0


def list_(args: Args) -> int:
    from ..runtime import lifecycle
    states = lifecycle.list_states(_store(args))
    if args.quiet:
        for s in states:
            print(s["id"])
    elif args.format == "json":
        sys.stdout.write(json.dumps(states) + "\n")
    else:
        print(f"{'ID':<20} {'PID':>7} {'STATUS':<10} {'BUNDLE':<40} {'CREATED':<32} OWNER")
        for s in states:
            print(f"{s['id']:<20} {s['pid']:>7} {s['status']:<10} {s['bundle']:<40} {s['created']:<32} {s['owner']}")
    return 0


def pause(args: Args) -> int:
    from ..runtime import lifecycle
    lifecycle.pause(_store(args), args.id)
    return 0


def resume(args: Args) -> int:
    from ..runtime import lifecycle
    lifecycle.resume(_store(args), args.id)
    return 0


def _duration(value: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for unit in ("ms", "s", "m", "h"):
        if value.endswith(unit) and value[:-len(unit)].replace(".", "", 1).isdigit():
            return float(value[:-len(unit)]) * units[unit]
    if value.replace(".", "", 1).isdigit():
        return float(value)
    raise ContainerError(f"invalid duration {value!r}")


def events(args: Args) -> int:
    from ..runtime import lifecycle
    store = _store(args)
    interval = _duration(args.interval)
    if interval <= 0:
        raise ContainerError("duration interval must be greater than 0")
    while True:
        data = lifecycle.stats(store, args.id)
        sys.stdout.write(json.dumps({"type": "stats", "id": args.id, "data": data}) + "\n")
        sys.stdout.flush()
        if args.stats:
            return 0
        time.sleep(interval)


def _size(value: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    v = value.strip().lower().rstrip("b")
    if v and v[-1] in units and v[:-1].isdigit():
        return int(v[:-1]) * units[v[-1]]
    if v.lstrip("-").isdigit():
        return int(v)
    raise ContainerError(f"invalid size {value!r}")


def update(args: Args) -> int:
    from ..runtime import lifecycle
    if args.resources:
        resources = lifecycle.read_json_arg(args.resources)
    else:
        memory = {k: _size(v) for k, v in (("limit", args.memory), ("reservation", args.memory_reservation),
                                            ("swap", args.memory_swap)) if v is not None}
        cpu: dict = {k: int(v) for k, v in (("quota", args.cpu_quota), ("period", args.cpu_period),
                                            ("shares", args.cpu_shares)) if v is not None}
        for k, v in (("cpus", args.cpuset_cpus), ("mems", args.cpuset_mems)):
            if v is not None:
                cpu[k] = v
        resources = {k: v for k, v in (("memory", memory), ("cpu", cpu)) if v}
        if args.pids_limit is not None:
            resources["pids"] = {"limit": int(args.pids_limit)}
    lifecycle.update(_store(args), args.id, resources)
    return 0


def spec(args: Args) -> int:
    from ..oci.default_spec import default_spec
    path = os.path.join(args.bundle, "config.json")
    if os.path.exists(path):
        raise ContainerError("File config.json exists. Remove it first.")
    with open(path, "w") as f:
        json.dump(default_spec(), f, indent="\t")
    return 0


def features(args: Args) -> int:
    from ..oci.features import features as feats
    _print_json(feats())
    return 0
