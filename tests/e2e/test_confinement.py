"""A confined QEMU, proven from inside a guest: it runs with only the capabilities 9p passthrough
needs, under its own seccomp filter and pellucid's, in the VM's host cgroup; the guest's root can
still chown, chmod, make FIFOs, hard links and xattrs on a volume as any user, but cannot leave a
setuid/setgid file, a device node or a file capability at the volume's host path, and cannot reach
beyond the volume through 9p."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from pellucid.errors import VMError
from pellucid.vm import confine
from pellucid.vm.assets import resolve
from pellucid.vm.machine import VM
from pellucid.vm.qemu_args import Share
from pellucid.vm.spec import make_spec

from .conftest import TEMPLATES, qemu_pids
from .oci_client import Pipes, become_subreaper, read_until, spawn, wait_exit
from .test_vm import config

pytestmark = pytest.mark.vm
HERE = Path(__file__).resolve().parent
SECRET = "host-secret-of-the-confinement-test"


@pytest.fixture(autouse=True, scope="module")
def subreaper():
    become_subreaper()


@pytest.fixture
def probe_bundle(make_bundle, tmp_path):
    """make_bundle with the static confine_probe in the rootfs, every capability a container may
    have that bears on files, and every device allowed (the host, not the guest, must refuse)."""
    def make(script: str, volume: Path) -> Path:
        bundle = make_bundle(["sh", "-c", script])
        subprocess.run(["gcc", "-static", "-O2", "-o", str(bundle / "rootfs/usr/bin/confine_probe"),
                        str(HERE / "confine_probe.c")], check=True)
        config = json.loads((bundle / "config.json").read_text())
        caps = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_MKNOD", "CAP_SETFCAP",
                "CAP_SETUID", "CAP_SETGID", "CAP_SYS_ADMIN"]
        config["process"]["capabilities"] = {k: caps for k in ("bounding", "effective", "permitted")}
        config["linux"]["resources"]["devices"] = [{"allow": True, "access": "rwm"}]
        config["mounts"].append({"destination": "/vol", "type": "bind", "source": str(volume),
                                 "options": ["rbind", "rw"]})
        (bundle / "config.json").write_text(json.dumps(config))
        return bundle
    return make


# A FIFO: made on the host, or refused whole by a QEMU whose CVE-2023-2861 fix also closes the FIFO
# it opens to set its mode (ENXIO; QEMU 7.2 as Debian 12 ships it, with or without confinement).
FIFO = ("ok", "ENXIO")
# What the guest tries, and what the host must answer (ok, or the errno the guest sees).
STEPS = [
    ("create /vol/plain 0644", "ok"),
    ("chmod /vol/plain 04755", "EPERM"),  # an owner's chmod u+s: no capability stops it, the filter does
    ("chmod /vol/plain 02755", "ok"),  # setgid-root: accepted, the bit dropped by the host's kernel
    ("chmod /vol/plain 0750", "ok"),
    ("create /vol/suid 04755", "EPERM"),
    ("create /vol/sgid 02711", "ok"),  # likewise: a file without the bit
    ("create /vol/sgid-noexec 02644", "ok"),
    ("mkdir /vol/dir 0755", "ok"),
    ("mkdir /vol/dir/sub 02755", "ok"),  # the kernel drops the bit from mkdir's mode
    ("chardev /vol/null", ("EACCES", "EPERM")),  # not in QEMU's file view (Landlock), nor has it CAP_MKNOD
    ("fifo /vol/fifo", FIFO),
    ("link /vol/plain /vol/hard", "ok"),
    ("xattr /vol/plain user.pellucid", "ok"),
    # no CAP_SETFCAP on the host; a guest kernel without 9p security.* xattrs refuses it first
    ("xattr /vol/plain security.capability", ("EPERM", "EOPNOTSUPP")),
    ("mkdir /vol/shared/sub 0755", "ok"),  # in a setgid directory the host made: gets its group
    ("create /vol/shared/f 0644", "ok"),
    ("mkdir /vol/users 0777", "ok"),
    ("as 1000 1000 create /vol/users/a 0640", "ok"),
    ("as 2000 3000 mkdir /vol/users/b 0750", "ok"),
    ("as 1000 1000 chmod /vol/users/a 04750", "EPERM"),
    ("as 1000 1000 chmod /vol/users/a 02750", "ok"),  # the bit dropped
    ("as 1000 1000 chmod /vol/users/a 0600", "ok"),
    ("as 1000 1000 fifo /vol/users/p", FIFO),
    ("as 1000 1000 create /vol/users/b/c 0644", "EACCES"),  # guest uid 1000 is not the owner of b
    # guest root, in a directory and on a file of others' that are closed to it (QEMU's CAP_DAC_OVERRIDE)
    ("create /vol/users/b/by-root 0644", "ok"),
    ("read /vol/users/a", "content"),
    ("read /vol/etclink/hostname", "content guest"),  # the guest's symlink to /etc is the guest's /etc
    ("read /vol/hostlink/secret", "ENOENT"),  # a host symlink in the volume to a host directory
    ("read /vol/../outside/secret", "ENOENT"),  # .. at the volume's root is the container's /
]


def _label(step: str) -> str:
    words = step.split()
    if words[0] == "as":
        words = words[3:]
    op, path, *rest = words
    return f"{op}:{os.path.basename(path)}" + (f":{rest[0]}" if rest and op != "link" else "")


def test_a_guest_cannot_plant_privileges_or_reach_past_its_volume(runtime, probe_bundle, tmp_path):
    volume, outside = tmp_path / "volume", tmp_path / "outside"
    volume.mkdir()
    outside.mkdir()
    (outside / "secret").write_text(SECRET)
    (volume / "hostlink").symlink_to(outside)
    (volume / "shared").mkdir()
    os.chown(volume / "shared", 0, 100)
    os.chmod(volume / "shared", 0o2775)
    script = ("echo guest > /etc/hostname; ln -s /etc /vol/etclink; "
              + "; ".join(f"confine_probe {step}" for step, _ in STEPS)
              + "; chown 1234:5678 /vol/dir; echo DONE; read x")
    pipes = Pipes()
    pid_file = tmp_path / "c.pid"
    out = spawn(runtime, "create", "--bundle", str(probe_bundle(script, volume)), "--pid-file", str(pid_file),
                "confined", pipes=pipes)
    pipes.close_child_ends()
    assert out.returncode == 0, runtime.log.read_text() + runtime.evidence()
    try:
        runtime("start", "confined")
        said = read_until(pipes.stdout_r, b"DONE", timeout=120).decode(errors="replace")
        assert "DONE" in said, said + runtime.evidence()
        answers = dict(line.split("=", 1) for line in said.splitlines() if "=" in line)
        for step, expected in STEPS:
            got = answers.get(_label(step), "(no answer)")
            assert got.startswith(expected), f"{step}: {got}, expected {expected}\n{said}"
        fifos = answers[_label("fifo /vol/fifo")] == "ok"
        assert SECRET not in said
        (qemu,) = qemu_pids(tmp_path)
        _assert_confined(qemu, "confined")
        # a clone (restored from its template's state through a file descriptor) unless cold boots are asked for
        assert bool(runtime.vm_info("confined")["template"]) is TEMPLATES
        pipes.write_stdin(b"\n")
        assert wait_exit(int(pid_file.read_text())) == 0
        runtime("delete", "confined")
    finally:
        pipes.close()
    _assert_nothing_planted(volume, setgid_dirs={volume / "shared"})
    users = volume / "users"
    assert (os.stat(users / "a").st_uid, os.stat(users / "a").st_gid) == (1000, 1000)
    assert stat.S_IMODE(os.stat(users / "a").st_mode) == 0o600
    b = os.stat(users / "b")
    assert (b.st_uid, b.st_gid, stat.S_IMODE(b.st_mode)) == (2000, 3000, 0o750)
    assert (os.stat(volume / "dir").st_uid, os.stat(volume / "dir").st_gid) == (1234, 5678)
    for fifo in (volume / "fifo", users / "p"):
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode) if fifos else not os.path.lexists(fifo)
    assert os.stat(volume / "plain").st_nlink == 2 and os.path.samefile(volume / "plain", volume / "hard")
    assert os.getxattr(volume / "plain", "user.pellucid") == b"v"
    assert os.readlink(volume / "etclink") == "/etc"
    assert os.stat(volume / "shared/sub").st_gid == 100 and os.stat(volume / "shared/f").st_gid == 100
    assert (outside / "secret").read_text() == SECRET


def _assert_confined(qemu: int, container_id: str) -> None:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{qemu}/status").read_text().splitlines())
    keep = confine.cap_mask(confine.KEEP)
    for field in ("CapEff", "CapPrm", "CapBnd"):
        assert int(status[field], 16) == keep, f"{field} {status[field].strip()}, expected {keep:x}"
    assert int(status["CapInh"], 16) == 0 and int(status["CapAmb"], 16) == 0
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"
    assert int(status["Seccomp_filters"]) >= 2, "pellucid's filter and QEMU's -sandbox"
    argv = Path(f"/proc/{qemu}/cmdline").read_bytes().split(b"\0")
    assert argv[argv.index(b"-sandbox") + 1] == b"on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
    # In the VM's host cgroup: the monitor's (its parent's), named after the container, not ours.
    cgroup = Path(f"/proc/{qemu}/cgroup").read_text()
    ppid = int(status["PPid"])
    assert cgroup == Path(f"/proc/{ppid}/cgroup").read_text()
    assert cgroup != Path("/proc/self/cgroup").read_text() and container_id in cgroup, cgroup


def _assert_nothing_planted(volume: Path, setgid_dirs: set[Path]) -> None:
    """No setuid file, no setgid one (but the directories the host made setgid and their inheriting
    children), no device node, no file capability anywhere under the volume's host path."""
    for dirpath, dirnames, filenames in os.walk(volume):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            assert not st.st_mode & stat.S_ISUID, f"{path} is setuid: {oct(st.st_mode)}"
            assert not st.st_mode & stat.S_ISGID or Path(path) in setgid_dirs, f"{path} is setgid: {oct(st.st_mode)}"
            assert not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)), f"{path} is a device node"
            if not stat.S_ISLNK(st.st_mode):
                assert "security.capability" not in os.listxattr(path), f"{path} has a file capability"


def test_qemu_opens_only_its_own_files(tmp_path):
    """Asked over QMP to open files, QEMU can open those of its VM and share, and no other host file;
    nor can it connect to a host service, over TCP or a Unix socket."""
    share, work, outside = tmp_path / "share", tmp_path / "vm", tmp_path / "outside"
    for d in (share, work, outside):
        d.mkdir()
    (share / "mine").write_text("share")
    (outside / "theirs").write_text("host")
    cfg = config()
    spec = make_spec(cfg, resolve(cfg), "tcg", shares=(Share("s", str(share)),))
    listener = socket.create_server(("127.0.0.1", 0))
    unix_path = outside / "service.sock"
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(unix_path))
    unix.listen()
    with VM(spec, str(work)) as vm:
        qmp = vm.monitor()

        def opens(path: Path) -> str:
            try:
                qmp.execute("blockdev-add", driver="file", filename=str(path), **{"node-name": f"n{abs(hash(path))}",
                                                                                  "read-only": True})
            except VMError as err:
                return str(err)
            return "ok"

        assert opens(share / "mine") == "ok"
        assert opens(work / "qemu.pid") == "ok"
        for path in (outside / "theirs", Path("/etc/hostname"), Path("/proc/1/cmdline")):
            assert "Permission denied" in opens(path), path
        try:
            qmp.execute("chardev-add", id="out", backend={"type": "file", "data": {"out": str(outside / "new")}})
            made = "made"
        except VMError as err:
            made = str(err)
        assert "Permission denied" in made and not (outside / "new").exists()
        port = listener.getsockname()[1]
        with pytest.raises(VMError, match="Operation not permitted|Permission denied"):
            qmp.execute("chardev-add", id="tcp", backend={"type": "socket", "data": {
                "addr": {"type": "inet", "data": {"host": "127.0.0.1", "port": str(port)}}, "server": False}})
        # a host service's Unix socket (a container engine's, say): no socket can be made to reach it
        with pytest.raises(VMError, match="Operation not permitted|Permission denied"):
            qmp.execute("chardev-add", id="unix", backend={"type": "socket", "data": {
                "addr": {"type": "unix", "data": {"path": str(unix_path)}}, "server": False}})
        listener.settimeout(0)
        unix.settimeout(0)
        for server in (listener, unix):
            with pytest.raises(BlockingIOError):
                server.accept()
    listener.close()
    unix.close()
