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


MAX_ID = 0xFFFFFFFE  # the largest uid or gid (2^32-1 is "none")
MAX_INT64 = (1 << 63) - 1
MAX_INTERVAL = 86400.0


def _store(args: Args) -> Store:
    return Store(args.root)


def _config(args: Args):
    from ..config import load
    return load(args.config)


def _print_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def _integer(flag: str, value: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """A flag's integer value, or an error naming the flag."""
    try:
        number = int(value, 10)
    except ValueError:
        raise ContainerError(f"invalid value {value!r} for flag {flag}: not an integer") from None
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        bounds = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ContainerError(f"invalid value {value!r} for flag {flag}: must be {bounds}")
    return number


def _no_preserved_fds(args: Args) -> None:
    # runc hands file descriptors 3..3+N to the container; they cannot cross into a VM.
    if _integer("--preserve-fds", args.preserve_fds or "0", 0) != 0:
        raise ContainerError("--preserve-fds is not supported: a container in a VM cannot inherit host file "
                             "descriptors")


def create(args: Args) -> int:
    from ..runtime.create import create as create_container
    _no_preserved_fds(args)
    create_container(_store(args), _config(args), args.id, args.bundle, pid_file=args.pid_file,
                     console_socket=args.console_socket, systemd_cgroup=args.systemd_cgroup)
    return 0


def run(args: Args) -> int:
    from ..runtime import lifecycle
    from ..runtime.create import create as create_container
    _no_preserved_fds(args)
    store = _store(args)
    shim = create_container(store, _config(args), args.id, args.bundle, pid_file=args.pid_file,
                            console_socket=args.console_socket, detached=args.detach,
                            systemd_cgroup=args.systemd_cgroup)
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
    user = _exec_user(args)  # the flags first: a bad one is reported whatever the container
    if args.cwd and not args.cwd.startswith("/"):
        raise ContainerError(f"invalid value {args.cwd!r} for flag --cwd: must be an absolute path")
    for var in args.env:
        if not var.partition("=")[0] or "=" not in var or "\0" in var:
            raise ContainerError(f"invalid value {var!r} for flag --env: use NAME=value")
    base = bundle.load_config(store.load(args.id).bundle).get("process", {})
    process = {"terminal": args.tty, "args": args.argv, "cwd": args.cwd or base.get("cwd", "/"),
               "env": list(base.get("env", [])) + args.env, "user": dict(base.get("user", {"uid": 0, "gid": 0})),
               "noNewPrivileges": args.no_new_privs or base.get("noNewPrivileges", False)}
    for key in ("capabilities", "rlimits", "apparmorProfile", "oomScoreAdj"):
        if key in base:
            process[key] = base[key]
    if user:
        process["user"] = {**user} if "uid" in user else {**process["user"], **user}
    return process


def _exec_user(args: Args) -> dict:
    """What --user and --additional-gids set of the process's user, checked."""
    user: dict = {}
    if args.user:
        uid, _, gid = args.user.partition(":")
        if not uid.isdigit() or (gid and not gid.isdigit()) or int(uid) > MAX_ID or int(gid or 0) > MAX_ID:
            raise ContainerError(f"invalid value {args.user!r} for flag --user: use UID[:GID], numbers up to {MAX_ID}")
        user = {"uid": int(uid), "gid": int(gid or 0)}
    if args.additional_gids:
        user["additionalGids"] = [_integer("--additional-gids", g, 0, MAX_ID) for g in args.additional_gids]
    return user


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


def _check_format(args: Args) -> None:
    if args.format not in ("table", "json"):
        raise ContainerError(f"invalid value {args.format!r} for flag --format: use table or json")


def ps(args: Args) -> int:
    from ..runtime import lifecycle
    _check_format(args)
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
    _check_format(args)
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
    """A Go-style duration ("500ms", "5s", "1m"; a bare number is seconds), up to a day."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    number, scale = value, 1.0
    for unit in ("ms", "s", "m", "h"):
        if value.endswith(unit):
            number, scale = value[:-len(unit)], units[unit]
            break
    if not number.replace(".", "", 1).isdigit():
        raise ContainerError(f"invalid value {value!r} for flag --interval: not a duration such as 5s or 500ms")
    seconds = float(number) * scale
    if not 0 < seconds <= MAX_INTERVAL:
        raise ContainerError(f"invalid value {value!r} for flag --interval: must be greater than 0 and at most 24h")
    return seconds


def events(args: Args) -> int:
    from ..runtime import lifecycle
    store = _store(args)
    interval = _duration(args.interval)
    while True:
        data = lifecycle.stats(store, args.id)
        sys.stdout.write(json.dumps({"type": "stats", "id": args.id, "data": data}) + "\n")
        sys.stdout.flush()
        if args.stats:
            return 0
        time.sleep(interval)


def _size(flag: str, value: str) -> int:
    """Bytes from "512m", "1g", "1048576" (or -1: unlimited), as runc update takes them."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    v = value.strip().lower().rstrip("b")
    if v and v[-1] in units and v[:-1].isdigit():
        size = int(v[:-1]) * units[v[-1]]
    elif v.isdigit() or v == "-1":
        size = int(v)
    else:
        raise ContainerError(f"invalid value {value!r} for flag {flag}: not a size such as 512m, 1g or -1")
    if size > MAX_INT64:
        raise ContainerError(f"invalid value {value!r} for flag {flag}: too large")
    return size


def _cpu_list(flag: str, value: str) -> str:
    """A cpuset list such as "0-3,6" (checked here: the guest writes it to cgroupfs)."""
    for part in value.split(","):
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and (not high.isdigit() or int(high) < int(low))):
            raise ContainerError(f"invalid value {value!r} for flag {flag}: not a list such as 0-3,6")
    return value


def update(args: Args) -> int:
    from ..runtime import lifecycle
    if args.resources:
        resources = lifecycle.read_json_arg(args.resources)
    else:
        memory = {k: _size(f"--{flag}", v) for k, flag, v in (
            ("limit", "memory", args.memory), ("reservation", "memory-reservation", args.memory_reservation),
            ("swap", "memory-swap", args.memory_swap)) if v is not None}
        cpu: dict = {k: _integer(f"--{flag}", v, low, MAX_INT64) for k, flag, low, v in (
            ("quota", "cpu-quota", -1, args.cpu_quota), ("period", "cpu-period", 0, args.cpu_period),
            ("shares", "cpu-shares", 0, args.cpu_shares)) if v is not None}
        for k, flag, v in (("cpus", "cpuset-cpus", args.cpuset_cpus), ("mems", "cpuset-mems", args.cpuset_mems)):
            if v is not None:
                cpu[k] = _cpu_list(f"--{flag}", v)
        resources = {k: v for k, v in (("memory", memory), ("cpu", cpu)) if v}
        if args.pids_limit is not None:
            resources["pids"] = {"limit": _integer("--pids-limit", args.pids_limit, -1, MAX_INT64)}
        # Checked, then left out as at create: cgroup v2 has no kernel memory limit, and the host's
        # block devices are not the guest's.
        if args.kernel_memory is not None:
            _size("--kernel-memory", args.kernel_memory)
        if args.blkio_weight is not None:
            _integer("--blkio-weight", args.blkio_weight, 10, 1000)
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
