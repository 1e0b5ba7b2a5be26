"""The runtime commands. Each follows refresh -> guard -> act -> save, under the container's lock."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal as signals
from typing import Any, Callable

from .. import config as config_mod
from ..errors import BundleError, ContainerError, NotFound, PellucidError
from ..oci import bundle as oci
from ..state import ContainerState, Status, Store, oci_state, proc_start_time, status
from . import guest_config, mounts, netns, network, sandbox
from .shims import ShimHandle

MiB = 1 << 20


def _vm_dir(store: Store, st: ContainerState) -> str:
    return os.path.join(store.dir(st.sandbox or st.id), "vm")


def _hooks(stage: str, hooks: list[dict], st: ContainerState, current: Status) -> None:
    if hooks:
        from ..oci.hooks import run_hooks
        run_hooks(stage, hooks, oci_state(st, current), cwd=st.bundle if os.path.isdir(st.bundle) else None)


def _network_namespace(config: dict[str, Any]) -> tuple[bool, str]:
    """(whether the container has a network namespace of its own, its path if the config names one)."""
    for ns in (config.get("linux") or {}).get("namespaces") or []:
        if ns.get("type") == "network":
            return True, ns.get("path") or ""
    return False, ""


def _uses_docker_dns(config: dict[str, Any], bundle: str) -> bool:
    """Whether the container's resolv.conf names Docker's embedded DNS server (user-defined networks)."""
    for mount in config.get("mounts") or []:
        if mount.get("destination") == "/etc/resolv.conf" and guest_config.is_bind(mount):
            source = mount.get("source", "")
            try:
                with open(source if os.path.isabs(source) else os.path.join(bundle, source)) as f:
                    return any(line.split()[:2] == ["nameserver", "127.0.0.11"] for line in f.read(65536).splitlines())
            except OSError:
                return False
    return False


def vm_size(cfg: config_mod.Config, config: dict[str, Any]) -> tuple[int, int]:
    """vCPUs and MiB for a VM: the configured defaults, plus what the OCI limits ask for."""
    resources = (config.get("linux") or {}).get("resources") or {}
    memory = cfg.hypervisor.memory_mib
    limit = (resources.get("memory") or {}).get("limit")
    if isinstance(limit, int) and limit > 0:
        memory += math.ceil(limit / MiB)
    vcpus = cfg.hypervisor.vcpus
    cpu = resources.get("cpu") or {}
    quota, period = cpu.get("quota"), cpu.get("period")
    if isinstance(quota, int) and isinstance(period, int) and quota > 0 and period > 0:
        vcpus = max(vcpus, math.ceil(quota / period))
    return min(vcpus, os.cpu_count() or 1), memory


def _write_pid_file(path: str, pid: int) -> None:
    """Atomically, as runc does: containerd reads it as soon as the command returns."""
    if not path:
        return
    path = os.path.abspath(path)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.replace(tmp, path)


class _Undo:
    """Rollback steps for a command that fails half-way: run in reverse, errors swallowed."""

    def __init__(self) -> None:
        self.steps: list[Callable[[], None]] = []

    def push(self, step: Callable[[], None]) -> None:
        self.steps.append(step)

    def run(self) -> None:
        for step in reversed(self.steps):
            try:
                step()
            except Exception:
                pass


def create(store: Store, cfg: config_mod.Config, id: str, bundle: str, *, pid_file: str = "",
           console_socket: str = "", detached: bool = True) -> ShimHandle:
    """Boot (or join) the VM, create the container in it, stopped before its user process runs."""
    oci.validate_id(id)
    bundle = os.path.abspath(bundle)
    config = oci.load_config(bundle)
    rootfs = oci.rootfs_path(bundle, config)
    process = config["process"]
    terminal = bool(process.get("terminal"))
    if terminal and detached and not console_socket:
        raise ContainerError("cannot allocate tty if pellucid will detach without setting console socket")
    if console_socket and not terminal:
        raise ContainerError("cannot use console socket if pellucid will not detach or allocate tty")
    kind, sandbox_id = oci.sandbox_of(config)
    own_netns, netns_path = _network_namespace(config)
    if kind != "container" and not own_netns:
        raise BundleError("the host network namespace cannot be shared with a VM: each container runs in a "
                          "VM with a network stack of its own (use a network namespace, not host networking)")
    hooks = {stage: oci.hooks_of(config, stage) for stage in ("prestart", "createRuntime", "poststart",
                                                               "poststop")}
    with store.create(id, bundle=bundle, rootfs=rootfs, created=_now(), kind=kind,
                      sandbox=sandbox_id if kind == "container" else id,
                      annotations=config.get("annotations") or {}) as st:
        undo = _Undo()
        try:
            if kind == "container":
                try:
                    parent = store.load(sandbox_id or "")
                except NotFound:
                    raise ContainerError(f"sandbox {sandbox_id} of container {id} does not exist") from None
                vm_dir = _vm_dir(store, parent)
                netns_path = parent.extra.get("netns", "")
            else:
                vm_dir = os.path.join(store.dir(id), "vm")
                os.makedirs(vm_dir)
                if not netns_path:
                    netns_path = os.path.join(vm_dir, "netns")
                    netns.pin_new(netns_path)
                    undo.push(lambda: netns.release(netns_path))
            shim = ShimHandle(netns_path or None)
            undo.push(shim.abort)
            st.pid, st.pid_start = shim.pid, proc_start_time(shim.pid) or 0
            st.extra = {"netns": netns_path, "poststart": hooks["poststart"], "poststop": hooks["poststop"],
                        "terminal": terminal}
            store.save(st)
            _hooks("prestart", hooks["prestart"], st, Status.CREATING)
            _hooks("createRuntime", hooks["createRuntime"], st, Status.CREATING)
            timeout = cfg.hypervisor.boot_timeout + 30
            if kind != "container":
                # After the hooks: Docker's prestart hook is what moves the container's veth in.
                net = network.connect(netns_path, cfg.network.mode)
                net["dns_relay"] = _uses_docker_dns(config, bundle)
                st.extra["network"] = net
                undo.push(lambda: network.disconnect(netns_path, net["nics"]))
                vcpus, memory = vm_size(cfg, config)
                undo.push(lambda: sandbox.stop(vm_dir))
                st.extra["vm"] = sandbox.launch(vm_dir, {"id": id, "config": cfg.path, "vcpus": vcpus,
                                                         "memory_mib": memory, "netns": netns_path,
                                                         "network": net}, timeout)
            guest_cfg, binds = guest_config.translate(config, bundle, id, sandbox.SHARE_TAG)
            container_dir = os.path.join(sandbox.shared_dir(vm_dir), id)
            undo.push(lambda: shutil.rmtree(container_dir, ignore_errors=True))
            undo.push(lambda: mounts.unmount_all(container_dir))
            mounts.make_binds(container_dir, rootfs, binds)
            report = shim.send({"monitor": os.path.join(vm_dir, sandbox.MONITOR_SOCKET), "op": "create_container",
                                "args": {"id": id, "config": guest_cfg, "tty": terminal},
                                "console_socket": console_socket}, timeout)
            st.extra.update(process=report["process"], guest_pid=report.get("guest_pid"))
            _write_pid_file(pid_file, shim.pid)
        except BaseException:
            undo.run()
            raise
    return shim


def _now() -> str:
    from ..state import now_rfc3339
    return now_rfc3339()


def _running(store: Store, id: str) -> tuple[ContainerState, Status]:
    st = store.load(id)
    return st, status(st)


def _agent(store: Store, st: ContainerState):
    return sandbox.connect(_vm_dir(store, st))


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
        _hooks("poststart", st.extra.get("poststart") or [], st, Status.RUNNING)
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
        vm_dir = _vm_dir(store, st)
        if st.kind == "container":
            try:
                _call(store, st, "delete_container", {"id": id}, timeout=30)
            except PellucidError:
                pass
            mounts.unmount_all(os.path.join(sandbox.shared_dir(vm_dir), id))
        else:
            sandbox.stop(vm_dir)
            network.disconnect(st.extra.get("netns", ""), (st.extra.get("network") or {}).get("nics", []))
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
        _hooks("poststop", st.extra.get("poststop") or [], st, Status.STOPPED)
    except PellucidError as err:  # the spec: a failing poststop hook is a warning only
        from .. import log
        log.warning(str(err))


def exec_process(store: Store, id: str, process: dict[str, Any], *, pid_file: str = "",
                 console_socket: str = "", detach: bool = False) -> ShimHandle:
    st, now = _running(store, id)
    if now is Status.PAUSED:
        raise ContainerError("cannot exec in a paused container")
    if now not in (Status.CREATED, Status.RUNNING):
        raise ContainerError(f"cannot exec in a {now.value} container")
    terminal = bool(process.get("terminal"))
    if terminal and detach and not console_socket:
        raise ContainerError("cannot allocate tty if pellucid will detach without setting console socket")
    shim = ShimHandle(st.extra.get("netns") or None)
    try:
        shim.send({"monitor": os.path.join(_vm_dir(store, st), sandbox.MONITOR_SOCKET), "op": "exec_process",
                   "args": {"id": id, "process_spec": guest_config.process_for_guest(process)},
                   "console_socket": console_socket}, 60)
        _write_pid_file(pid_file, shim.pid)
    except BaseException:
        shim.abort()
        raise
    return shim


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
    st, now = _running(store, id)
    if now is Status.STOPPED:
        raise ContainerError("container not running")
    result = _call(store, st, "ps", {"id": id})
    return result if isinstance(result, list) else []


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
