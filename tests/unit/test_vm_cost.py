"""`pellucid stats`: a container's VM's host processes and their PSS, QEMU's PSS by kind, the
guest's view and the template pages no process maps, read from a /proc of the test's own (a
directory of stat, cmdline, maps, smaps and smaps_rollup files) and a fake host."""

from __future__ import annotations

import os

import pytest

from pellucid.commands.container import format_cost
from pellucid.errors import ContainerError, NotFound
from pellucid.host_messages import HostCgroup, VMInfo
from pellucid.procfs import Proc, parse_smaps
from pellucid.runtime.layout import vm_dir_of
from pellucid.runtime.vm_cost import backend_paths, cost
from pellucid.store import Store
from tests.fakes import MY_PID, MY_START, FakeHost, FakeMonitor

MONITOR, QEMU, EXEC_SHIM, OTHER_CLONE = 900001, 900002, 900003, 900004
MiB = 1 << 20


def qemu_argv(ram: str, image: str) -> list[str]:
    argv = ["qemu-system-x86_64", "-name", "pellucid-c1"]
    if ram:
        argv += ["-object", f"memory-backend-file,id=ram0,mem-path={ram},size=256M,share=off"]
    return argv + ["-object", f"memory-backend-file,id=rootmem,mem-path={image},size=62914560,share=on,readonly=on",
                   "-kernel", "/assets/vmlinux"]


class FakeProc:
    """A /proc under ``root``."""

    def __init__(self, root) -> None:
        self.root = root

    def add(self, pid: int, *, ppid: int = 1, start: int = 5, argv: tuple[str, ...] = ("python3",),
            rollup: dict[str, int] | None = None, smaps: str = "", maps: str = "") -> None:
        d = self.root / str(pid)
        d.mkdir(parents=True)
        (d / "stat").write_text(f"{pid} (a (b) c) S {ppid} " + "0 " * 17 + f"{start} 0 0\n")
        (d / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in argv))
        (d / "smaps_rollup").write_text("00400000-7fff00000000 ---p 00000000 00:00 0   [rollup]\n" + "".join(
            f"{k}: {v // 1024} kB\n" for k, v in (rollup or {}).items()))
        (d / "smaps").write_text(smaps)
        (d / "maps").write_text(maps)


def mapping(start: int, size: int, perms: str, path: str, **fields: int) -> str:
    head = f"{start:x}-{start + size:x} {perms} 00000000 00:00 0          {path}\n"
    return head + "".join(f"{k}: {v // 1024} kB\n" for k, v in fields.items())


@pytest.fixture
def world(tmp_path):
    """A running clone c1 (shim: this test process, which its status check sees alive), its monitor,
    its QEMU, an exec shim in its host cgroup, and another clone of the same template."""
    store = Store(str(tmp_path / "root"))
    host = FakeHost()
    ram = tmp_path / "templates" / "k1" / "ram"
    ram.parent.mkdir(parents=True)
    ram.write_bytes(b"\1" * (8 * MiB))  # resident: 8 MiB
    image = "/assets/image-1/root.img"
    cgroup = tmp_path / "cgroup" / "c1"
    cgroup.mkdir(parents=True)
    (cgroup / "cgroup.procs").write_text(f"{MY_PID}\n{MONITOR}\n{QEMU}\n{EXEC_SHIM}\n")
    with store.create("c1", bundle="/nonexistent") as st:
        st.pid, st.pid_start, st.started = MY_PID, MY_START, True
        st.monitor_pid, st.monitor_start = MONITOR, 77
        st.vm = VMInfo(accelerator="tcg", vcpus=1, memory_mib=256, qemu_pid=QEMU, template="k1")
        st.cgroup = HostCgroup(dirs=[str(cgroup)])
    host.vms[vm_dir_of(store, st)] = FakeMonitor(host, vm_dir_of(store, st), None)
    host.containers.add("c1")
    proc = FakeProc(tmp_path / "proc")
    proc.add(MY_PID, start=MY_START, argv=("python3", "-m", "pellucid.shim", "3", "4"),
             rollup={"Pss": 5 * MiB, "Rss": 11 * MiB})
    proc.add(MONITOR, start=77, argv=("python3", "-m", "pellucid.monitor", "/vm", "--serve", "5"),
             rollup={"Pss": 6 * MiB, "Rss": 12 * MiB})
    smaps = (mapping(0x7f0000000000, 256 * MiB, "rw-p", str(ram), Rss=20 * MiB, Pss=9 * MiB, Anonymous=6 * MiB)
             + mapping(0x7f1000000000, 60 * MiB, "r--s", image, Rss=8 * MiB, Pss=2 * MiB)
             + mapping(0x7f2000000000, 1024 * MiB, "rwxp", "", Rss=34 * MiB, Pss=34 * MiB, Anonymous=34 * MiB)
             + mapping(0x7f3000000000, 4 * MiB, "r-xp", "/usr/bin/qemu-system-x86_64", Rss=3 * MiB, Pss=2 * MiB))
    proc.add(QEMU, ppid=MONITOR, argv=tuple(qemu_argv(str(ram), image)),
             rollup={"Pss": 70 * MiB, "Rss": 100 * MiB, "Pss_Shmem": 3 * MiB}, smaps=smaps,
             maps=f"7f0000000000-7f0010000000 rw-p 00000000 00:1a 12 {ram}\n")
    proc.add(EXEC_SHIM, argv=("python3", "-m", "pellucid.shim", "3", "4"), rollup={"Pss": 4 * MiB, "Rss": 10 * MiB})
    proc.add(OTHER_CLONE, rollup={"Pss": 60 * MiB, "Pss_Shmem": 2 * MiB},
             maps=f"7f0000000000-7f0010000000 rw-p 00000000 00:1a 12 {ram} (deleted)\n")
    return store, host, Proc(str(tmp_path / "proc")), proc, str(ram)


def test_stats_charges_every_host_process_of_the_vm(world):
    store, host, proc, _, ram = world
    r = cost(store, "c1", host, proc)
    assert [(p["role"], p["pid"], p["container"], p["pss"]) for p in r["processes"]] == [
        ("qemu", QEMU, "", 70 * MiB), ("monitor", MONITOR, "", 6 * MiB), ("shim", MY_PID, "c1", 5 * MiB),
        ("shim", EXEC_SHIM, "exec", 4 * MiB)]
    assert r["total_pss"] == 85 * MiB
    assert r["vm"] == {"owner": "c1", "qemu_pid": QEMU, "accelerator": "tcg", "vcpus": 1, "memory_mib": 256,
                       "template": "k1"}


def test_qemus_pss_is_broken_down_and_adds_up(world):
    store, host, proc, _, _ = world
    q = cost(store, "c1", host, proc)["qemu"]
    # The template mapping's 9 MiB of PSS: 3 MiB of tmpfs pages (Pss_Shmem), 6 MiB written by this VM.
    assert (q["template"], q["guest_ram"], q["template_rss"]) == (3 * MiB, 6 * MiB, 14 * MiB)
    assert (q["root_image"], q["root_image_rss"], q["code_cache"]) == (2 * MiB, 8 * MiB, 34 * MiB)
    assert q["qemu"] == 70 * MiB - (3 + 6 + 2 + 34) * MiB


def test_template_pages_no_process_maps_are_counted_once(world):
    store, host, proc, _, ram = world
    t = cost(store, "c1", host, proc)["template"]
    resident = os.stat(ram).st_blocks * 512
    # Both clones map it (one through a name the file had before it was replaced): 3 + 2 MiB of it.
    assert t == {"path": ram, "resident": resident, "mapped": 5 * MiB, "unmapped": resident - 5 * MiB, "mappers": 2}


def test_a_template_file_that_is_gone_is_said_so(world):
    store, host, proc, _, ram = world
    os.unlink(ram)
    assert "gone" in cost(store, "c1", host, proc)["template"]["error"]


def test_the_guest_view_is_the_one_events_stats_reports(world):
    store, host, proc, _, _ = world
    guest = cost(store, "c1", host, proc)["guest"]
    assert guest["memory"]["usage"]["usage"] == 1 << 20 and guest["pids"]["current"] == 1


def test_a_cold_boot_has_anonymous_guest_ram_and_no_template(world, tmp_path):
    store, host, proc, fake, _ = world
    qemu = tmp_path / "proc" / str(QEMU)
    (qemu / "cmdline").write_bytes(b"\0".join(a.encode() for a in qemu_argv("", "/img")) + b"\0")
    (qemu / "smaps").write_text(mapping(0x7f0000000000, 256 * MiB, "rw-p", "", Rss=40 * MiB, Pss=40 * MiB)
                                + mapping(0x7f1000000000, 20 * MiB, "r--p", "/assets/vmlinux", Rss=12 * MiB, Pss=4 * MiB))
    r = cost(store, "c1", host, proc)
    assert r["qemu"]["guest_ram"] == 40 * MiB and r["qemu"]["kernel"] == 4 * MiB
    assert r["qemu"]["template"] == 0 and r["template"] is None


def test_a_reused_pid_is_not_charged(world, tmp_path):
    """A monitor pid whose start time differs is another process; then QEMU (no longer the
    recorded monitor's child) is not the VM's either, and the VM counts as gone."""
    store, host, proc, _, _ = world
    (tmp_path / "cgroup" / "c1" / "cgroup.procs").write_text(f"{MY_PID}\n")
    st = store.load("c1")
    st.monitor_start = 78
    store.save(st)
    with pytest.raises(ContainerError, match="container not running: its VM is gone"):
        cost(store, "c1", host, proc)


def test_unknown_and_stopped_containers_are_refused_as_runc_does(world):
    store, host, proc, _, _ = world
    with pytest.raises(NotFound, match="container does not exist"):
        cost(store, "nosuch", host, proc)
    st = store.load("c1")
    st.pid, st.pid_start = 0, 0
    store.save(st)
    with pytest.raises(ContainerError, match="container not running"):
        cost(store, "c1", host, proc)


def test_the_qemu_command_line_names_the_template_and_the_image():
    assert backend_paths(qemu_argv("/t/ram", "/a/root.img") + ["-object", "rng-random,id=rng0"]) == {
        "ram0": "/t/ram", "rootmem": "/a/root.img"}


def test_smaps_parsing_keeps_sizes_paths_and_fields():
    text = (mapping(0x1000, 0x3000, "r-xp", "/usr/lib/libc.so.6", Rss=8192, Pss=4096)
            + "VmFlags: rd ex mr mw me\n"
            + mapping(0x10000, 0x1000, "rw-p", "/dev/shm/t/ram (deleted)", Rss=4096)
            + mapping(0x20000, 0x2000, "rw-p", "", Anonymous=8192))
    maps = parse_smaps(text)
    assert [(m.size, m.perms, m.path) for m in maps] == [(0x3000, "r-xp", "/usr/lib/libc.so.6"),
                                                        (0x1000, "rw-p", "/dev/shm/t/ram"), (0x2000, "rw-p", "")]
    assert maps[0].get("Pss") == 4096 and maps[2].get("Anonymous") == 8192 and maps[1].get("Pss") == 0


def test_the_table_shows_each_figure_in_mib(world):
    store, host, proc, _, _ = world
    text = format_cost(cost(store, "c1", host, proc))
    assert "container c1: VM of c1 (tcg, 1 vCPU, 256 MiB, clone of template k1)" in text
    assert f"qemu {QEMU}" in text and f"shim {EXEC_SHIM} (exec)" in text
    assert "  total                            85.0" in text
    assert "  template pages (shared)           3.0  (RSS 14.0)" in text
    assert "guest's view of the container: usage 1.0 MiB" in text
    assert "are mapped by no process (2 processes map it)" in text
