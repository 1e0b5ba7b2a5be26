"""Taps are named per VM, and teardown removes what its own VM made and nothing else: a second VM
in the same namespace that fails leaves the first one's tap and qdisc alone. Real netlink, in a
namespace of the test's own (needs root)."""

from __future__ import annotations


import pytest

from pellucid.errors import ContainerError
from pellucid.runtime import netns, network



@pytest.fixture
def namespace(tmp_path):
    path = str(tmp_path / "netns")
    netns.pin_new(path)
    try:
        with network.in_netns(path):
            ipr = network._ipr()
            try:
                ipr.link("add", ifname="eth0", kind="veth", peer="peer0")  # no dummy module on every kernel
            finally:
                ipr.close()
        yield path
    finally:
        netns.release(path)


def links(path: str) -> set[str]:
    with network.in_netns(path):
        import socket
        return {name for _, name in socket.if_nameindex()}


def has_ingress(path: str, name: str) -> bool:
    with network.in_netns(path):
        ipr = network._ipr()
        try:
            index = ipr.link_lookup(ifname=name)[0]
            return any(q.get_attr("TCA_KIND") == "ingress" for q in ipr.get_qdiscs(index=index))
        finally:
            ipr.close()


def test_names_are_per_vm_and_fit_ifnamsiz(tmp_path):
    a, b = network.device_names(str(tmp_path / "a")), network.device_names(str(tmp_path / "b"))
    assert a != b and all(len(p) + 4 <= 15 for p in a)
    assert network.device_names(str(tmp_path / "a")) == a


def test_a_second_vm_that_fails_leaves_the_first_ones_devices(namespace, tmp_path):
    first, second = str(tmp_path / "vm1"), str(tmp_path / "vm2")
    net = network.connect(namespace, "tcfilter", first)
    tap = net.nics[0].tap
    assert tap.startswith(network.device_names(first)[0]) and net.nics[0].ingress
    with pytest.raises(ContainerError, match="cannot connect the VM"):
        network.connect(namespace, "tcfilter", second)  # eth0's ingress is the first VM's: EEXIST
    assert tap in links(namespace) and has_ingress(namespace, "eth0")
    assert not any(n.startswith(network.device_names(second)) for n in links(namespace))
    network.disconnect(namespace, [], second)  # the second VM's delete: nothing of the first's goes
    assert tap in links(namespace) and has_ingress(namespace, "eth0")
    network.disconnect(namespace, net.nics, first)
    assert links(namespace) == {"lo", "eth0", "peer0"} and not has_ingress(namespace, "eth0")


def test_taps_a_killed_create_did_not_record_are_found_by_name(namespace, tmp_path):
    owner = str(tmp_path / "vm")
    net = network.connect(namespace, "tcfilter", owner)
    network.disconnect(namespace, [], owner)  # as after a create killed before it saved the network
    assert net.nics[0].tap not in links(namespace)
