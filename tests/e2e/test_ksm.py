"""The KSM throttler on the host's real KSM: two pellucid VMs boot, `pellucid ksm` runs, and pages
of one VM's RAM end up merged with the other's. The host's KSM settings are put back whatever
happens."""

from __future__ import annotations

import os
import re
import signal
import struct
import subprocess
import time

import pytest

from pellucid import config as config_mod
from pellucid.ksm import policy
from pellucid.ksm.sysfs import KsmSysfs
from pellucid.vm.assets import resolve
from pellucid.vm.machine import VM
from pellucid.vm.spec import make_spec

from .conftest import PELLUCID, qemu_pids

pytestmark = pytest.mark.vm

PAGE = os.sysconf("SC_PAGE_SIZE")
KPF_KSM = 1 << 21
PFN_MASK = (1 << 55) - 1
PRESENT = 1 << 63


def mergeable_pfns(pid: int) -> set[int]:
    """Frames of the present pages in a process's MADV_MERGEABLE areas (a QEMU's guest RAM)."""
    areas, start, end = [], 0, 0
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):
                start, end = (int(x, 16) for x in first.split("-"))
            elif first == "VmFlags:" and "mg" in line.split()[1:]:
                areas.append((start, end))
    pfns = set()
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        for start, end in areas:
            f.seek(start // PAGE * 8)
            data = f.read((end - start) // PAGE * 8)
            pfns.update(e & PFN_MASK for e in struct.unpack(f"{len(data) // 8}Q", data) if e & PRESENT)
    return pfns


def ksm_pages_shared_between(a: int, b: int) -> int:
    """KSM pages mapped into both processes' guest RAM: pages merged between the two VMs."""
    count = 0
    with open("/proc/kpageflags", "rb") as flags:
        for pfn in mergeable_pfns(a) & mergeable_pfns(b):
            flags.seek(pfn * 8)
            count += bool(struct.unpack("Q", flags.read(8))[0] & KPF_KSM)
    return count


def test_two_vms_share_merged_pages_and_the_host_settings_come_back(tmp_path, config_file):
    ksm = KsmSysfs()
    if not ksm.present() or not os.access(os.path.join(ksm.root, "run"), os.W_OK):
        pytest.fail("needs the host's KSM, writable (root)")
    host = ksm.snapshot(policy.KEYS)
    cfg = config_mod.load(str(config_file))
    assets = resolve(cfg)
    daemon = None
    try:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        with VM(make_spec(cfg, assets, "tcg"), str(tmp_path / "a")) as a, \
                VM(make_spec(cfg, assets, "tcg"), str(tmp_path / "b")) as b:
            # Two guests booted to their agents: the same kernel and agent in both RAMs.
            a.handshake(240)
            b.handshake(240)
            before = ksm.read_int("pages_sharing")
            if host["run"] == "0":  # KSM off: nothing merged yet
                assert ksm_pages_shared_between(a.proc.pid, b.proc.pid) == 0

            # The throttler sees the two pellucid QEMUs start and turns KSM on.
            started = time.monotonic()
            daemon = subprocess.Popen([PELLUCID, "--root", str(tmp_path / "root"), "ksm", "--interval", "1"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            shared, deadline = 0, started + 300
            while shared < 256 and time.monotonic() < deadline and daemon.poll() is None:
                time.sleep(5)
                shared = ksm_pages_shared_between(a.proc.pid, b.proc.pid)
                print(f"{time.monotonic() - started:5.0f} s: {shared} pages merged between the VMs")
            elapsed = time.monotonic() - started
            sharing = ksm.read_int("pages_sharing")
            print(f"\nKSM under TCG: {shared} pages merged between the two VMs after {elapsed:.0f} s; "
                  f"pages_sharing {before} -> {sharing}, pages_shared {ksm.read_int('pages_shared')}")
            assert daemon.poll() is None, daemon.communicate()[1]
            assert shared >= 256
            # Each VM has pages merged, and the kernel's count shows them. (pages_sharing read before
            # may still count the pages of processes gone since: ksmd drops them lazily.)
            for vm in (a, b):
                assert int(open(f"/proc/{vm.proc.pid}/ksm_merging_pages").read()) >= shared
            assert sharing >= shared

            # Stopped with SIGTERM, as systemd stops it: the host's settings are back.
            daemon.send_signal(signal.SIGTERM)
            _, err = daemon.communicate(timeout=30)
            assert daemon.returncode == 0, err
            assert ("using the kernel's KSM advisor" if ksm.has_advisor() else "set by pellucid") in err
            # (other work on this host may run pellucid VMs too: they count as well)
            assert re.search(r"ksm: aggressive \(\d+ VM\(s\) started", err), err
            assert "restored the host's settings" in err
            assert ksm.snapshot(policy.KEYS) == host
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        KsmSysfs().apply(policy.settings(policy.Level.HOST, policy.ADVISOR, host, 0))
    assert ksm.snapshot(policy.KEYS) == host
    assert qemu_pids(tmp_path) == set()
