"""The container state store: round trips, errors, status from live processes, concurrency."""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from pellucid import procs, state
from pellucid.errors import ContainerError, ContainerExists, NotFound
from pellucid.host_messages import Network, Nic
from pellucid.state import ContainerState, Status
from pellucid.store import Store

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SLEEP = shutil.which("sleep")


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "root"))


@pytest.fixture
def sleeper():
    procs = []

    def spawn(argv=None):
        p = subprocess.Popen(argv or [SLEEP, "30"])
        procs.append(p)
        return p

    yield spawn
    for p in procs:
        p.kill()
        p.wait()


def make(store, id="c1", **fields):
    with store.create(id, **fields) as st:
        pass
    return st


# Round trips and layout.

def test_create_load_save_round_trip(store):
    with store.create("c1", bundle="/b", rootfs="/b/rootfs", annotations={"a": "1"}) as st:
        assert st.creator_pid == os.getpid()
        assert store.load("c1").creator_pid == os.getpid()  # written as creating before the body
        assert store.status(store.load("c1")) is Status.CREATING
        st.pid, st.netns = 1234, "/run/netns/x"
        st.network = Network(nics=[Nic(name="eth0", mac="02:00:00:00:00:01", mtu=1500, tap="pltap0")])
    assert st.creator_pid == 0 and st.sandbox == "c1" and st.kind == "single"
    got = store.load("c1")
    assert got == st and got.pid == 1234 and got.network.nics[0].tap == "pltap0"
    got.started, got.paused = True, True
    store.save(got)
    assert store.load("c1") == got
    assert sorted(os.listdir(store.dir("c1"))) == ["lock", "state.json"]  # no temp file left
    assert os.stat(store.root).st_mode & 0o7777 == 0o700  # others cannot reach the containers' files
    assert os.stat(store.dir("c1")).st_mode & 0o7777 == 0o700
    assert ContainerState.from_dict(json.loads(json.dumps(got.to_dict()))) == got


def test_created_is_rfc3339_utc_with_nanoseconds(store):
    st = make(store)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z", st.created)
    assert not st.created.endswith("0Z")  # trailing zeros dropped, as Go's RFC3339Nano does
    assert abs(time.mktime(time.strptime(st.created[:19], "%Y-%m-%dT%H:%M:%S")) - time.mktime(time.gmtime())) < 5


def test_fields_and_kinds(store):
    st = make(store, "p1", kind="container", sandbox="pod", owner="", created="2024-05-01T12:34:56.123456789Z")
    assert (st.kind, st.sandbox, st.created) == ("container", "pod", "2024-05-01T12:34:56.123456789Z")
    with pytest.raises(ValueError):
        store.create("p2", kind="vm")
    with pytest.raises(TypeError):
        store.create("p2", colour="blue")
    assert not os.path.exists(store.dir("p2"))


def test_ids_and_list_skip_dot_entries_and_half_made_dirs(store):
    for id in ("b", "a", "c"):
        make(store, id)
    os.mkdir(os.path.join(store.root, ".vm"))
    os.mkdir(os.path.join(store.root, "halfmade"))  # create killed between mkdir and writing state
    assert store.ids() == ["a", "b", "c", "halfmade"]
    assert [st.id for st in store.list()] == ["a", "b", "c"]
    assert Store(store.root + "/nowhere").ids() == [] and Store(store.root + "/nowhere").list() == []


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "../x", "/abs", ".vm", "a\0b"])
def test_bad_ids_refused(store, bad):
    for call in (store.load, store.remove, store.lock, store.create):
        with pytest.raises(ValueError):
            call(bad)


# Errors.

def test_duplicate_id(store):
    make(store, "c1", bundle="/first")
    with pytest.raises(ContainerExists, match="^container with id exists: c1$"):
        with store.create("c1", bundle="/second"):
            pytest.fail("body ran")
    assert store.load("c1").bundle == "/first"


def test_exception_in_body_leaves_nothing(store):
    with pytest.raises(RuntimeError, match="boom"):
        with store.create("c1") as st:
            st.pid = 1
            store.save(st)
            open(os.path.join(store.dir("c1"), "console.sock"), "w").close()
            os.mkdir(os.path.join(store.dir("c1"), "sub"))
            raise RuntimeError("boom")
    assert not os.path.exists(store.dir("c1"))
    make(store, "c1")  # the id is free again


def test_failed_final_save_leaves_nothing(store):
    with pytest.raises(TypeError):
        with store.create("c1") as st:
            st.poststart = [object()]  # not JSON-serialisable
    assert not os.path.exists(store.dir("c1"))


def test_not_found(store):
    with pytest.raises(NotFound, match="^container does not exist$"):
        store.load("nope")
    with pytest.raises(NotFound):
        with store.lock("nope"):
            pass
    with pytest.raises(NotFound):
        store.save(ContainerState("nope"))
    os.makedirs(store.dir("half"))
    with pytest.raises(NotFound):
        store.load("half")
    open(os.path.join(store.dir("half"), "lock"), "w").close()  # lock file but no state yet
    with pytest.raises(NotFound):
        with store.lock("half"):
            pass
    store.remove("nope")  # idempotent
    make(store, "c1")
    store.remove("c1")
    store.remove("c1")
    with pytest.raises(NotFound):
        store.load("c1")


@pytest.mark.parametrize("content", [b"", b'{"id": "c1", "pid": 4', b"\xff\xfe", b"[]", b"{}", b'{"id": "c1", "pid": "7"}',
                                     b'{"id": "c1", "started": 1}', b'{"id": "c1", "kind": "vm"}',
                                     b'{"id": "c1", "pid": -1}', b'{"id": "other"}'])
def test_corrupt_state_file(store, content):
    make(store)
    with open(os.path.join(store.dir("c1"), "state.json"), "wb") as f:
        f.write(content)
    with pytest.raises(ContainerError, match="corrupt state file") as info:
        store.load("c1")
    assert not isinstance(info.value, NotFound)
    with pytest.raises(ContainerError):
        store.list()
    seen = []
    assert store.list(on_error=lambda id, err: seen.append(id)) == [] and seen == ["c1"]


def test_unknown_fields_are_ignored(store):
    make(store)
    path = os.path.join(store.dir("c1"), "state.json")
    with open(path) as f:
        data = json.load(f)
    data["from_the_future"] = 1
    with open(path, "w") as f:
        json.dump(data, f)
    assert store.load("c1").id == "c1"


def test_lock_is_reentrant_in_a_store(store):
    with store.create("c1"):
        with store.lock("c1"):  # from inside the create body: no self-deadlock
            pass
    with store.lock("c1", shared=True):
        with store.lock("c1", shared=True):
            pass
        with pytest.raises(RuntimeError):
            with store.lock("c1"):
                pass
    with store.lock("c1") as lk:
        assert lk.fd >= 0
    assert store._held == {}


def test_lock_excludes_other_processes(store):
    make(store)

    def take(shared):
        with Store(store.root).lock("c1", shared=shared):
            return "got"

    with store.lock("c1"):
        pid, out = fork(take, False)
        time.sleep(0.2)
        assert not os.waitpid(pid, os.WNOHANG)[0]  # still waiting
    assert reap(pid, out) == "got"
    with store.lock("c1", shared=True):  # shared locks share
        assert reap(*fork(take, True)) == "got"


def test_waiter_sees_removal_and_recreation(store):
    def waiter():
        s = Store(store.root)
        try:
            with s.lock("c1"):
                return s.load("c1").bundle
        except NotFound:
            return "notfound"

    make(store, "c1", bundle="/old")
    with store.lock("c1"):
        pid, out = fork(waiter)
        time.sleep(0.1)
        store.remove("c1")
    assert reap(pid, out) == "notfound"
    make(store, "c1", bundle="/old")
    with store.lock("c1"):
        pid, out = fork(waiter)
        time.sleep(0.1)
        store.remove("c1")
        make(Store(store.root), "c1", bundle="/new")  # the waiter holds the old lock file: it must lock the new one
    assert reap(pid, out) == "/new"
    with store.lock("c1"):  # the same Store may do it too
        store.remove("c1")
        make(store, "c1", bundle="/newer")
        with store.lock("c1"):
            assert store.load("c1").bundle == "/newer"
    assert store._held == {}


# Status from live processes.

def wait_for_zombie(pid):
    for _ in range(500):
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rpartition(")")[2].split()[0] == "Z":
                return
        time.sleep(0.01)
    pytest.fail("no zombie")


def test_proc_start_time():
    mine = procs.proc_start_time(os.getpid())
    assert isinstance(mine, int) and mine > 0
    assert mine == procs.proc_start_time(os.getpid())
    assert procs.proc_start_time(0) is None and procs.proc_start_time(-1) is None
    assert procs.proc_start_time(2 ** 22 + 1) is None  # above pid_max


def test_parse_stat_with_hostile_comm():
    fields = " ".join(["S"] + [str(i) for i in range(4, 22)] + ["777"] + ["0"] * 30)
    assert procs._parse_stat(f"42 (a) b ) S 1 (c)) {fields}".encode()) == ("S", 777)
    assert procs._parse_stat(b"42 (short) S 1 2") is None
    assert procs._parse_stat(b"garbage") is None


def test_status_of_a_live_process(store, sleeper):
    p = sleeper()
    st = make(store, pid=p.pid, pid_start=procs.proc_start_time(p.pid))
    assert store.status(st) is Status.CREATED
    st.started = True
    assert store.status(st) is Status.RUNNING
    st.paused = True
    assert store.status(st) is Status.PAUSED
    st.paused = False
    st.pid_start += 1  # the pid was reused by another process
    assert store.status(st) is Status.STOPPED
    st.pid_start = 0  # unknown start time: the pid alone decides
    assert store.status(st) is Status.RUNNING
    st.pid_start = procs.proc_start_time(p.pid)
    p.kill()
    p.wait()
    assert store.status(st) is Status.STOPPED


def test_status_of_a_zombie_is_stopped(store, sleeper):
    p = sleeper([SLEEP, "0"])
    wait_for_zombie(p.pid)
    st = make(store, pid=p.pid, pid_start=procs.proc_start_time(p.pid), started=True)
    assert store.status(st) is Status.STOPPED


def test_status_with_comm_holding_spaces_and_parens(store, sleeper, tmp_path):
    weird = tmp_path / "a) b (c"
    os.symlink(SLEEP, weird)
    p = sleeper([str(weird), "30"])
    for _ in range(200):  # until the exec has happened
        with open(f"/proc/{p.pid}/stat", "rb") as f:
            if b"(a) b (c)" in f.read():
                break
        time.sleep(0.01)
    start = procs.proc_start_time(p.pid)
    assert start is not None and start > 0
    st = make(store, pid=p.pid, pid_start=start, started=True)
    assert store.status(st) is Status.RUNNING


def test_status_of_creation(store, sleeper):
    assert store.status(ContainerState("x")) is Status.STOPPED
    me = ContainerState("x", creator_pid=os.getpid(), creator_start=procs.proc_start_time(os.getpid()))
    assert store.status(me) is Status.CREATING
    me.creator_start += 1  # the creator's pid reused by someone else
    assert store.status(me) is Status.STOPPED
    dead = subprocess.Popen([SLEEP, "0"])
    dead.wait()
    killed = ContainerState("x", creator_pid=dead.pid)  # create was killed before it had a pid
    assert store.status(killed) is Status.STOPPED
    p = sleeper()
    killed.pid, killed.pid_start = p.pid, procs.proc_start_time(p.pid)  # ... or after
    assert store.status(killed) is Status.CREATED


def test_oci_state(store, sleeper):
    p = sleeper()
    st = make(store, bundle="/b", rootfs="/b/rootfs", pid=p.pid, pid_start=procs.proc_start_time(p.pid),
              started=True)
    assert state.oci_state(st, store.status(st)) == {
        "ociVersion": "1.0.2", "id": "c1", "pid": p.pid, "status": "running", "bundle": "/b",
        "rootfs": "/b/rootfs", "created": st.created, "owner": ""}
    st.annotations = {"k": "v"}
    out = state.oci_state(st, Status.STOPPED)
    assert out["pid"] == 0 and out["status"] == "stopped" and out["annotations"] == {"k": "v"}
    assert list(out) == ["ociVersion", "id", "pid", "status", "bundle", "rootfs", "created", "owner", "annotations"]


# Concurrency: each CLI call is a process of its own. Forked (an interpreter starts slowly).

def fork(fn, *args, gate=None):
    """Run ``fn(*args)`` in a child (after a byte arrives on ``gate``); return (pid, fd of its answer)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            # Like a fresh process, hold no descriptor of the parent's (its locks above all).
            for fd in map(int, os.listdir("/proc/self/fd")):
                if fd > 2 and fd not in (w, gate):
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            if gate is not None:
                os.read(gate, 1)
            os.write(w, str(fn(*args)).encode())
            code = 0
        except BaseException:
            import traceback
            os.write(w, traceback.format_exc().encode())
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def reap(pid, fd):
    with open(fd, "rb") as f:
        out = f.read().decode()
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0, out
    return out


def race(fn, argss):
    """Run ``fn(*args)`` for each args in a child of its own, all let go at once; their answers."""
    gate_r, gate_w = os.pipe()
    children = [fork(fn, *args, gate=gate_r) for args in argss]
    os.write(gate_w, b"g" * len(children))
    os.close(gate_r)
    os.close(gate_w)
    return [reap(*child) for child in children]


def create(root, id, n):
    s = Store(root)
    try:
        with s.create(id, bundle=f"/b{n}") as st:
            st.guest_pid = n
            s.save(st)
            st.pid = n
        return "won"
    except ContainerExists:
        return "exists"


def test_concurrent_creates_of_distinct_ids(store):
    assert race(create, [(store.root, f"c{n}", n) for n in range(20)]) == ["won"] * 20
    states = store.list()
    assert [st.id for st in states] == sorted(f"c{n}" for n in range(20))
    assert all(st.bundle == f"/b{st.pid}" and st.guest_pid == st.pid and st.creator_pid == 0 for st in states)


def test_concurrent_creates_of_one_id(store):
    out = race(create, [(store.root, "same", n) for n in range(20)])
    assert sorted(out) == ["exists"] * 19 + ["won"]
    st = store.load("same")
    winner = out.index("won")
    assert (st.bundle, st.pid, st.guest_pid, st.creator_pid) == (f"/b{winner}", winner, winner, 0)
    assert sorted(os.listdir(store.dir("same"))) == ["lock", "state.json"]


def increment(root):
    s = Store(root)
    for _ in range(25):
        with s.lock("c1"):
            st = s.load("c1")
            st.guest_pid += 1
            s.save(st)
    return "done"


def read(root):
    s = Store(root)
    seen = 0
    for _ in range(300):
        seen = max(seen, s.load("c1").guest_pid)  # lock-free reads never see a torn file
    return seen


def test_concurrent_increments_under_lock(store):
    make(store)
    out = race(lambda f: f(store.root), [(increment,)] * 6 + [(read,)] * 2)
    assert out[:6] == ["done"] * 6 and all(0 <= int(seen) <= 150 for seen in out[6:])
    assert store.load("c1").guest_pid == 150
    assert sorted(os.listdir(store.dir("c1"))) == ["lock", "state.json"]


def test_fresh_process_imports_little():
    code = ("import sys; before = set(sys.modules); import pellucid.store\n"
            "print(' '.join(sorted(set(sys.modules) - before)))")
    loaded = set(subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True,
                                text=True, timeout=30).stdout.split())
    assert {"pellucid.state", "pellucid.store", "pellucid.procs"} <= loaded
    assert not loaded & {"dataclasses", "typing", "subprocess", "datetime", "shutil", "contextlib", "threading"}


def test_root_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Store("rel").root == str(tmp_path / "rel")


def test_remove_never_deletes_through_a_mount(tmp_path):
    """A container's rootfs is bind-mounted below its state directory: removing must not empty it."""
    import subprocess
    store = Store(str(tmp_path / "root"))
    with store.create("c1"):
        pass
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "file").write_text("keep")
    target = tmp_path / "root" / "c1" / "vm" / "rootfs"
    target.mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(precious), str(target)], check=True)
    try:
        with pytest.raises(ContainerError, match="still mounted"):
            store.remove("c1")
    finally:
        subprocess.run(["umount", str(target)], check=True)
    assert (precious / "file").read_text() == "keep"
    store.remove("c1")
    assert not (tmp_path / "root" / "c1").exists()


def test_an_older_roots_mode_is_tightened(tmp_path):
    root = tmp_path / "root"
    root.mkdir(mode=0o711)
    os.chmod(root, 0o711)
    store = Store(str(root))
    with store.create("c1", bundle="/b", rootfs="/b/rootfs"):
        pass
    assert os.stat(root).st_mode & 0o7777 == 0o700


def test_delete_force_removes_what_a_create_killed_before_its_first_save_left(tmp_path):
    from pellucid.runtime import lifecycle
    from tests.fakes import FakeHost
    store = Store(str(tmp_path / "root"))
    os.makedirs(store.dir("half"), 0o700)
    open(os.path.join(store.dir("half"), "lock"), "w").close()
    import fcntl
    held = os.open(os.path.join(store.dir("half"), "lock"), os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)  # its create still runs: left alone
    assert not store.remove_abandoned("half") and os.path.isdir(store.dir("half"))
    os.close(held)  # the create was killed
    lifecycle.delete(store, "half", force=True, host=FakeHost())
    assert not os.path.exists(store.dir("half"))
    os.makedirs(store.dir("young"), 0o700)  # no lock file yet: a create just begun
    assert not store.remove_abandoned("young") and os.path.isdir(store.dir("young"))
    os.utime(store.dir("young"), (0, 0))
    assert store.remove_abandoned("young") and not os.path.exists(store.dir("young"))
