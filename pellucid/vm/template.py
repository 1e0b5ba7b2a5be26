"""VM templates: a VM booted once to a ready agent, saved, and started again as copy-on-write clones.

A template's guest RAM is a file on tmpfs (``memory-backend-file``, ``share=on``); once the agent has
finished its start-up, QEMU is paused and its device state saved without the RAM (the migration
capability ``x-ignore-shared``). A clone is a QEMU with the same devices in the same order, the RAM
file mapped private (``share=off``: its writes are its own), started ``-S -incoming defer`` and
loaded from the saved state; after ``cont`` the agent carries on from the save, and its first
request (``clone_resumed``) reseeds the guest's RNG, sets its clock and gives its NICs their MACs.

What a clone may differ in from its template (the per-clone parts of the command line): its name,
pid file, channels, console, the backends of its NIC slots (a template's are connected to nothing;
a clone's are the container's taps, unused slots connected to nothing) and the host directories of its
9p shares (a template never mounts them: QEMU blocks migration once the guest mounts 9p). Everything
else is the template's *key*: QEMU binary, kernel, root image, accelerator, CPU model, machine and
devices, memory and vCPUs, the protocol version. Templates are built on first need under a lock
(concurrent builders wait for one build) in ``DIR/<key>/`` with a manifest that holds checksums of
the RAM file and the state; a template whose key or checksums do not match is rebuilt.

Nothing may discard a clone's RAM: QEMU 7.2 punches holes in the backing file even for a private
mapping, so a balloon, free page reporting, virtio-mem or postcopy would zero the template for every
clone. The command line has none of them.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, replace
from typing import Any

from .. import messages, protocol
from ..config import Config
from ..errors import AgentError, PellucidError, VMError
from .assets import resolve
from .machine import VM, BootTimeline
from .qemu_args import Nic, Share, VMSpec, build_argv
from .qmp import QMP
from .size_class import SizeClass
from .spec import make_spec

RECIPE = "template-1"  # bump when how a template is made or resumed changes
MANIFEST, RAM, STATE = "manifest.json", "ram", "state"
#: virtio-net migrates the MAC and the MTU the guest saw at boot: a template's NIC slots have these,
#: and the agent gives each clone's NICs the container's MACs (and MTUs up to this one)
SLOT_MTU = 1500
ENTROPY_BYTES = 64
MAX_MANIFEST = 1 << 20
HASH_CHUNK = 4 << 20


class TemplateError(PellucidError):
    """A template could not be built, is invalid, or does not fit the VM asked for."""


@dataclass(frozen=True)
class Shape:
    """What a template fixes beyond the assets: its size, its NIC slots and its 9p share tags."""

    memory_mib: int
    vcpus: int
    nic_slots: int = 1
    share_tags: tuple[str, ...] = ()


def slot_mac(i: int) -> str:
    """The MAC of NIC slot ``i`` in every template (locally administered, unicast)."""
    return f"02:70:6c:74:00:{i:02x}"


def shape_of(spec: VMSpec, nic_slots: int = 1) -> Shape:
    """The shape of template a VM of this spec can be cloned from."""
    return Shape(memory_mib=spec.memory_mib, vcpus=spec.vcpus, nic_slots=max(nic_slots, len(spec.nics)),
                 share_tags=tuple(s.tag for s in spec.shares))


def fits(spec: VMSpec, shape: Shape) -> str:
    """Why a VM of this spec cannot be a clone of a template of that shape ("" if it can)."""
    if (spec.memory_mib, spec.vcpus) != (shape.memory_mib, shape.vcpus):
        return f"size {spec.memory_mib} MiB/{spec.vcpus} vCPUs is not the template's"
    if len(spec.nics) > shape.nic_slots:
        return f"{len(spec.nics)} NICs, the template has {shape.nic_slots} slots"
    if any(n.mtu > SLOT_MTU for n in spec.nics):
        return f"an MTU above {SLOT_MTU}"
    if tuple(s.tag for s in spec.shares) != shape.share_tags or any(s.readonly for s in spec.shares):
        return "its 9p shares are not the template's"
    return ""


# Pure builders: the template's and a clone's specs, and the command line they must share.

def template_spec(spec: VMSpec, shape: Shape, ram_file: str, scratch: str) -> VMSpec:
    """The template VM for ``spec``'s configuration: NIC slots connected to nothing, 9p shares of an empty directory."""
    return replace(spec, name="pellucid-template", memory_mib=shape.memory_mib, vcpus=shape.vcpus,
                   nics=tuple(Nic(mac=slot_mac(i), mtu=SLOT_MTU) for i in range(shape.nic_slots)),
                   shares=tuple(Share(tag, scratch) for tag in shape.share_tags),
                   ram_file=ram_file, ram_shared=True, incoming=False)


def clone_spec(spec: VMSpec, shape: Shape, ram_file: str) -> VMSpec:
    """A clone for ``spec``: its NICs' backends in the template's slots (unused ones connected to nothing),
    the template's RAM mapped private, waiting for the saved state."""
    why = fits(spec, shape)
    if why:
        raise TemplateError(f"this VM cannot be a clone of the template: {why}")
    nics = tuple(Nic(mac=slot_mac(i), tap=n.tap, fd=n.fd, mtu=SLOT_MTU) for i, n in enumerate(spec.nics))
    nics += tuple(Nic(mac=slot_mac(i), mtu=SLOT_MTU) for i in range(len(nics), shape.nic_slots))
    return replace(spec, nics=nics, ram_file=ram_file, ram_shared=False, incoming=True)


def layout_argv(spec: VMSpec) -> list[str]:
    """The command line with every per-clone part made a placeholder: what template and clone share."""
    canonical = replace(spec, name="pellucid", pidfile="", agent_fd=3, qmp_fd=4, console_file="",
                        nics=tuple(Nic(mac=n.mac, mtu=n.mtu) for n in spec.nics),
                        shares=tuple(Share(s.tag, "SHARE", s.readonly) for s in spec.shares),
                        ram_file="RAM" if spec.ram_file else "", ram_shared=True, incoming=False)
    return build_argv(canonical)


def file_identity(path: str) -> str:
    """A file's path and what changes when it is replaced (an upgrade): size, inode, mtime."""
    st = os.stat(path)
    return f"{path}:{st.st_size}:{st.st_ino}:{st.st_mtime_ns}"


def template_key(layout: list[str], qemu_identity: str, kernel_id: str, image_id: str) -> str:
    """The key a template is stored under: everything a clone must share with it."""
    doc = json.dumps({"recipe": RECIPE, "protocol": protocol.VERSION, "qemu": qemu_identity,
                      "kernel": kernel_id, "image": image_id, "argv": layout}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:32]


# The store.

@dataclass(frozen=True)
class Template:
    dir: str
    key: str
    manifest: dict[str, Any]

    @property
    def ram(self) -> str:
        return os.path.join(self.dir, RAM)

    @property
    def state(self) -> str:
        return os.path.join(self.dir, STATE)

    @property
    def shape(self) -> Shape:
        s = self.manifest["shape"]
        return Shape(memory_mib=s["memory_mib"], vcpus=s["vcpus"], nic_slots=s["nic_slots"],
                     share_tags=tuple(s["share_tags"]))


def _private_dir(path: str) -> None:
    """Make ``path`` a directory only root (we) can enter; refuse one someone else made."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not os.path.isdir(path) or os.path.islink(path) or st.st_uid != os.getuid():
        raise TemplateError(f"template directory {path} is not a directory of our own")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _read_manifest(path: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(path, MANIFEST), "rb") as f:
            data = json.loads(f.read(MAX_MANIFEST))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def problems(template: Template, *, full: bool) -> list[str]:
    """What is wrong with a stored template: files, modes, sizes, the state's checksum, and with
    ``full`` the RAM file's (hashing the RAM takes a while: done at build and by `template verify`)."""
    m = template.manifest
    found = []
    if m.get("recipe") != RECIPE or m.get("key") != template.key:
        return ["built by another recipe or for another key"]
    for name, want in ((RAM, m.get("memory_mib", 0) << 20), (STATE, m.get("state_bytes"))):
        path = os.path.join(template.dir, name)
        try:
            st = os.lstat(path)
        except OSError as err:
            found.append(f"{name}: {err.strerror}")
            continue
        if not os.path.isfile(path) or os.path.islink(path) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            found.append(f"{name}: not a private regular file of our own")
        elif st.st_size != want:
            found.append(f"{name}: {st.st_size} bytes, the manifest says {want}")
    if found:
        return found
    if _digest(template.state) != m.get("state_sha256"):
        found.append("state: checksum mismatch")
    if full and _digest(template.ram) != m.get("ram_sha256"):
        found.append("ram: checksum mismatch")
    return found


def _lock(root: str, key: str, mode: int) -> int:
    fd = os.open(os.path.join(root, f".{key}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _unlock(fd: int) -> None:
    os.close(fd)  # closing the lock's only descriptor releases it


def load(root: str, key: str) -> Template | None:
    path = os.path.join(root, key)
    manifest = _read_manifest(path)
    return Template(path, key, manifest) if manifest is not None else None


def list_templates(root: str) -> list[Template]:
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        if not name.startswith("."):
            t = load(root, name)
            if t is not None:
                found.append(t)
    return found


def remove(root: str, key: str) -> bool:
    """Remove a template (running clones keep their mapping of the unlinked file). False if none."""
    if key.startswith(".") or "/" in key or not key:
        raise TemplateError(f"invalid template key {key!r}")
    path = os.path.join(root, key)
    if not os.path.isdir(path):
        return False
    fd = _lock(root, key, fcntl.LOCK_EX)
    try:
        shutil.rmtree(path)
        os.unlink(os.path.join(root, f".{key}.lock"))
    finally:
        _unlock(fd)
    return True


class Factory:
    """Templates for one configuration (QEMU, assets, accelerator): built on first need, cloned."""

    def __init__(self, root: str, *, boot_timeout: float = 30.0, nic_slots: int = 1) -> None:
        self.root = root
        self.boot_timeout = boot_timeout
        self.nic_slots = nic_slots

    def key(self, spec: VMSpec, shape: Shape) -> str:
        layout = layout_argv(template_spec(spec, shape, "RAM", "SHARE"))
        try:
            qemu, kernel, image = (file_identity(p) for p in (spec.qemu, spec.kernel, spec.image))
        except OSError as err:
            raise TemplateError(f"cannot identify the VM's files: {err}") from None
        return template_key(layout, qemu, kernel, image)

    def find(self, spec: VMSpec) -> Template | None:
        """The valid template for VMs like ``spec``, if it has been built (never builds one)."""
        key = self.key(spec, shape_of(spec, self.nic_slots))
        _private_dir(self.root)
        template = load(self.root, key)
        return template if template is not None and not problems(template, full=False) else None

    def ensure(self, spec: VMSpec, *, verify_ram: bool = False) -> Template:
        """The valid template for VMs like ``spec`` (its NICs' and shares' backends aside), built if need be."""
        shape = shape_of(spec, self.nic_slots)
        key = self.key(spec, shape)
        _private_dir(self.root)
        template = load(self.root, key)
        if template is not None and not problems(template, full=verify_ram):
            return template
        fd = _lock(self.root, key, fcntl.LOCK_EX)
        try:
            template = load(self.root, key)  # another builder may have finished while we waited
            if template is not None and not problems(template, full=verify_ram):
                return template
            return self._build(spec, shape, key)
        finally:
            _unlock(fd)

    def _build(self, spec: VMSpec, shape: Shape, key: str) -> Template:
        started = time.monotonic()
        work = tempfile.mkdtemp(prefix=f".{key}.build-", dir=self.root)
        try:
            scratch = os.path.join(work, "share")
            os.mkdir(scratch, 0o700)
            tspec = template_spec(replace(spec, console_file=""), shape, os.path.join(work, RAM), scratch)
            vm = VM(tspec, work)
            try:
                vm.start()
                hello = vm.handshake(self.boot_timeout, template=True)
                booted = time.monotonic()
                state_bytes = _save(vm.monitor(), os.path.join(work, STATE), self.boot_timeout)
            finally:
                vm.stop()
            for name in (RAM, STATE, "qemu.log"):
                os.chmod(os.path.join(work, name), 0o600)
            manifest = {
                "recipe": RECIPE, "key": key, "protocol": protocol.VERSION,
                "shape": {"memory_mib": shape.memory_mib, "vcpus": shape.vcpus, "nic_slots": shape.nic_slots,
                          "share_tags": list(shape.share_tags)},
                "memory_mib": shape.memory_mib, "accelerator": spec.accelerator, "machine": spec.machine,
                "qemu": file_identity(spec.qemu), "qemu_version": _qemu_version(spec.qemu),
                "kernel": spec.kernel, "image": spec.image, "guest_kernel": hello.kernel,
                "layout": layout_argv(tspec), "state_bytes": state_bytes,
                "state_sha256": _digest(os.path.join(work, STATE)), "ram_sha256": _digest(os.path.join(work, RAM)),
                "built_at": time.time(), "boot_ms": round((booted - started) * 1000),
                "build_ms": round((time.monotonic() - started) * 1000),
            }
            with open(os.open(os.path.join(work, MANIFEST), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
                json.dump(manifest, f, indent=2)
            for name in ("qemu.pid",):
                try:
                    os.unlink(os.path.join(work, name))
                except FileNotFoundError:
                    pass
            final = os.path.join(self.root, key)
            if os.path.lexists(final):  # an invalid one: out of the way first (its clones keep their mapping)
                old = tempfile.mkdtemp(prefix=f".{key}.old-", dir=self.root)
                os.rename(final, os.path.join(old, "t"))
                shutil.rmtree(old, ignore_errors=True)
            os.rename(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return Template(final, key, manifest)

    def start_clone(self, spec: VMSpec, workdir: str, *, template: Template | None = None,
                    timeout: float | None = None) -> VM:
        """A running VM for ``spec``, cloned from its template (built first if need be), its agent
        ready, reseeded and with its own boot id (``vm.hello``). The caller mounts the shares and
        configures the network as after a cold boot, and stops the VM."""
        timeout = timeout or self.boot_timeout
        template = template or self.ensure(spec)
        cspec = clone_spec(spec, template.shape, template.ram)
        if layout_argv(cspec) != template.manifest.get("layout"):
            raise TemplateError("the clone's devices differ from its template's")
        lock = _lock(self.root, template.key, fcntl.LOCK_SH)  # no rebuild swaps the files while we load them
        vm = VM(cspec, workdir)
        try:
            try:
                started = time.monotonic()
                vm.start()
                _restore(vm.monitor(), template.state, timeout)
                restored = time.monotonic()
            except (OSError, VMError) as err:
                raise VMError(f"the clone did not start: {err}{_qemu_said(vm)}") from None
            finally:
                _unlock(lock)
            assert vm.agent is not None
            nics = [messages.NicSlot(slot_mac=slot_mac(i), mac=n.mac) for i, n in enumerate(spec.nics)]
            try:
                vm.hello = vm.agent.call(messages.CloneResumed(entropy=os.urandom(ENTROPY_BYTES),
                                                               time_ns=time.time_ns(), nics=nics), timeout=timeout)
            except (VMError, AgentError, OSError) as err:
                raise VMError(f"the clone did not resume: {err}", vm.console()) from None
            # A clone resumes past kernel entry and init: both stand for the moment its state was loaded.
            restored_ms = (restored - started) * 1000
            vm.timeline = BootTimeline(kernel_ms=restored_ms, init_ms=restored_ms,
                                       agent_ms=(time.monotonic() - started) * 1000)
        except BaseException:
            vm.stop()
            raise
        return vm


def _qemu_said(vm: VM) -> str:
    try:
        with open(vm.log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 1000))
            text = f.read().decode(errors="replace").strip()
    except OSError:
        return ""
    return f"; QEMU said: {text}" if text else ""


def _wait_migration(qmp: QMP, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        info = qmp.execute("query-migrate") or {}
        status = info.get("status")
        if status == "completed":
            return info
        if status in ("failed", "cancelled"):
            raise TemplateError(f"migration {status}: {info.get('error-desc', 'no reason given')}")
        if time.monotonic() > deadline:
            raise TemplateError(f"migration not done within {timeout:g}s (status {status})")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _save(qmp: QMP, path: str, timeout: float) -> int:
    """Pause the VM and write its device state, without the shared RAM, to ``path``; its size."""
    qmp.execute("stop")
    qmp.execute("migrate-set-capabilities", capabilities=[{"capability": "x-ignore-shared", "state": True}])
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        qmp.execute_with_fd("getfd", fd, fdname="template")
    finally:
        os.close(fd)
    qmp.execute("migrate", uri="fd:template")
    _wait_migration(qmp, timeout)
    return os.path.getsize(path)


def _restore(qmp: QMP, path: str, timeout: float) -> None:
    """Load the template's device state into a clone started ``-incoming defer``, then run it."""
    qmp.execute("migrate-set-capabilities", capabilities=[{"capability": "x-ignore-shared", "state": True}])
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        qmp.execute_with_fd("getfd", fd, fdname="template")
    finally:
        os.close(fd)
    qmp.execute("migrate-incoming", uri="fd:template")
    _wait_migration(qmp, timeout)
    qmp.execute("cont")


def _qemu_version(qemu: str) -> str:
    try:
        out = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.splitlines()[0] if out else ""


def class_spec(cfg: Config, accelerator: str, size: SizeClass, share_tags: tuple[str, ...]) -> VMSpec:
    """The spec of a VM of one size class under this configuration (for building its template ahead)."""
    assets = resolve(cfg)
    return make_spec(cfg, assets, accelerator, shares=tuple(Share(tag, "") for tag in share_tags),
                     vcpus=size.vcpus, memory_mib=size.memory_mib)
