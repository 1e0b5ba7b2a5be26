"""The short form of bench/fuzz: seeded runs of valid and mutated frames at the monitor's guest
side (tests/monitor_fuzz.py). No crash, no buffer past its bound."""

from __future__ import annotations

import pytest

from tests import monitor_fuzz


@pytest.mark.parametrize("seed", [1, 2])
def test_mixed_frames_neither_crash_the_monitor_nor_grow_its_buffers(seed):
    # rates high enough that 2,500 frames hold mutations whatever path the seed takes (the long run
    # in bench/fuzz also uses 0.002, which a short run can miss altogether)
    stats = monitor_fuzz.run(2500, seed, mutation_rates=(0.01, 0.05, 0.2))
    assert stats.crashes == [] and stats.violations == []
    assert stats.frames >= 2500 and stats.mutated > 0 and stats.stopped > 0


def test_every_mutation_is_survived():
    stats = monitor_fuzz.run(1500, seed=3, mutation_rates=(0.5, 1.0))
    assert stats.crashes == [] and stats.violations == []
    assert stats.stopped > 100  # most mutated frames are refused, and the VM stopped
