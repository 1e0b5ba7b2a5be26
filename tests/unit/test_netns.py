"""The host's network namespace is refused by identity (st_dev, st_ino), whatever path names it,
and the network set-up refuses it on its own too, before it touches any interface."""

from __future__ import annotations

import os
import subprocess

import pytest

from pellucid.errors import BundleError
from pellucid.runtime import netns, network

MESSAGE = "cannot join the host's network namespace"


@pytest.mark.parametrize("path", ["/proc/self/ns/net", f"/proc/{os.getpid()}/ns/net", "/proc/thread-self/ns/net"])
def test_the_hosts_namespace_by_any_path_is_refused(path):
    assert netns.is_host(path)
    with pytest.raises(BundleError, match=f"{MESSAGE} {path}: a VM has a network stack of its own"):
        netns.refuse_host(path)


def test_pid_1s_namespace_is_refused_whether_or_not_it_can_be_looked_at():
    """PID 1 may be out of reach (a sandboxed host gives EACCES): refused either way."""
    with pytest.raises(BundleError, match="cannot join (the host's )?network namespace /proc/1/ns/net"):
        netns.refuse_host("/proc/1/ns/net")


def test_a_namespace_that_cannot_be_looked_at_is_refused(tmp_path):
    with pytest.raises(BundleError, match="cannot join network namespace .*: no such file or directory"):
        netns.refuse_host(str(tmp_path / "missing"))


def test_another_namespace_and_a_missing_path_are_not_the_hosts(tmp_path):
    child = subprocess.Popen(["unshare", "--net", "sleep", "30"])
    try:
        path = f"/proc/{child.pid}/ns/net"
        for _ in range(100):  # until unshare has exec'd sleep in its new namespace
            if os.stat(path).st_ino != os.stat("/proc/self/ns/net").st_ino:
                break
            subprocess.run(["sleep", "0.05"])
        assert not netns.is_host(path)
        netns.refuse_host(path)
    finally:
        child.kill()
        child.wait()
    assert not netns.is_host(str(tmp_path / "missing"))


def test_the_network_set_up_refuses_the_host_before_touching_anything(monkeypatch):
    def no_netlink():
        raise AssertionError("netlink opened in the host's namespace")

    monkeypatch.setattr(network, "_ipr", no_netlink)
    with pytest.raises(BundleError, match=MESSAGE):
        network.connect("/proc/self/ns/net")
    # its undo never removes a qdisc from the host's interfaces either
    network.disconnect("/proc/1/ns/net", [{"name": "eth0", "tap": "pltap0"}])
