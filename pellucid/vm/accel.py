"""Which accelerator really works: KVM is tried with a real boot to the agent's handshake (an
openable /dev/kvm proves nothing: on PVM hosts ordinary guests fail), TCG is the fallback.
The verdict is cached per host kernel, QEMU binary and guest assets; concurrent first VMs probe
once (under a lock), and a probe that only timed out (a busy host, not a broken KVM) is used but
not cached.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass

from ..config import Config
from ..errors import VMError
from .assets import Assets
from .machine import VM
from .spec import make_spec

KVM_PROBE_TIMEOUT = 15.0
CACHE_NAME = "accel.json"
LOCK_NAME = "accel.lock"


@dataclass(frozen=True)
class Probe:
    accelerator: str  # "kvm" or "tcg"
    kvm_usable: bool
    kvm_error: str  # why KVM was not taken, "" if it was
    key: str
    probed_at: float
    timed_out: bool = False  # KVM did not fail, it was slow: a verdict not to keep


def cache_key(cfg: Config, assets: Assets) -> str:
    try:
        st = os.stat(cfg.hypervisor.path)
        qemu = f"{cfg.hypervisor.path}:{st.st_size}:{int(st.st_mtime)}"
    except OSError:
        qemu = cfg.hypervisor.path
    return "|".join((os.uname().release, qemu, cfg.hypervisor.machine, assets.kernel_key or assets.kernel,
                     assets.image_key or assets.image))


def kvm_device_error() -> str:
    """Why /dev/kvm cannot be used at all, or "" if it opens."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        return f"/dev/kvm: {err.strerror}"
    os.close(fd)
    return ""


def try_boot(cfg: Config, assets: Assets, accelerator: str, timeout: float, workdir: str) -> VM:
    """Boot a throw-away VM to the handshake; the caller stops it. Raises VMError if it does not come up."""
    vm = VM(make_spec(cfg, assets, accelerator, name=f"pellucid-probe-{accelerator}"), workdir)
    try:
        vm.start()
        vm.handshake(timeout)
    except BaseException:
        vm.stop()
        raise
    return vm


def probe(cfg: Config, assets: Assets, run_dir: str) -> Probe:
    """Boot once with KVM (if the device opens); the answer is KVM if the agent answered, else TCG."""
    key = cache_key(cfg, assets)
    error = kvm_device_error()
    timed_out = False
    if not error:
        os.makedirs(run_dir, exist_ok=True)
        workdir = tempfile.mkdtemp(prefix="probe-", dir=run_dir)
        started = time.monotonic()
        try:
            try_boot(cfg, assets, "kvm", KVM_PROBE_TIMEOUT, workdir).stop()
        except VMError as err:
            error = "a guest does not boot under KVM here: " + str(err).splitlines()[0][:600]
            timed_out = time.monotonic() - started >= KVM_PROBE_TIMEOUT
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return Probe(accelerator="tcg" if error else "kvm", kvm_usable=not error, kvm_error=error, key=key,
                 probed_at=time.time(), timed_out=timed_out)


def cached(cfg: Config, assets: Assets) -> Probe | None:
    try:
        with open(os.path.join(cfg.assets.dir, CACHE_NAME)) as f:
            data = json.load(f)
        result = Probe(**data)
    except (OSError, ValueError, TypeError):
        return None
    return result if result.key == cache_key(cfg, assets) and result.accelerator in ("kvm", "tcg") else None


def save(cfg: Config, result: Probe) -> None:
    path = os.path.join(cfg.assets.dir, CACHE_NAME)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(asdict(result), f, indent=2)
    os.replace(tmp, path)


def choose(cfg: Config, assets: Assets, run_dir: str, *, refresh: bool = False) -> tuple[str, Probe | None]:
    """The accelerator to use and the probe behind it (None when the configuration forces one)."""
    if cfg.hypervisor.accelerator != "auto":
        return cfg.hypervisor.accelerator, None
    result = None if refresh else cached(cfg, assets)
    if result is not None:
        return result.accelerator, result
    with _ProbeLock(cfg):
        result = None if refresh else cached(cfg, assets)  # probed by another VM while we waited
        if result is None:
            result = probe(cfg, assets, run_dir)
            if not result.timed_out:
                try:
                    save(cfg, result)
                except OSError:
                    pass
    return result.accelerator, result


class _ProbeLock:
    """flock(2) on the assets directory's lock file, so that one probe runs at a time (none if
    the directory cannot hold one: then probes may run side by side, as before)."""

    def __init__(self, cfg: Config) -> None:
        self.path = os.path.join(cfg.assets.dir, LOCK_NAME)
        self.fd = -1

    def __enter__(self) -> None:
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError:
            self.__exit__()

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
