"""Every guard of every verb, in every status, on a fake host: allowed (and then the verb does
what it should) or refused with runc's words (and then nothing happened)."""

from __future__ import annotations

import fcntl
import os

import pytest

from pellucid.errors import AgentError, ContainerError, NotFound, VMError
from pellucid.host_messages import Network, Nic, VMInfo
from pellucid.runtime import lifecycle
from pellucid.runtime.exec import exec_process
from pellucid.runtime.layout import vm_dir_of
from pellucid.state import Status
from pellucid.store import LOCK_FILE, Store
from tests.fakes import MY_PID, MY_START, FakeHost, FakeMonitor

STATUSES = [s for s in Status]


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "root"))


def make(store: Store, host: FakeHost, status: Status, id: str = "c1"):
    """A container in ``status``: the fake shim and the creating command carry this test's pid,
    which the status check sees alive; its VM runs on the fake host."""
    with store.create(id, bundle="/nonexistent", poststart=[{"path": "/bin/true"}],
                      poststop=[{"path": "/bin/true"}]) as st:
        st.pid, st.pid_start = (MY_PID, MY_START) if status is not Status.STOPPED else (0, 0)
        st.started = status in (Status.RUNNING, Status.PAUSED)
        st.paused = status is Status.PAUSED
        st.process, st.monitor_pid, st.monitor_start = 7, MY_PID, MY_START
        st.netns = "/run/netns/c1"
        st.network = Network(nics=[Nic(name="eth0", tap="pltap0", mac="02:00:00:00:00:01", mtu=1500)])
        st.vm = VMInfo(vcpus=2, memory_mib=512)
    if status is Status.CREATING:
        st.creator_pid, st.creator_start = MY_PID, MY_START
        store.save(st)
    vm_dir = vm_dir_of(store, st)
    host.vms[vm_dir] = FakeMonitor(host, vm_dir, None)
    host.networks[st.netns] = st.network.nics
    host.containers.add(id)
    assert store.status(store.load(id)) is status
    return st


def verbs(store: Store, host: FakeHost) -> dict:
    return {
        "start": lambda: lifecycle.start(store, "c1", host),
        "kill": lambda: lifecycle.kill(store, "c1", "TERM", host=host),
        "delete": lambda: lifecycle.delete(store, "c1", host=host),
        "pause": lambda: lifecycle.pause(store, "c1", host),
        "resume": lambda: lifecycle.resume(store, "c1", host),
        "exec": lambda: exec_process(store, "c1", {"args": ["true"], "cwd": "/"}, host=host),
        "ps": lambda: lifecycle.ps(store, "c1", host),
        "events": lambda: lifecycle.stats(store, "c1", host),
        "update": lambda: lifecycle.update(store, "c1", {"pids": {"limit": 10}}, host),
    }


# verb -> (statuses it is allowed in, the error otherwise: a format of the status's value)
GUARDS = {
    "start": ({Status.CREATED}, None),
    "kill": ({Status.CREATED, Status.RUNNING, Status.PAUSED}, "container not running"),
    "delete": ({Status.CREATED, Status.STOPPED}, "cannot delete container c1 that is not stopped: {}"),
    "pause": ({Status.CREATED, Status.RUNNING}, "cannot pause a {} container"),
    "resume": ({Status.PAUSED}, "cannot resume a {} container"),
    "exec": ({Status.CREATED, Status.RUNNING}, None),
    "ps": ({Status.CREATED, Status.RUNNING, Status.PAUSED}, "container not running"),
    "events": ({Status.CREATED, Status.RUNNING, Status.PAUSED}, "container not running"),
    "update": ({Status.CREATED, Status.RUNNING, Status.PAUSED}, "container not running"),
}
# What each verb asks the agent when it is allowed.
AGENT_OPS = {"start": "start_container", "kill": "signal_process", "pause": "pause_container",
             "resume": "resume_container", "exec": "exec_process", "ps": "ps", "events": "stats",
             "update": "update_container"}


def refusal(verb: str, status: Status) -> str:
    if verb == "start":
        return ("cannot start a container that has stopped" if status is Status.STOPPED
                else f"cannot start an already {status.value} container")
    if verb == "exec":
        return ("cannot exec in a paused container" if status is Status.PAUSED
                else f"cannot exec in a {status.value} container")
    return GUARDS[verb][1].format(status.value)


def test_every_status_can_method_matches_the_table():
    for verb, (allowed, _) in GUARDS.items():
        method = {"delete": "can_delete", "ps": "can_inspect", "events": "can_inspect",
                  "update": "can_inspect"}.get(verb, f"can_{verb}")
        assert {s for s in Status if getattr(s, method)()} == allowed, verb


@pytest.mark.parametrize("status", STATUSES, ids=[s.value for s in STATUSES])
@pytest.mark.parametrize("verb", list(GUARDS))
def test_guard(store, verb, status):
    host = FakeHost()
    make(store, host, status)
    before = store.load("c1")
    allowed, _ = GUARDS[verb]
    if status not in allowed:
        with pytest.raises(ContainerError) as err:
            verbs(store, host)[verb]()
        assert str(err.value) == refusal(verb, status)
        assert host.agent_calls == [] and host.hooks == [], "a refused verb must not act"
        assert store.load("c1") == before
        assert len(host.vms) == 1 and not host.stopped_shims
        return
    verbs(store, host)[verb]()
    if verb == "delete":
        with pytest.raises(NotFound):
            store.load("c1")
        assert host.vms == {} and host.networks == {} and host.hooks == ["poststop"]
        assert host.stopped_shims == ([] if status is Status.STOPPED else [(MY_PID, MY_START)])
        return
    assert [op for op, _ in host.agent_calls] == [AGENT_OPS[verb]]
    after = store.load("c1")
    expected = {"start": Status.RUNNING, "pause": Status.PAUSED, "resume": Status.RUNNING}.get(verb, status)
    assert store.status(after) is expected
    assert host.hooks == (["poststart"] if verb == "start" else [])


@pytest.mark.parametrize("status", STATUSES, ids=[s.value for s in STATUSES])
def test_delete_force_in_every_status(store, status):
    host = FakeHost()
    make(store, host, status)
    lifecycle.delete(store, "c1", force=True, host=host)
    with pytest.raises(NotFound):
        store.load("c1")
    assert host.vms == {} and host.networks == {}
    assert host.calls[:2] == ["stop_vm", "disconnect_network"]


def test_delete_force_of_a_container_that_is_gone(store):
    lifecycle.delete(store, "gone", force=True, host=FakeHost())
    with pytest.raises(NotFound, match="^container does not exist$"):
        lifecycle.delete(store, "gone", host=FakeHost())


def test_delete_stops_the_monitor_recorded_in_the_state_only(store):
    """A monitor is known by pid and start time: one that is not the recorded one is left alone."""
    host = FakeHost()
    st = make(store, host, Status.STOPPED)
    st.monitor_start += 1
    store.save(st)
    lifecycle.delete(store, "c1", host=host)
    assert len(host.vms) == 1


def test_kill_sends_the_signal_to_the_init_process(store):
    host = FakeHost()
    make(store, host, Status.RUNNING)
    lifecycle.kill(store, "c1", "9", all_=True, host=host)
    assert host.agent_calls == [("signal_process", {"process": 7, "signal": 9, "all": True})]
    with pytest.raises(ContainerError, match="invalid signal"):
        lifecycle.kill(store, "c1", "SIGNOPE", host=host)


def _unanswered(signal_op: str):
    def call(op: str) -> None:
        if op == signal_op:
            raise VMError("the agent did not answer 'signal_process' within 5s")
    return call


def test_an_unconfirmed_sigkill_stops_the_vm_from_the_host(store):
    host = FakeHost(on_agent_call=_unanswered("signal_process"))
    st = make(store, host, Status.RUNNING)
    lifecycle.kill(store, "c1", "KILL", host=host)
    assert host.forced_vm_stops == [vm_dir_of(store, st)] and not host.vms
    assert host.stopped_shims == [(MY_PID, MY_START)]


def test_other_signals_and_a_refused_sigkill_do_not_stop_the_vm(store):
    host = FakeHost(on_agent_call=_unanswered("signal_process"))
    make(store, host, Status.RUNNING)
    with pytest.raises(VMError):
        lifecycle.kill(store, "c1", "TERM", host=host)

    def refuse(op: str) -> None:
        raise AgentError("not_found", "no such process")
    host.on_agent_call = refuse
    with pytest.raises(AgentError):
        lifecycle.kill(store, "c1", "KILL", host=host)
    assert host.forced_vm_stops == [] and host.vms and not host.stopped_shims


def test_an_unconfirmed_sigkill_in_a_pod_stops_the_pods_vm(store):
    host = FakeHost(on_agent_call=_unanswered("signal_process"))
    pod = make(store, host, Status.RUNNING, id="pod")
    with store.create("c1", bundle="/nonexistent", kind="container", sandbox="pod") as st:
        st.pid, st.pid_start, st.started, st.process = MY_PID, MY_START, True, 8
    lifecycle.kill(store, "c1", "SIGKILL", host=host)
    assert host.forced_vm_stops == [vm_dir_of(store, pod)] and not host.vms


def test_update_is_refused_beyond_the_vm_size(store):
    host = FakeHost()
    make(store, host, Status.RUNNING)
    with pytest.raises(ContainerError, match="the container's VM has 512 MiB"):
        lifecycle.update(store, "c1", {"memory": {"limit": 1 << 30}}, host)
    with pytest.raises(ContainerError, match="its VM has 2 vCPUs"):
        lifecycle.update(store, "c1", {"cpu": {"quota": 300000, "period": 100000}}, host)
    assert host.agent_calls == []


def test_a_failing_poststart_hook_is_a_warning(store):
    host = FakeHost(fail="hook:poststart")
    make(store, host, Status.CREATED)
    lifecycle.start(store, "c1", host)
    assert store.status(store.load("c1")) is Status.RUNNING and host.hooks == ["poststart"]


def lock_is_free(store: Store, id: str) -> bool:
    fd = os.open(os.path.join(store.dir(id), LOCK_FILE), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


@pytest.mark.parametrize("verb", ["kill", "ps", "events"])
def test_no_lock_across_the_agent_call(store, verb):
    """containerd's state and kill must not wait behind another command's VM round trip."""
    seen = []
    host = FakeHost(on_agent_call=lambda op: seen.append(lock_is_free(store, "c1")))
    make(store, host, Status.RUNNING)
    verbs(store, host)[verb]()
    assert seen == [True]


def test_exec_holds_no_lock_while_the_process_starts(store, monkeypatch):
    host = FakeHost()
    make(store, host, Status.RUNNING)
    seen = []
    monkeypatch.setattr(host, "step", lambda name: seen.append((name, lock_is_free(store, "c1"))))
    shim = exec_process(store, "c1", {"args": ["true"], "cwd": "/"}, host=host)
    assert ("send", True) in seen and shim.alive


def test_exec_failure_aborts_its_shim(store, tmp_path):
    host = FakeHost()
    make(store, host, Status.RUNNING)
    with pytest.raises(OSError):
        exec_process(store, "c1", {"args": ["true"]}, pid_file=str(tmp_path / "no" / "pid"), host=host)
    assert host.live().get("shims") is None


def test_exec_tty_without_console_socket_is_refused(store):
    host = FakeHost()
    make(store, host, Status.RUNNING)
    with pytest.raises(ContainerError, match="cannot allocate tty"):
        exec_process(store, "c1", {"args": ["sh"], "terminal": True}, detach=True, host=host)
    assert host.shims == []


def test_a_failing_delete_releases_the_lock_and_keeps_the_state(store):
    host = FakeHost(fail="stop_vm")
    make(store, host, Status.STOPPED)
    with pytest.raises(ContainerError, match="injected failure in stop_vm"):
        lifecycle.delete(store, "c1", host=host)
    assert lock_is_free(store, "c1") and store.load("c1").id == "c1" and host.hooks == []
    host.fail = ""
    lifecycle.delete(store, "c1", host=host)
    assert host.vms == {}


@pytest.mark.parametrize("volume_cache", ["mmap", "loose"])
def test_a_caching_share_is_invalidated_before_exec_and_written_back_on_pause(store, volume_cache):
    host = FakeHost()
    st = make(store, host, Status.RUNNING)
    st.vm = VMInfo(vcpus=2, memory_mib=512, share_cache="loose", volume_cache=volume_cache)
    store.save(st)
    exec_process(store, "c1", {"args": ["true"], "cwd": "/"}, host=host)
    lifecycle.pause(store, "c1", host)
    assert host.agent_calls == [("sync_shares", {"invalidate": True}), ("exec_process", host.agent_calls[1][1]),
                                ("pause_container", {"id": "c1"}), ("sync_shares", {"invalidate": False})]


def test_shares_that_do_not_cache_need_no_round_trip(store):
    host = FakeHost()
    st = make(store, host, Status.RUNNING)
    st.vm = VMInfo(vcpus=2, memory_mib=512, share_cache="mmap", volume_cache="mmap")
    store.save(st)
    exec_process(store, "c1", {"args": ["true"], "cwd": "/"}, host=host)
    lifecycle.pause(store, "c1", host)
    assert [op for op, _ in host.agent_calls] == ["exec_process", "pause_container"]
