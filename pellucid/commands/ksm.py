"""ksm: the KSM throttler, a host daemon apart from the container commands."""

from __future__ import annotations

import json
import os
import signal
import sys

from .. import log
from ..ksm import throttler as ksm_throttler
from ..ksm.sysfs import DEFAULT_SYSFS, KsmError, KsmSysfs

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..cli import Args

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
    log.info(msg)


def ksm(args: Args) -> int:
    try:
        interval = float(args.interval)
    except ValueError:
        interval = 0.0
    if not 0 < interval <= 3600:
        raise KsmError(f"--interval must be a number of seconds in (0, 3600], not {args.interval!r}")
    # Test hooks: a directory of plain files standing for /sys/kernel/mm/ksm, and one for /proc.
    sysfs = KsmSysfs(os.environ.get("PELLUCID_KSM_SYSFS", DEFAULT_SYSFS))
    proc = os.environ.get("PELLUCID_KSM_PROC", "/proc")
    if not sysfs.present():
        report = {"ksm": "off", "reason": f"this kernel has no KSM ({sysfs.root} is missing)"}
        print(json.dumps(report) if args.json else f"KSM: off: {report['reason']}; nothing to throttle")
        return 0
    # Blocked before anything is changed, so a stop request is never lost: the loop waits for it.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    record = os.path.join(args.root, ksm_throttler.RECORD_NAME)
    with ksm_throttler.Throttler(sysfs, record, proc, say=_say) as throttler:
        if args.restore:
            restored = throttler.restore()
            throttler.forget()
            if not restored:
                _say("ksm: nothing to restore: the throttler had not changed KSM")
            return 0
        if not args.once:
            ksm_throttler.run(throttler, interval, lambda t: signal.sigtimedwait(STOP_SIGNALS, t) is not None)
            return 0
        written = throttler.tick()
        state, obs = throttler.state, throttler.last
        report = {"ksm": "on", "mechanism": throttler.mechanism, "level": state.level.name.lower(),
                  "vms": sorted(state.vms), "pages_sharing": obs.pages_sharing if obs else 0, "written": dict(written),
                  "host": throttler.host}
        if args.json:
            print(json.dumps(report))
        else:
            print(f"mechanism: {ksm_throttler.describe(throttler.mechanism)}")
            print(f"level: {report['level']} ({len(state.vms)} pellucid VM(s))")
            print("written: " + (" ".join(f"{k}={v}" for k, v in written) or "nothing"))
    return 0
