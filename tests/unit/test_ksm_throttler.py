"""The KSM throttler against a fake sysfs directory and a fake /proc: turning KSM on, stepping
down to the host's settings, the advisor when the kernel has one, restore on stop, the crash-safe
record of the host's values; and `pellucid ksm` itself, as a process that gets SIGTERM."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pellucid.ksm import policy
from pellucid.ksm.sysfs import KsmError, KsmSysfs, is_pellucid_qemu, pellucid_vms
from pellucid.ksm.throttler import RECORD_NAME, Throttler, run

REPO = Path(__file__).resolve().parents[2]
HOST = {"run": "0", "pages_to_scan": "100", "sleep_millisecs": "20", "advisor_mode": "none",
        "advisor_target_scan_time": "200", "advisor_max_cpu": "70"}


class FakeKernel(KsmSysfs):
    """A directory of plain files that obeys the kernel's rules for the advisor (kernel 6.7+):
    a change of advisor_mode resets pages_to_scan, which cannot be written under scan-time."""

    def write(self, key: str, value: str) -> None:
        if key == "pages_to_scan" and self.has("advisor_mode") and self.read("advisor_mode") == "scan-time":
            raise KsmError(f"cannot write {value} to {self.root}/{key}: Invalid argument")
        if key == "advisor_mode" and self.read(key) != value:
            super().write("pages_to_scan", "500" if value == "scan-time" else "100")
        super().write(key, value)


def make_sysfs(path: Path, advisor: bool = True, **values: str) -> FakeKernel:
    path.mkdir()
    files = {**HOST, "pages_sharing": "0", "pages_shared": "0", **values}
    for key, value in files.items():
        if advisor or not key.startswith("advisor"):
            (path / key).write_text(value + "\n")
    if advisor:  # the kernel shows the choice this way
        (path / "advisor_mode").write_text("[none] scan-time\n" if files["advisor_mode"] == "none"
                                           else "none [scan-time]\n")
    return FakeKernel(str(path))


def make_proc(path: Path) -> Path:
    (path / "sys/kernel/random").mkdir(parents=True)
    (path / "sys/kernel/random/boot_id").write_text("boot-1\n")
    (path / "meminfo").write_text("MemTotal: 4194304 kB\nAnonPages:  1048576 kB\n")
    return path


def add_process(proc: Path, pid: int, argv: list[str], comm: str = "qemu-system-x86") -> None:
    (proc / str(pid)).mkdir()
    (proc / str(pid) / "comm").write_text(comm + "\n")
    (proc / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")


def add_vm(proc: Path, pid: int) -> None:
    add_process(proc, pid, ["qemu-system-x86_64", "-name", f"pellucid-c{pid},debug-threads=on", "-m", "256M"])


def remove_vm(proc: Path, pid: int) -> None:
    for f in (proc / str(pid)).iterdir():
        f.unlink()
    (proc / str(pid)).rmdir()


def values(sysfs: KsmSysfs) -> dict[str, str]:
    return sysfs.snapshot(policy.KEYS)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def env(tmp_path):
    sysfs = make_sysfs(tmp_path / "ksm")
    proc = make_proc(tmp_path / "proc")
    return sysfs, proc, str(tmp_path / "root" / RECORD_NAME), Clock()


def throttler(sysfs, proc, record, clock, said=None) -> Throttler:
    return Throttler(sysfs, record, str(proc), clock=clock, say=(said.append if said is not None else lambda m: None))


def test_vms_are_pellucids_qemus_by_their_name(tmp_path):
    proc = make_proc(tmp_path)
    add_vm(proc, 10)
    add_process(proc, 11, ["qemu-system-x86_64", "-name", "pellucid,debug-threads=on"])
    add_process(proc, 12, ["qemu-system-x86_64", "-name", "libvirt-guest"])
    add_process(proc, 13, ["sleep", "-name", "pellucid-x"], comm="sleep")
    add_process(proc, 14, ["qemu-system-x86_64", "-m", "1G"])
    assert pellucid_vms(str(proc)) == {10, 11}
    assert not is_pellucid_qemu([b"qemu", b"-name"])


def test_a_vm_start_turns_ksm_on_with_the_advisor_and_records_the_host_values(env):
    sysfs, proc, record, clock = env
    said = []
    with throttler(sysfs, proc, record, clock, said) as t:
        assert t.tick() == [] and values(sysfs) == HOST  # no VM: nothing changes
        add_vm(proc, 42)
        written = t.tick()
    assert dict(written) == {"advisor_mode": "scan-time", "advisor_target_scan_time": "10",
                             "advisor_max_cpu": "60", "run": "1"}
    assert values(sysfs) == {**HOST, **dict(written), "pages_to_scan": "500"}  # the kernel's reset
    saved = json.loads(Path(record).read_text())
    assert saved["host"] == HOST and saved["state"]["level"] == "aggressive" and saved["mechanism"] == "advisor"
    assert "ksm: aggressive (1 VM(s) started" in said[-1]


def test_it_steps_down_gentler_and_finally_to_the_host_settings(env):
    sysfs, proc, record, clock = env
    add_vm(proc, 42)
    levels = []
    with throttler(sysfs, proc, record, clock) as t:
        for sharing in range(0, 3000, 500):  # merging progresses for a minute: aggressive holds
            (Path(sysfs.root) / "pages_sharing").write_text(f"{sharing}\n")
            t.tick()
            clock.now += 10
            assert t.state.level == policy.Level.AGGRESSIVE
        while t.state.level != policy.Level.HOST:  # then nothing changes
            t.tick()
            levels.append((t.state.level.name, sysfs.read("advisor_target_scan_time")))
            clock.now += 10
    assert sorted(set(levels), key=levels.index) == [("AGGRESSIVE", "10"), ("STANDARD", "60"), ("SLOW", "300"),
                                                     ("HOST", "200")]
    assert values(sysfs) == HOST
    assert json.loads(Path(record).read_text())["host"] is None  # nothing of the host's is changed now


def test_without_an_advisor_it_sets_pages_to_scan_itself(tmp_path):
    sysfs = make_sysfs(tmp_path / "ksm", advisor=False)
    proc = make_proc(tmp_path / "proc")
    add_vm(proc, 42)
    said = []
    with throttler(sysfs, proc, str(tmp_path / RECORD_NAME), Clock(), said) as t:
        assert t.mechanism == policy.MANUAL
        t.tick()
        # 1 GiB of anonymous memory in 10 s, in wake-ups every 20 ms
        assert values(sysfs) == {"run": "1", "pages_to_scan": "525", "sleep_millisecs": "20"}
        assert not sysfs.has("advisor_mode")
        t.restore()
    assert values(sysfs) == {k: HOST[k] for k in ("run", "pages_to_scan", "sleep_millisecs")}


def test_restore_under_the_kernels_rules_when_the_host_ran_the_advisor(tmp_path):
    host = {**HOST, "advisor_mode": "scan-time", "pages_to_scan": "500", "run": "1", "advisor_target_scan_time": "90"}
    sysfs = make_sysfs(tmp_path / "ksm", **host)
    proc = make_proc(tmp_path / "proc")
    add_vm(proc, 42)
    with throttler(sysfs, proc, str(tmp_path / RECORD_NAME), Clock()) as t:
        t.tick()
        assert sysfs.read("advisor_target_scan_time") == "10"
        assert t.restore()
    assert values(sysfs) == host


def test_the_daemon_restores_the_host_settings_when_it_stops(env):
    sysfs, proc, record, clock = env
    add_vm(proc, 42)
    waits = []

    def wait(interval):
        waits.append(interval)
        assert sysfs.read("run") == "1"  # on while it runs
        return len(waits) == 3  # then a stop request

    with throttler(sysfs, proc, record, clock) as t:
        run(t, 2.5, wait)
    assert waits == [2.5, 2.5, 2.5]
    assert values(sysfs) == HOST and not os.path.exists(record)


def test_the_daemon_carries_on_after_a_failed_tick_and_restores_when_interrupted(env):
    sysfs, proc, record, clock = env
    add_vm(proc, 42)
    said, waits = [], []

    def wait(interval):
        waits.append(interval)
        if len(waits) == 1:
            (Path(sysfs.root) / "pages_sharing").write_text("garbage\n")
            return False
        raise KeyboardInterrupt

    with throttler(sysfs, proc, record, clock, said) as t, pytest.raises(KeyboardInterrupt):
        run(t, 1, wait)
    assert any("not a number" in m for m in said)
    assert values(sysfs) == HOST and not os.path.exists(record)


def test_a_restarted_throttler_restores_the_true_originals_not_its_own(env):
    sysfs, proc, record, clock = env
    add_vm(proc, 42)
    with throttler(sysfs, proc, record, clock) as t:
        t.tick()  # aggressive, then killed: no restore
    assert sysfs.read("run") == "1"
    said = []
    with throttler(sysfs, proc, record, clock, said) as t:
        assert t.host == HOST and "taking over" in said[0]
        add_vm(proc, 43)
        t.tick()  # a snapshot now would see the aggressive values: the record's must win
        assert t.restore()
        t.forget()
    assert values(sysfs) == HOST and not os.path.exists(record)


def test_a_record_from_another_boot_or_malformed_is_ignored(env):
    sysfs, proc, record, clock = env
    os.makedirs(os.path.dirname(record))
    for data in ({"boot_id": "boot-0", "state": {"level": "slow", "since": 0, "baseline": 0, "vms": []},
                  "host": {"run": "1"}},
                 {"boot_id": "boot-1", "state": {"level": "slow", "since": 0, "baseline": 0, "vms": []},
                  "host": {"run": "1; reboot"}}):
        Path(record).write_text(json.dumps(data))
        said = []
        with throttler(sysfs, proc, record, clock, said) as t:
            assert t.host is None and t.state == policy.State() and "ignoring" in said[0]


def test_one_throttler_at_a_time(env):
    sysfs, proc, record, clock = env
    with throttler(sysfs, proc, record, clock):
        with pytest.raises(KsmError, match="another pellucid ksm"):
            throttler(sysfs, proc, record, clock).__enter__()


def test_a_failed_write_is_tried_again_at_the_next_tick(env):
    sysfs, proc, record, clock = env
    add_vm(proc, 42)
    (Path(sysfs.root) / "advisor_max_cpu").chmod(0o444)
    with throttler(sysfs, proc, record, clock) as t:
        if os.access(Path(sysfs.root) / "advisor_max_cpu", os.W_OK):  # root writes anyway: make it a directory
            (Path(sysfs.root) / "advisor_max_cpu").unlink()
            (Path(sysfs.root) / "advisor_max_cpu").mkdir()
        with pytest.raises(KsmError, match="advisor_max_cpu"):
            t.tick()
        assert t.state.level == policy.Level.HOST
        (Path(sysfs.root) / "advisor_max_cpu").rmdir()
        (Path(sysfs.root) / "advisor_max_cpu").write_text("70\n")
        assert dict(t.tick())["advisor_max_cpu"] == "60"


# `pellucid ksm` as a command


def pellucid(tmp_path, *args, sysfs="ksm", **kw):
    env = {**os.environ, "PELLUCID_KSM_SYSFS": str(tmp_path / sysfs), "PELLUCID_KSM_PROC": str(tmp_path / "proc")}
    argv = [sys.executable, "-m", "pellucid.cli", "--root", str(tmp_path / "root"), "ksm", *args]
    return subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_no_ksm_in_the_kernel_is_off_with_a_clear_message(tmp_path):
    p = pellucid(tmp_path, "--once", sysfs="absent")
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0 and out.startswith("KSM: off: this kernel has no KSM")


def test_once_says_which_mechanism_it_uses(tmp_path):
    make_sysfs(tmp_path / "ksm")
    add_vm(make_proc(tmp_path / "proc"), 42)
    p = pellucid(tmp_path, "--once", "--json")
    out, err = p.communicate(timeout=30)
    report = json.loads(out)
    assert (report["mechanism"], report["level"], report["vms"]) == ("advisor", "aggressive", [42]), err
    assert report["written"]["advisor_mode"] == "scan-time" and report["host"] == HOST
    p = pellucid(tmp_path, "--restore")
    p.communicate(timeout=30)
    assert values(KsmSysfs(str(tmp_path / "ksm"))) == HOST


def test_the_daemon_restores_the_host_settings_on_sigterm(tmp_path):
    sysfs = make_sysfs(tmp_path / "ksm")
    add_vm(make_proc(tmp_path / "proc"), 42)
    p = pellucid(tmp_path, "--interval", "0.1")
    deadline = time.monotonic() + 30
    while sysfs.read("run") != "1" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sysfs.read("advisor_mode") == "scan-time"
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert "using the kernel's KSM advisor" in err and "restored the host's settings" in err
    assert values(sysfs) == HOST and not (tmp_path / "root" / RECORD_NAME).exists()


def test_the_systemd_unit_runs_the_daemon_and_restores_after_it():
    """`systemd-analyze verify` checks the unit where systemd is installed; this checks its keys."""
    import configparser
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(REPO / "contrib/systemd/pellucid-ksm.service")
    assert unit["Unit"]["ConditionPathIsDirectory"] == "/sys/kernel/mm/ksm"
    assert unit["Service"]["ExecStart"].split() == ["/usr/local/bin/pellucid", "ksm"]
    assert unit["Service"]["ExecStopPost"].split() == ["/usr/local/bin/pellucid", "ksm", "--restore"]
    assert unit["Service"]["Restart"] == "on-failure" and unit["Install"]["WantedBy"] == "multi-user.target"
