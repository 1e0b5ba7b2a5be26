"""`delete` returns before its VM has exited: the state is gone at once (into the graveyard, the
id free again), and the VM's exit, its cgroup and the directory are finished later by a detached
reaper, or by the next create if that reaper was lost. Fake host; detach with real processes."""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time

import pytest

from pellucid.config import parse as parse_config
from pellucid.errors import NotFound
from pellucid.oci.default_spec import default_spec
from pellucid.runtime import lifecycle, reaper
from pellucid.runtime.create import create
from pellucid.store import LOCK_FILE, Store
from tests.fakes import FakeHost

CFG = parse_config("")


@pytest.fixture
def store(tmp_path):
    return Store(str(tmp_path / "root"))


@pytest.fixture
def bundle(tmp_path):
    path = tmp_path / "bundle"
    (path / "rootfs").mkdir(parents=True)
    config = default_spec()
    config["process"]["terminal"] = False
    config["linux"]["cgroupsPath"] = "/docker/c1"
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


def deleted_with_its_reaper_pending(store, bundle) -> FakeHost:
    host = FakeHost()
    create(store, CFG, "c1", bundle, host=host)
    lifecycle.start(store, "c1", host)
    host.defer_background = True
    lifecycle.delete(store, "c1", force=True, host=host)
    return host


def test_delete_returns_with_the_state_gone_and_the_vm_still_exiting(store, bundle):
    host = deleted_with_its_reaper_pending(store, bundle)
    with pytest.raises(NotFound):
        lifecycle.state(store, "c1")
    assert store.ids() == [] and lifecycle.list_states(store) == []
    lifecycle.delete(store, "c1", force=True, host=host)  # a second delete --force: nothing to do, no error
    # Done before returning: the shim, the taps, the share; asked, not waited for: the VM.
    assert host.networks == {} and host.shares == set() and len(host.stopped_shims) == 1
    assert len(host.stopping) == 1 and set(host.cgroups) == {"/docker/c1"} and len(store.graves()) == 1
    assert host.calls.index("in_background") > host.calls.index("unmount_all")
    (work,) = host.background
    work()  # the reaper: the VM's exit, then the cgroup, then the grave
    assert host.vms == {} and host.stopping == [] and host.cgroups == {} and store.graves() == []
    assert host.calls.index("remove_cgroup") > host.calls.index("in_background")


def test_the_id_is_free_at_once_and_a_create_waits_for_the_reaper_of_its_cgroup(store, bundle):
    host = deleted_with_its_reaper_pending(store, bundle)
    (grave,) = store.graves()
    (work,) = host.background
    lock = os.open(os.path.join(grave, LOCK_FILE), os.O_RDONLY)
    fcntl.flock(lock, fcntl.LOCK_EX)  # the reaper holds the grave's lock while it works

    def the_reaper() -> None:
        time.sleep(0.3)
        work()
        os.close(lock)
    thread = threading.Thread(target=the_reaper)
    thread.start()
    host.defer_background = False
    create(store, CFG, "c1", bundle, host=host)  # same id, same cgroup
    thread.join()
    # The old VM's cgroup was removed before the new one was made: the new container keeps its own.
    assert host.calls.count("remove_cgroup") == 1
    assert host.calls.index("remove_cgroup") < len(host.calls) - host.calls[::-1].index("make_cgroup") - 1
    assert set(host.cgroups) == {"/docker/c1"} and store.graves() == []
    assert store.load("c1").id == "c1"


def test_a_grave_that_lost_its_reaper_is_finished_by_the_next_create(store, bundle, tmp_path):
    host = deleted_with_its_reaper_pending(store, bundle)
    host.background.clear()  # the reaper was killed: the grave's lock is free
    config = json.loads(open(os.path.join(bundle, "config.json")).read())
    config["linux"]["cgroupsPath"] = "/docker/other"
    other = tmp_path / "other"
    (other / "rootfs").mkdir(parents=True)
    (other / "config.json").write_text(json.dumps(config))
    host.defer_background = False
    create(store, CFG, "c2", str(other), host=host)
    assert store.graves() == [] and host.stopping == [] and set(host.cgroups) == {"/docker/other"}


def test_a_grave_whose_reaper_works_on_is_left_to_it(store, bundle, tmp_path):
    host = deleted_with_its_reaper_pending(store, bundle)
    (grave,) = store.graves()
    lock = os.open(os.path.join(grave, LOCK_FILE), os.O_RDONLY)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        reaper.sweep(store, host, "/docker/other")  # another cgroup: no wait, no reaping
        assert store.graves() == [grave] and set(host.cgroups) == {"/docker/c1"}
    finally:
        os.close(lock)


def test_detach_runs_the_work_after_the_command_returns_holding_its_locks(tmp_path):
    """The grandchild keeps the lock the caller held (so no sweep takes its grave), and not the
    caller's stdio (whoever reads the command's output to EOF does not wait for it)."""
    lock_path = tmp_path / "lock"
    lock_path.write_text("")
    done = tmp_path / "done"
    r, w = os.pipe()
    saved = os.dup(1)
    lock = os.open(lock_path, os.O_RDONLY)
    fcntl.flock(lock, fcntl.LOCK_EX)
    os.dup2(w, 1)  # as a caller's pipe on our stdout, and only there
    os.close(w)
    try:
        reaper.detach(lambda: (time.sleep(0.5), done.write_text("ok")))
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(lock)
    started = time.monotonic()
    assert os.read(r, 10) == b"" and time.monotonic() - started < 0.4, "the pipe stayed open"
    os.close(r)
    probe = os.open(lock_path, os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # still held: by the detached work
        fcntl.flock(probe, fcntl.LOCK_EX)  # released when it is done
        assert done.read_text() == "ok"
    finally:
        os.close(probe)
