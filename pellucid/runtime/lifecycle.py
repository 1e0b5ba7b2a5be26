"""The runtime commands. Each follows refresh -> guard -> act -> save, under the container's lock."""

from __future__ import annotations

import json
import os
import signal as signals

from ..errors import ContainerError, NotFound, PellucidError
from ..state import ContainerState, Status, Store, oci_state, status
from . import mounts, sandbox

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MiB = 1 << 20


def vm_dir_of(store: Store, st: ContainerState) -> str:
    return os.path.join(store.dir(st.sandbox or st.id), "vm")


def run_hooks(stage: str, hooks: list[dict], st: ContainerState, current: Status) -> None:
    if hooks:
        from ..oci import hooks as oci_hooks
        oci_hooks.run_hooks(stage, hooks, oci_state(st, current), cwd=st.bundle if os.path.isdir(st.bundle) else None)


def _running(store: Store, id: str) -> tuple[ContainerState, Status]:
    st = store.load(id)
    return st, status(st)


def _agent(store: Store, st: ContainerState):
    return sandbox.connect(vm_dir_of(store, st))


def _call(store: Store, st: ContainerState, op: str, args: dict[str, Any], timeout: float = 60.0) -> Any:
    client = _agent(store, st)
    try:
        return client.call(op, args, timeout=timeout)
    finally:
        client.sock.close()


def start(store: Store, id: str) -> None:
    with store.lock(id):
        st, now = _running(store, id)
        if now is Status.STOPPED:
            raise ContainerError("cannot start a container that has stopped")
        if now is not Status.CREATED:
            raise ContainerError(f"cannot start an already {now.value} container")
        _call(store, st, "start_container", {"id": id})
        st.started = True
        store.save(st)
    try:
        run_hooks("poststart", st.extra.get("poststart") or [], st, Status.RUNNING)
    except PellucidError as err:  # the spec: a failing poststart hook is a warning only
        from .. import log
        log.warning(str(err))


def state(store: Store, id: str) -> dict[str, Any]:
    st, now = _running(store, id)
    return oci_state(st, now)


def parse_signal(value: str) -> int:
    """A signal by number, name or name without SIG, as runc takes it."""
    if value.isdigit():
        number = int(value)
        if 0 < number < 65:
            return number
    else:
        name = value.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        sig = getattr(signals.Signals, name, None) if name in signals.Signals.__members__ else None
        if sig is not None:
            return int(sig)
    raise ContainerError(f"invalid signal {value!r}")


def kill(store: Store, id: str, sig: str, all_: bool = False) -> None:
    signum = parse_signal(sig)
    with store.lock(id):
        st, now = _running(store, id)
        if now not in (Status.CREATED, Status.RUNNING, Status.PAUSED):
            raise ContainerError("container not running")
        _call(store, st, "signal_process", {"process": st.extra["process"], "signal": signum, "all": all_})


def delete(store: Store, id: str, force: bool = False) -> None:
    try:
        lock = store.lock(id)
        lock.__enter__()
    except NotFound:
        if force:
            return
        raise
    try:
        st, now = _running(store, id)
        if now not in (Status.STOPPED, Status.CREATED) and not force:
            raise ContainerError(f"cannot delete container {id} that is not stopped: {now.value}")
        vm_dir = vm_dir_of(store, st)
        if st.kind == "container":
            try:
                _call(store, st, "delete_container", {"id": id}, timeout=30)
            except PellucidError:
                pass
            mounts.remove_tree(os.path.join(sandbox.shared_dir(vm_dir), id))
        else:
            sandbox.stop(vm_dir)
            nics = (st.extra.get("network") or {}).get("nics", [])
            if nics:
                from . import network
                network.disconnect(st.extra.get("netns", ""), nics)
        if st.pid and now is not Status.STOPPED:
            try:
                os.kill(st.pid, signals.SIGKILL)
            except ProcessLookupError:
                pass
        if st.kind != "container":
            mounts.unmount_all(store.dir(id))
        store.remove(id)
    finally:
        lock.__exit__(None, None, None)
    try:
        run_hooks("poststop", st.extra.get("poststop") or [], st, Status.STOPPED)
    except PellucidError as err:  # the spec: a failing poststop hook is a warning only
        from .. import log
        log.warning(str(err))


def _guarded(store: Store, id: str, op: str, allowed: tuple[Status, ...], verb: str,
             paused: bool | None = None) -> None:
    with store.lock(id):
        st, now = _running(store, id)
        if now not in allowed:
            raise ContainerError(f"cannot {verb} a {now.value} container")
        _call(store, st, op, {"id": id})
        if paused is not None:
            st.paused = paused
            store.save(st)


def pause(store: Store, id: str) -> None:
    _guarded(store, id, "pause_container", (Status.RUNNING, Status.CREATED), "pause", paused=True)


def resume(store: Store, id: str) -> None:
    _guarded(store, id, "resume_container", (Status.PAUSED,), "resume", paused=False)


def ps(store: Store, id: str) -> list[dict[str, Any]]:
    """The container's processes as the guest reports them, checked (the guest is not trusted)."""
    st, now = _running(store, id)
    if now is Status.STOPPED:
        raise ContainerError("container not running")
    result = _call(store, st, "ps", {"id": id})
    procs = []
    for entry in result if isinstance(result, list) else []:
        if not isinstance(entry, dict):
            continue
        fields = {k: entry.get(k) for k in ("pid", "ppid", "uid")}
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in fields.values()):
            continue
        state, cmd = entry.get("state"), entry.get("cmd")
        procs.append({**fields, "state": state[:4] if isinstance(state, str) else "?",
                      "cmd": cmd[:4096] if isinstance(cmd, str) else ""})
    return procs


def stats(store: Store, id: str) -> dict[str, Any]:
    st, now = _running(store, id)
    if now is Status.STOPPED:
        raise ContainerError("container not running")
    result = _call(store, st, "stats", {"id": id})
    if not isinstance(result, dict):
        raise ContainerError("the agent sent invalid stats")
    return result


def update(store: Store, id: str, resources: dict[str, Any]) -> None:
    with store.lock(id):
        st, now = _running(store, id)
        if now is Status.STOPPED:
            raise ContainerError("container not running")
        vm_mib = (st.extra.get("vm") or {}).get("memory_mib", 0)
        limit = (resources.get("memory") or {}).get("limit")
        if isinstance(limit, int) and vm_mib and limit > vm_mib * MiB:
            raise ContainerError(f"cannot set a memory limit of {limit >> 20} MiB: the container's VM has "
                                 f"{vm_mib} MiB (recreate the container with a larger limit)")
        cpus = (st.extra.get("vm") or {}).get("vcpus", 0)
        cpu = resources.get("cpu") or {}
        quota, period = cpu.get("quota"), cpu.get("period") or 100000
        if isinstance(quota, int) and quota > 0 and cpus and quota / period > cpus:
            raise ContainerError(f"cannot give the container {quota / period:g} CPUs: its VM has {cpus} vCPUs")
        _call(store, st, "update_container", {"id": id, "resources": resources})


def list_states(store: Store) -> list[dict[str, Any]]:
    return [oci_state(st, status(st)) for st in store.list()]


def read_json_arg(value: str) -> dict[str, Any]:
    """A JSON object from a file, or from stdin for "-"."""
    import sys
    try:
        data = json.load(sys.stdin) if value == "-" else json.load(open(value))
    except (OSError, ValueError) as err:
        raise ContainerError(f"cannot read {value}: {err}") from None
    if not isinstance(data, dict):
        raise ContainerError(f"{value}: not a JSON object")
    return data
