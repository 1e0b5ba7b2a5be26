"""The KSM throttling policy, a pure state machine: levels, quiet periods and the values written."""

import pytest

from pellucid.ksm import policy
from pellucid.ksm.policy import Level, Observation, State

VMS = frozenset({101, 102})


def test_a_vm_start_goes_aggressive_from_any_level():
    for level in Level:
        state = State(level, since=0.0, baseline=500, vms=frozenset({101}))
        after = policy.step(state, Observation(now=7.0, vms=VMS, pages_sharing=600))
        assert after == State(Level.AGGRESSIVE, 7.0, 600, VMS)


def test_quiet_steps_down_one_level_at_a_time_to_the_host():
    state = State(Level.AGGRESSIVE, since=0.0, baseline=1000, vms=VMS)
    now, seen = 0.0, []
    while state.level != Level.HOST:
        now += 5
        state = policy.step(state, Observation(now, VMS, 1000))
        if not seen or seen[-1][0] != state.level:
            seen.append((state.level, now))
    # 30 s in aggressive, 2 minutes in standard, 2 minutes in slow (Clear Containers' periods)
    assert seen == [(Level.AGGRESSIVE, 5), (Level.STANDARD, 30), (Level.SLOW, 150), (Level.HOST, 270)]


def test_merging_progress_holds_the_level():
    state = State(Level.AGGRESSIVE, since=0.0, baseline=1000, vms=VMS)
    for i in range(1, 20):  # 95 s, far past the quiet period, but pages_sharing keeps growing
        state = policy.step(state, Observation(5.0 * i, VMS, 1000 + 300 * i))
        assert state.level == Level.AGGRESSIVE
    state = policy.step(state, Observation(100.0, VMS, 1000 + 300 * 19 + 10))  # growth below the threshold
    assert state.level == Level.AGGRESSIVE and state.since == 95.0
    assert policy.step(state, Observation(125.0, VMS, 6710)).level == Level.STANDARD


def test_growth_counts_from_a_lower_point_after_pages_were_unmerged():
    state = State(Level.STANDARD, since=0.0, baseline=10000, vms=VMS)
    state = policy.step(state, Observation(10.0, VMS, 2000))  # a VM exited: its pages unmerged
    assert (state.baseline, state.since) == (2000, 0.0)
    state = policy.step(state, Observation(20.0, VMS, 2300))
    assert (state.baseline, state.since, state.level) == (2300, 20.0, Level.STANDARD)


def test_growth_threshold_is_a_mebibyte_or_two_percent():
    assert policy.growth_threshold(0) == 256
    assert policy.growth_threshold(100_000) == 2000


def test_no_vm_left_means_the_host_settings_at_once():
    state = State(Level.AGGRESSIVE, since=0.0, baseline=1000, vms=VMS)
    assert policy.step(state, Observation(1.0, frozenset(), 1000)).level == Level.HOST


def test_vms_already_known_do_not_raise_the_level_from_host():
    state = State(Level.HOST, since=0.0, baseline=0, vms=VMS)
    assert policy.step(state, Observation(500.0, VMS, 100_000)).level == Level.HOST


HOST = {"advisor_mode": "none", "advisor_target_scan_time": "200", "advisor_max_cpu": "70",
        "sleep_millisecs": "20", "pages_to_scan": "100", "run": "0"}


def test_advisor_levels_set_its_target_and_cpu_ceiling_only():
    assert policy.settings(Level.AGGRESSIVE, policy.ADVISOR, HOST, 0) == [
        ("advisor_mode", "scan-time"), ("advisor_target_scan_time", "10"), ("advisor_max_cpu", "60"), ("run", "1")]
    slow = dict(policy.settings(Level.SLOW, policy.ADVISOR, HOST, 0))
    assert (slow["advisor_target_scan_time"], slow["advisor_max_cpu"]) == ("300", "10")


def test_manual_levels_size_pages_to_scan_from_anonymous_memory():
    # 1 GiB of anonymous pages, one pass in 10 s waking every 20 ms: 500 wake-ups of 525 pages
    assert policy.settings(Level.AGGRESSIVE, policy.MANUAL, HOST, 262144) == [
        ("sleep_millisecs", "20"), ("pages_to_scan", "525"), ("run", "1")]
    assert policy.manual_pages_to_scan(0, 10) == policy.MIN_PAGES_TO_SCAN
    assert policy.manual_pages_to_scan(10**9, 10) == policy.MAX_PAGES_TO_SCAN


def test_the_host_level_writes_the_host_values_mode_first_run_last():
    assert policy.settings(Level.HOST, policy.ADVISOR, HOST, 0) == [(k, HOST[k]) for k in policy.KEYS]
    # the kernel refuses pages_to_scan while its advisor runs: a host that ran it gets no such write
    host = {**HOST, "advisor_mode": "scan-time"}
    assert "pages_to_scan" not in dict(policy.settings(Level.HOST, policy.ADVISOR, host, 0))


def test_state_round_trips_and_a_malformed_one_is_refused():
    state = State(Level.SLOW, 12.5, 300, VMS)
    assert State.from_dict(state.to_dict()) == state
    for bad in ({"level": "turbo", "since": 0, "baseline": 0, "vms": []},
                {"level": "slow", "since": 0, "baseline": 0, "vms": ["../x"]},
                {"level": "slow", "since": 0, "baseline": 0}):
        with pytest.raises((KeyError, TypeError, ValueError)):
            State.from_dict(bad)
