"""Progress for long builds: a line that updates in place on a terminal, a line per step elsewhere."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, what: str, total: int, stream=sys.stderr) -> None:
        self.what = what
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self._last_pct = -1

    def advance(self, n: int = 1, note: str = "") -> None:
        self.done += n
        pct = min(99, self.done * 100 // self.total)
        if self.tty:
            self.stream.write(f"\r[{self.what}] {pct:3d}% {note[:60]:<60}")
            self.stream.flush()
        elif pct >= self._last_pct + 10:
            self._last_pct = pct - pct % 10
            self.stream.write(f"[{self.what}] {self._last_pct}% ({self._elapsed()})\n")
            self.stream.flush()

    def step(self, note: str) -> None:
        """A named stage of the build (not counted)."""
        if self.tty:
            self.stream.write("\r" + " " * 80 + "\r")
        self.stream.write(f"[{self.what}] {note}\n")
        self.stream.flush()

    def finish(self, note: str) -> None:
        if self.tty:
            self.stream.write("\r" + " " * 80 + "\r")
        self.stream.write(f"[{self.what}] {note} in {self._elapsed()}\n")
        self.stream.flush()

    def _elapsed(self) -> str:
        return f"{time.monotonic() - self.started:.0f}s"
