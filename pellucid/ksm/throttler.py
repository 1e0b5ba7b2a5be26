"""The throttler: observe, step the policy, apply, and keep a crash-safe record.

The record (a JSON file under the runtime root) holds the policy's state and, whenever the
throttler has changed KSM, the host's values from before. It is written before KSM is touched and
replaced atomically, so a throttler that was killed leaves the host's true values behind: the next
one takes over from them, and ``pellucid ksm --restore`` puts them back.
"""

from __future__ import annotations

import fcntl
import json
import os
import time

from . import policy
from .policy import Level, Observation, State
from .sysfs import KsmError, KsmSysfs, anon_pages, boot_id, pellucid_vms, valid

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

RECORD_NAME = ".ksm-throttler.json"


def describe(mechanism: str) -> str:
    if mechanism == policy.ADVISOR:
        return "the kernel's KSM advisor (advisor_mode=scan-time: ksmd sizes pages_to_scan itself)"
    return "pages_to_scan and sleep_millisecs set by pellucid (this kernel has no KSM advisor)"


class Throttler:
    """One throttler over a KSM sysfs directory; hold it in a with statement (it takes a lock)."""

    def __init__(self, ksm: KsmSysfs, record: str, proc: str = "/proc",
                 clock: Callable[[], float] = time.monotonic, say: Callable[[str], None] = print) -> None:
        self.ksm, self.record, self.proc, self.clock, self.say = ksm, record, proc, clock, say
        self.mechanism = policy.ADVISOR if ksm.has_advisor() else policy.MANUAL
        self.state = State()
        self.host: dict[str, str] | None = None  # the host's values while the throttler has changed KSM
        self.last: Observation | None = None  # the latest observation
        self._lock_fd = -1

    def __enter__(self) -> Throttler:
        os.makedirs(os.path.dirname(self.record) or ".", mode=0o700, exist_ok=True)
        fd = os.open(self.record + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise KsmError(f"another pellucid ksm holds {self.record}.lock") from None
        self._lock_fd = fd
        self._load()
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._lock_fd)
        self._lock_fd = -1

    def _load(self) -> None:
        try:
            with open(self.record) as f:
                data = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as err:
            self.say(f"ksm: ignoring unreadable record {self.record}: {err}")
            return
        if not isinstance(data, dict) or data.get("boot_id") != boot_id(self.proc):
            self.say(f"ksm: ignoring record {self.record} from another boot")
            return
        try:
            state = State.from_dict(data["state"])
            host = data["host"]
            if host is not None and not (isinstance(host, dict) and all(
                    k in policy.KEYS and isinstance(v, str) and valid(k, v) for k, v in host.items())):
                raise ValueError("bad host values")
        except (KeyError, TypeError, ValueError) as err:
            self.say(f"ksm: ignoring malformed record {self.record}: {err}")
            return
        self.state, self.host = state, host
        if host is not None:
            self.say(f"ksm: taking over from an earlier throttler: the host's values are {_fmt(host)}")

    def _save(self) -> None:
        data = {"boot_id": boot_id(self.proc), "mechanism": self.mechanism, "state": self.state.to_dict(),
                "host": self.host}
        tmp = f"{self.record}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.record)

    def observe(self) -> Observation:
        return Observation(self.clock(), pellucid_vms(self.proc), self.ksm.read_int("pages_sharing"))

    def tick(self) -> list[tuple[str, str]]:
        """One step of the policy, applied; returns what was written (nothing if the level holds)."""
        obs = self.last = self.observe()
        before = self.state
        self.state = policy.step(before, obs)
        level = self.state.level
        if level != Level.HOST and self.host is None:  # a first change: the host's values go on disk first
            self.host = self.ksm.snapshot(policy.KEYS)
            self._save()
        elif level == before.level or self.host is None:  # nothing to change, or nothing of ours to undo
            self._save()
            return []
        try:
            written = self._apply(level)
        except KsmError:
            self.state = before  # tried again at the next tick
            self._save()
            raise
        self._save()
        started = len(obs.vms - before.vms)
        why = f"{started} VM(s) started" if started else (
            "no pellucid VM left" if not obs.vms else "pages_sharing stopped growing")
        self.say(f"ksm: {level.name.lower()} ({why}; {len(obs.vms)} VM(s), pages_sharing={obs.pages_sharing})"
                 f": {_fmt(dict(written))}")
        return written

    def _apply(self, level: Level) -> list[tuple[str, str]]:
        assert self.host is not None, "the host's values are recorded before any change"
        values = policy.settings(level, self.mechanism, self.host, anon_pages(self.proc))
        errors = self.ksm.apply(values)
        if level == Level.HOST and not errors:
            self.host = None
        if errors:
            raise KsmError("; ".join(errors))
        return values

    def restore(self) -> bool:
        """Puts the host's values back if the throttler changed them; True if it did."""
        if self.host is None:
            return False
        values = self._apply(Level.HOST)
        self.state = State(Level.HOST, self.clock(), self.state.baseline, self.state.vms)
        self.say(f"ksm: restored the host's settings: {_fmt(dict(values))}")
        return True

    def forget(self) -> None:
        """Removes the record (after a restore, when the throttler stops)."""
        try:
            os.unlink(self.record)
        except FileNotFoundError:
            pass


def run(throttler: Throttler, interval: float, wait: Callable[[float], bool]) -> None:
    """The daemon: a tick every ``interval`` seconds until ``wait(interval)`` says stop; then the
    host's values go back, whatever happened."""
    throttler.say(f"ksm: using {describe(throttler.mechanism)}")
    try:
        while True:
            try:
                throttler.tick()
            except KsmError as err:
                throttler.say(f"ksm: {err}")
            if wait(interval):
                break
    finally:
        throttler.restore()
        throttler.forget()


def _fmt(values: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in values.items())
