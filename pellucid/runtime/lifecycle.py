"""The runtime commands. Each is refresh -> guard -> act -> save under the container's lock; the
lock is held for the guard and the state change, never across a long wait on the VM (``kill``,
``ps`` and ``events`` act after releasing it, so that they never queue behind an ``exec``).

Every verb takes a :class:`~pellucid.runtime.interfaces.Host` (the real one by default), through
which all it does outside the state store goes: tests run the verbs on a fake one.
"""

from __future__ import annotations

import json
import os
import signal as signals

from .. import messages, timeline
from ..errors import ContainerError, NotFound, PellucidError, VMError
from ..state import ContainerState, Status, oci_state, status
from ..store import Store
from .layout import shared_dir, vm_dir_of

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .interfaces import Host

MiB = 1 << 20
KILL_CONFIRM_TIMEOUT = 5.0  # for the guest to confirm a SIGKILL, before its VM is stopped from the host
BROKEN_VM_TIMEOUT = 3.0
_NOT_RUNNING = "container not running"


def system_host() -> Host:
    from .system import SystemHost
    return SystemHost()


def run_hooks(host: Host, stage: str, hooks: list[dict], st: ContainerState, current: Status) -> None:
    if hooks:
        host.run_hooks(stage, hooks, oci_state(st, current), st.bundle if os.path.isdir(st.bundle) else None)


def _warn_hooks(host: Host, stage: str, hooks: list[dict], st: ContainerState, current: Status) -> None:
    """Poststart and poststop hooks: the spec makes their failure a warning only."""
    try:
        run_hooks(host, stage, hooks, st, current)
    except PellucidError as err:
        from .. import log
        log.warning(str(err))


def refresh(store: Store, id: str) -> tuple[ContainerState, Status]:
    st = store.load(id)
    if st.retired:  # deleted; its state stays only to hold the VM that others still use
        raise NotFound("container does not exist")
    return st, status(st)


def _call(host: Host, store: Store, st: ContainerState, request: messages.Request, timeout: float = 60.0) -> Any:
    """The agent's checked result record for ``request`` (None for a request without one)."""
    with host.connect(vm_dir_of(store, st)) as agent:
        return agent.call(request, timeout=timeout)


def share_caches(store: Store, st: ContainerState) -> bool:
    """Whether the VM of ``st`` caches its shares (then the host must have it sync or invalidate them)."""
    if st.kind == "container":
        try:
            st = store.load(st.sandbox)
        except NotFound:
            return False
    return bool({st.vm.share_cache, st.vm.volume_cache} & set(messages.SHARE_CACHES_CACHED))


def sync_shares(host: Host, store: Store, st: ContainerState, invalidate: bool) -> None:
    """Have the guest write back what it holds dirty of the shares and, with ``invalidate``, forget
    what it caches of them (a change the host made, e.g. `docker cp` into the container, is then seen)."""
    if share_caches(store, st):
        _call(host, store, st, messages.SyncShares(invalidate))


def start(store: Store, id: str, host: Host | None = None) -> None:
    host = host or system_host()
    with store.lock(id):
        st, now = refresh(store, id)
        if not now.can_start():
            if now is Status.STOPPED:
                raise ContainerError("cannot start a container that has stopped")
            raise ContainerError(f"cannot start an already {now.value} container")
        with timeline.step("start in the VM"):
            result = _call(host, store, st, messages.StartContainer(id))
        if timeline.enabled():  # where the guest says crun spent its time, ending at its answer
            end = timeline.now()
            timeline.span("guest: crun start", end - result.crun_us * 1000, end)
        st.started = True
        store.save(st)
    _warn_hooks(host, "poststart", st.poststart, st, Status.RUNNING)


def state(store: Store, id: str) -> dict[str, Any]:
    st, now = refresh(store, id)
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


def kill(store: Store, id: str, sig: str, all_: bool = False, host: Host | None = None) -> None:
    """Signal the container's process in its VM. SIGKILL does not depend on the guest: one it
    does not confirm within KILL_CONFIRM_TIMEOUT means a broken guest, whose VM is stopped (then
    every container in it has stopped, its shim exiting with 137)."""
    signum = parse_signal(sig)
    host = host or system_host()
    with store.lock(id):
        st, now = refresh(store, id)
        if not now.can_kill():
            raise ContainerError(_NOT_RUNNING)
    request = messages.SignalProcess(st.process, signum, all_)
    if signum != signals.SIGKILL:
        _call(host, store, st, request)
        return
    try:
        _call(host, store, st, request, timeout=KILL_CONFIRM_TIMEOUT)
    except VMError as err:  # no answer (an AgentError is one: the guest refused, and says why)
        _stop_broken_vm(host, store, st, str(err))


def _stop_broken_vm(host: Host, store: Store, st: ContainerState, why: str) -> None:
    from .. import log
    try:
        vm = store.load(st.sandbox) if st.kind == "container" else st
    except NotFound:
        vm = None  # the pod's sandbox is gone, and its VM with it
    log.warning(f"container {st.id}: SIGKILL not confirmed by the guest ({why}): stopping its VM")
    if vm is not None:
        host.stop_vm(vm_dir_of(store, st), vm.monitor_pid, vm.monitor_start, timeout=BROKEN_VM_TIMEOUT,
                     force=True)
    # Its channel closed, the shim exits with 137 on its own; one that does not is killed.
    host.stop_shim(st.pid, st.pid_start, grace=BROKEN_VM_TIMEOUT)


def delete(store: Store, id: str, force: bool = False, host: Host | None = None) -> None:
    host = host or system_host()
    try:
        with store.lock(id):
            st, now = refresh(store, id)
            if not now.can_delete() and not force:
                raise ContainerError(f"cannot delete container {id} that is not stopped: {now.value}")
            if st.kind == "single" and _members(store, st.id):
                _leave_vm(host, store, st, now)  # others joined its namespaces: the VM stays for them
                st.retired = True
                store.save(st)
            else:
                _remove(host, store, st, now)
        if st.kind == "container":
            _release_vm(host, store, st.sandbox)
    except NotFound:
        if force:
            store.remove_abandoned(id)  # a create killed before its first save: nothing else was made
            return
        raise
    _warn_hooks(host, "poststop", st.poststop, st, Status.STOPPED)


def _members(store: Store, vm_owner: str) -> list[str]:
    """The containers other than its owner in the VM of ``vm_owner``."""
    return [m.id for m in store.list(on_error=lambda id, err: None) if m.sandbox == vm_owner and m.id != vm_owner]


def _leave_vm(host: Host, store: Store, st: ContainerState, now: Status) -> None:
    """Remove the container from its VM, leaving the VM and the others in it."""
    try:
        _call(host, store, st, messages.DeleteContainer(st.id), timeout=30)
    except PellucidError:
        pass  # the VM is gone or the container with it: nothing left in the guest
    host.unshare(os.path.join(shared_dir(vm_dir_of(store, st)), st.id))
    if st.pid and now is not Status.STOPPED:
        host.stop_shim(st.pid, st.pid_start)


def _remove(host: Host, store: Store, st: ContainerState, now: Status) -> None:
    """Stop what the container has on the host and in its VM (the VM too, if it owns it) and
    remove its state (under its lock). What need not be waited for (the VM's exit, then its
    cgroup and the directory) is finished after we return, by pellucid.runtime.reaper."""
    if st.kind == "container":
        _leave_vm(host, store, st, now)
        store.remove(st.id)
        return
    from . import reaper
    vm_dir = vm_dir_of(store, st)
    with timeline.step("ask the VM to stop"):
        host.stop_vm(vm_dir, st.monitor_pid, st.monitor_start, wait=False)
    if st.netns:  # the taps, also those of a create killed before it recorded them
        with timeline.step("network tear-down"):
            host.disconnect_network(st.netns, st.network.nics, vm_dir)
    if st.pid and now is not Status.STOPPED:
        with timeline.step("stop the shim"):
            host.stop_shim(st.pid, st.pid_start)
    with timeline.step("unmount the share and netns"):
        host.unmount_all(store.dir(st.id))  # the container's root is free for its engine now
    with timeline.step("bury the state, detach the reaper"):
        grave = store.bury(st.id)
        host.in_background(lambda: reaper.reap(host, grave, st))


def _release_vm(host: Host, store: Store, vm_owner: str) -> None:
    """The VM lives while any container in it lives: once the last one is deleted, a VM whose
    owner was deleted before (and stayed only to hold it) is stopped and its state removed."""
    try:
        with store.lock(vm_owner):
            owner = store.load(vm_owner)
            if owner.retired and not _members(store, vm_owner):
                _remove(host, store, owner, Status.STOPPED)
    except NotFound:
        pass


def pause(store: Store, id: str, host: Host | None = None) -> None:
    host = host or system_host()
    with store.lock(id):
        st, now = refresh(store, id)
        if not now.can_pause():
            raise ContainerError(f"cannot pause a {now.value} container")
        _call(host, store, st, messages.PauseContainer(id))
        sync_shares(host, store, st, invalidate=False)  # `docker commit` reads the rootfs of a paused container
        st.paused = True
        store.save(st)


def resume(store: Store, id: str, host: Host | None = None) -> None:
    host = host or system_host()
    with store.lock(id):
        st, now = refresh(store, id)
        if not now.can_resume():
            raise ContainerError(f"cannot resume a {now.value} container")
        _call(host, store, st, messages.ResumeContainer(id))
        st.paused = False
        store.save(st)


def _inspectable(store: Store, id: str) -> ContainerState:
    with store.lock(id, shared=True):
        st, now = refresh(store, id)
        if not now.can_inspect():
            raise ContainerError(_NOT_RUNNING)
    return st


def ps(store: Store, id: str, host: Host | None = None) -> list[dict[str, Any]]:
    """The container's processes as the guest reports them, checked (the guest is not trusted)."""
    host = host or system_host()
    st = _inspectable(store, id)
    result = _call(host, store, st, messages.Ps(id))
    return [{"pid": p.pid, "ppid": p.ppid, "uid": p.uid, "state": p.state, "cmd": p.cmd} for p in result.processes]


def stats(store: Store, id: str, host: Host | None = None) -> dict[str, Any]:
    host = host or system_host()
    st = _inspectable(store, id)
    return _call(host, store, st, messages.Stats(id)).to_json()


def update(store: Store, id: str, resources: dict[str, Any], host: Host | None = None) -> None:
    host = host or system_host()
    with store.lock(id):
        st, now = refresh(store, id)
        if not now.can_inspect():
            raise ContainerError(_NOT_RUNNING)
        vm_mib = st.vm.memory_mib
        limit = (resources.get("memory") or {}).get("limit")
        if isinstance(limit, int) and vm_mib and limit > vm_mib * MiB:
            raise ContainerError(f"cannot set a memory limit of {limit >> 20} MiB: the container's VM has "
                                 f"{vm_mib} MiB (recreate the container with a larger limit)")
        cpus = st.vm.vcpus
        cpu = resources.get("cpu") or {}
        quota, period = cpu.get("quota"), cpu.get("period") or 100000
        if isinstance(quota, int) and quota > 0 and cpus and quota / period > cpus:
            raise ContainerError(f"cannot give the container {quota / period:g} CPUs: its VM has {cpus} vCPUs")
        from .guest_config import resources_for_guest
        _call(host, store, st, messages.UpdateContainer(id, resources_for_guest(resources)))
        if st.kind != "container" and st.cgroup.dirs:
            host.update_cgroup(st.cgroup, resources)  # the VM's host limits follow its container's


def list_states(store: Store) -> list[dict[str, Any]]:
    return [oci_state(st, status(st)) for st in store.list() if not st.retired]


def read_json_arg(value: str) -> dict[str, Any]:
    """A JSON object from a file, or from stdin for "-"."""
    import sys
    try:
        data = json.load(sys.stdin) if value == "-" else json.load(open(value))
    except (OSError, ValueError) as err:
        raise ContainerError(f"cannot read {value}: {err}") from err
    if not isinstance(data, dict):
        raise ContainerError(f"{value}: not a JSON object")
    return data
