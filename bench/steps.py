"""The step timeline that pellucid writes with PELLUCID_TIMELINE=FILE (pellucid.timeline): read it,
print it as a table and plot it as a Gantt chart (matplotlib, the `bench` extra; without it, the
table alone). Shared by bench/cli and bench/docker_run."""

from __future__ import annotations

import json
import os
import time

ENV = "PELLUCID_TIMELINE"
T0_ENV = "PELLUCID_TIMELINE_T0"


def env(path: str) -> dict[str, str]:
    """The environment of a pellucid command that writes its steps to ``path``, its start-up timed from now."""
    return {**os.environ, ENV: path, T0_ENV: str(time.time_ns())}


def read(path: str) -> list[dict]:
    steps = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    step = json.loads(line)
                except ValueError:
                    continue
                if isinstance(step, dict) and {"who", "step", "start", "ms"} <= step.keys():
                    steps.append(step)
    except OSError:
        pass
    return sorted(steps, key=lambda s: (s["start"], -s["ms"]))


def commands(steps: list[dict], walls: list[tuple[str, int, int]]) -> list[dict]:
    """``steps`` with each command's whole wall time (name, start ns, end ns, as the caller saw it)."""
    extra = [{"who": name, "pid": 0, "step": "whole command (as its caller saw it)", "start": start,
              "ms": (end - start) / 1e6, "id": ""} for name, start, end in walls]
    return sorted(steps + extra, key=lambda s: (s["start"], -s["ms"]))


def table(steps: list[dict], title: str) -> str:
    if not steps:
        return f"{title}: no steps recorded"
    t0 = steps[0]["start"]
    lines = [title, f"{'start ms':>9} {'ms':>8}  {'process':<14} step"]
    for s in steps:
        lines.append(f"{(s['start'] - t0) / 1e6:>9.1f} {s['ms']:>8.1f}  {s['who'][:14]:<14} {s['step']}")
    return "\n".join(lines)


def plot(steps: list[dict], title: str, path: str) -> str:
    """A Gantt chart of ``steps`` in ``path``; returns what was done (or why not)."""
    if not steps:
        return f"no plot: no steps for {title}"
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (the bench extra: scripts/setup installs it)"
    t0 = steps[0]["start"]
    procs = list(dict.fromkeys(s["who"] for s in steps))
    colors = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(12, 0.28 * len(steps) + 1.5))
    for row, s in enumerate(steps):
        start = (s["start"] - t0) / 1e6
        ax.broken_barh([(start, max(s["ms"], 0.3))], (row - 0.4, 0.8), color=colors(procs.index(s["who"]) % 10))
        ax.text(start + max(s["ms"], 0.3) + 2, row, f"{s['step']} ({s['ms']:.0f} ms)", va="center", fontsize=7)
    ax.set_yticks(range(len(steps)), [s["who"] for s in steps], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ms since the first step")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    right = max((s["start"] - t0) / 1e6 + s["ms"] for s in steps)
    ax.set_xlim(0, right * 1.35)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"plot: {path}"
