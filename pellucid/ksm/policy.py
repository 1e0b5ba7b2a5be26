"""The throttling policy as a pure state machine: no I/O here.

Inputs are an :class:`Observation` (pellucid's running VMs, the kernel's ``pages_sharing``, the
time); :func:`step` gives the next :class:`State`, and :func:`settings` the KSM sysfs values a
level stands for. As Clear Containers' ksm-throttler did, a VM start moves KSM to ``aggressive``
and quiet periods step it down through ``standard`` and ``slow`` to the host's own settings; here
"quiet" means that ``pages_sharing`` stopped growing, not only that no VM started.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

#: The KSM sysfs files the throttler may change, in the order they must be written: a change of
#: ``advisor_mode`` resets ``pages_to_scan`` (so that comes after), ``run`` comes last.
KEYS = ("advisor_mode", "advisor_target_scan_time", "advisor_max_cpu", "sleep_millisecs", "pages_to_scan", "run")

ADVISOR, MANUAL = "advisor", "manual"
SCAN_TIME = "scan-time"

MIN_PAGES_TO_SCAN, MAX_PAGES_TO_SCAN = 100, 20000
MANUAL_SLEEP_MS = 20


class Level(enum.IntEnum):
    HOST = 0  # the host's own settings, untouched
    SLOW = 1
    STANDARD = 2
    AGGRESSIVE = 3


@dataclass(frozen=True)
class Tuning:
    """What a level asks of ksmd."""

    #: seconds one pass over the mergeable memory should take
    scan_time: int
    #: ksmd's CPU ceiling in percent of one CPU (the advisor enforces it; the manual mechanism cannot)
    max_cpu: int
    #: seconds without progress (a VM start, pages_sharing growing) before stepping down a level
    quiet: float


TUNINGS = {
    Level.AGGRESSIVE: Tuning(scan_time=10, max_cpu=60, quiet=30.0),
    Level.STANDARD: Tuning(scan_time=60, max_cpu=20, quiet=120.0),
    Level.SLOW: Tuning(scan_time=300, max_cpu=10, quiet=120.0),
}


@dataclass(frozen=True)
class Observation:
    now: float  # seconds on a monotonic clock
    vms: frozenset[int]  # pids of pellucid's QEMU processes
    pages_sharing: int


@dataclass(frozen=True)
class State:
    level: Level = Level.HOST
    #: when progress was last seen (a VM start, pages_sharing growth, a level change)
    since: float = 0.0
    #: pages_sharing at ``since`` (or lower, if it fell since): growth is measured from here
    baseline: int = 0
    vms: frozenset[int] = field(default_factory=frozenset)

    def to_dict(self) -> dict:
        return {"level": self.level.name.lower(), "since": self.since, "baseline": self.baseline,
                "vms": sorted(self.vms)}

    @classmethod
    def from_dict(cls, data: dict) -> State:
        """Raises ValueError, KeyError or TypeError on a malformed record."""
        vms = data["vms"]
        if not isinstance(vms, list) or not all(isinstance(p, int) and p > 0 for p in vms):
            raise ValueError("vms must be a list of pids")
        return cls(Level[str(data["level"]).upper()], float(data["since"]), int(data["baseline"]), frozenset(vms))


def growth_threshold(baseline: int) -> int:
    """How much pages_sharing must grow to count as progress: 1 MiB of 4 KiB pages or 2 %."""
    return max(256, baseline // 50)


def step(state: State, obs: Observation) -> State:
    """The next state. A new VM: aggressive. No VM left: the host's settings. Merging still
    progressing: stay. Quiet for the level's period: one level down."""
    if obs.vms - state.vms:
        return State(Level.AGGRESSIVE, obs.now, obs.pages_sharing, obs.vms)
    if not obs.vms:
        return State(Level.HOST, obs.now, obs.pages_sharing, obs.vms)
    baseline = min(state.baseline, obs.pages_sharing)  # VMs that exit unmerge their pages
    if obs.pages_sharing - baseline >= growth_threshold(baseline):
        return State(state.level, obs.now, obs.pages_sharing, obs.vms)
    if state.level != Level.HOST and obs.now - state.since >= TUNINGS[state.level].quiet:
        return State(Level(state.level - 1), obs.now, obs.pages_sharing, obs.vms)
    return State(state.level, state.since, baseline, obs.vms)


def settings(level: Level, mechanism: str, host: dict[str, str], anon_pages: int) -> list[tuple[str, str]]:
    """The (file, value) pairs to write for ``level``, in writing order. ``host`` holds the host's
    own values, read before the throttler first changed anything."""
    if level == Level.HOST:
        values = dict(host)
        if values.get("advisor_mode") == SCAN_TIME:
            values.pop("pages_to_scan", None)  # the kernel refuses it while its advisor runs
    else:
        tuning = TUNINGS[level]
        if mechanism == ADVISOR:
            values = {"advisor_mode": SCAN_TIME, "advisor_target_scan_time": str(tuning.scan_time),
                      "advisor_max_cpu": str(tuning.max_cpu), "run": "1"}
        else:
            values = {"sleep_millisecs": str(MANUAL_SLEEP_MS),
                      "pages_to_scan": str(manual_pages_to_scan(anon_pages, tuning.scan_time)), "run": "1"}
    return [(key, values[key]) for key in KEYS if key in values]


def manual_pages_to_scan(anon_pages: int, scan_time: int) -> int:
    """Pages per ksmd wake-up for one pass over the host's anonymous memory (an upper bound of
    what is mergeable) in ``scan_time`` seconds, waking every MANUAL_SLEEP_MS."""
    wakeups = scan_time * 1000 // MANUAL_SLEEP_MS
    return max(MIN_PAGES_TO_SCAN, min(MAX_PAGES_TO_SCAN, -(-anon_pages // wakeups)))
