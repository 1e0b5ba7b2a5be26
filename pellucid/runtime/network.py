"""The VM joins the container's network namespace: for every interface in it (the veth Docker or a
CNI plugin put there), a tap device joined to it by traffic redirection both ways (tc ingress +
mirred, as Kata's "tcfilter" does), or a macvtap on top of it; QEMU's virtio-net gets the
interface's MAC, and the agent gives the guest's interface the same addresses, MTU and routes.
Netlink through pyroute2, inside the namespace."""

from __future__ import annotations

import ipaddress
import os
import socket
from contextlib import contextmanager
from typing import Any, Iterator

from .. import linux
from ..errors import ContainerError
from ..host_messages import Network, Nic
from . import netns as netns_mod

TAP_PREFIX = "pltap"
MACVTAP_PREFIX = "plmvt"
OURS = (TAP_PREFIX, MACVTAP_PREFIX)
INGRESS = 0xFFFF0000
ETH_P_ALL = 0x0003
RTPROT_KERNEL = 2
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
MODES = ("tcfilter", "macvtap")


@contextmanager
def in_netns(path: str) -> Iterator[None]:
    """Run the body in the network namespace at ``path`` (the CLI is single-threaded)."""
    here = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        netns_mod.enter(path)
        try:
            yield
        finally:
            linux.setns(here, linux.CLONE_NEWNET)
    finally:
        os.close(here)


def _ipr():
    from pyroute2 import IPRoute  # heavy: loaded only for containers with interfaces to connect
    return IPRoute()


def _addresses(ipr, index: int) -> list[dict[str, Any]]:
    out = []
    for msg in ipr.get_addr(index=index):
        address = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        if not address:
            continue
        ip = ipaddress.ip_address(address)
        if ip.is_link_local and ip.version == 6:
            continue  # the guest makes its own
        out.append({"family": ip.version, "address": address, "prefixlen": msg["prefixlen"]})
    return out


def _routes(ipr, names: dict[int, str]) -> list[dict[str, Any]]:
    """Routes of the main table the guest must have too: not the kernel's connected ones."""
    out = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for msg in ipr.get_routes(family=family, table=RT_TABLE_MAIN):
            if msg["proto"] == RTPROT_KERNEL or msg["type"] != RTN_UNICAST:
                continue
            oif = msg.get_attr("RTA_OIF")
            if oif not in names:
                continue
            dst = msg.get_attr("RTA_DST")
            if dst and ipaddress.ip_address(dst).is_link_local and family == socket.AF_INET6:
                continue
            out.append({"family": 4 if family == socket.AF_INET else 6, "dst": dst or "",
                        "dst_len": msg["dst_len"], "gateway": msg.get_attr("RTA_GATEWAY") or "",
                        "scope": msg["scope"], "device": names[oif]})
    # Link routes first: a gateway may be reachable only through one of them.
    return sorted(out, key=lambda r: (r["gateway"] != "", r["dst_len"] == 0))


def connect(netns: str, mode: str = "tcfilter") -> Network:
    """Give every interface of the namespace a tap (or macvtap) for QEMU. Returns what QEMU and the
    agent need; no interfaces when the namespace has only loopback."""
    if mode not in MODES:
        raise ContainerError(f"unknown network mode {mode!r}")
    netns_mod.refuse_host(netns)  # never a tap or a filter on the host's own interfaces
    nics: list[dict[str, Any]] = []
    try:
        with in_netns(netns):
            if all(name == "lo" or name.startswith(OURS) for _, name in socket.if_nameindex()):
                return Network()  # loopback only: no need for netlink (nor its import)
            ipr = _ipr()
            try:
                links = [link for link in ipr.get_links()
                         if link.get_attr("IFLA_IFNAME") != "lo"
                         and not link.get_attr("IFLA_IFNAME").startswith(OURS)]
                names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in links}
                for i, link in enumerate(links):
                    nic = {"name": link.get_attr("IFLA_IFNAME"), "index": link["index"],
                           "mac": link.get_attr("IFLA_ADDRESS"), "mtu": link.get_attr("IFLA_MTU"),
                           "addresses": _addresses(ipr, link["index"])}
                    nics.append(nic)
                    (_tcfilter if mode == "tcfilter" else _macvtap)(ipr, nic, i)
                routes = _routes(ipr, names)
            finally:
                ipr.close()
        return Network.from_dict({"nics": nics, "routes": routes})
    except Exception as err:
        disconnect(netns, [Nic(name=n["name"], tap=n.get("tap", "")) for n in nics])
        if isinstance(err, ContainerError):
            raise
        raise ContainerError(f"cannot connect the VM to network namespace {netns}: {err}") from err


def _tcfilter(ipr, nic: dict[str, Any], i: int) -> None:
    tap = f"{TAP_PREFIX}{i}"
    nic["tap"] = tap
    ipr.link("add", ifname=tap, kind="tuntap", mode="tap")
    tap_index = ipr.link_lookup(ifname=tap)[0]
    ipr.link("set", index=tap_index, mtu=nic["mtu"], state="up")
    ipr.link("set", index=nic["index"], state="up")
    for src, dst in ((nic["index"], tap_index), (tap_index, nic["index"])):
        ipr.tc("add", "ingress", src, "ffff:")
        ipr.tc("add-filter", "u32", src, parent=INGRESS, protocol=ETH_P_ALL, target=0x10020,
               keys=["0x0/0x0+0"], action={"kind": "mirred", "direction": "egress", "action": "redirect",
                                           "ifindex": dst})


def _macvtap(ipr, nic: dict[str, Any], i: int) -> None:
    name = f"{MACVTAP_PREFIX}{i}"
    ipr.link("add", ifname=name, kind="macvtap", link=nic["index"], macvtap_mode="passthru")
    index = ipr.link_lookup(ifname=name)[0]
    ipr.link("set", index=index, address=nic["mac"], mtu=nic["mtu"], state="up")
    ipr.link("set", index=nic["index"], state="up")
    nic["tap"] = name
    nic["device"] = f"/dev/tap{index}"


def disconnect(netns: str, nics: list[Nic]) -> None:
    """Remove the taps and filters :func:`connect` made (idempotent; a gone namespace is fine)."""
    if not nics or not os.path.exists(netns) or netns_mod.is_host(netns):
        return  # connect never touches the host's namespace: neither may its undo
    try:
        with in_netns(netns):
            ipr = _ipr()
            try:
                for nic in nics:
                    for name in (nic.tap, nic.name):
                        found = ipr.link_lookup(ifname=name) if name else []
                        if found and name == nic.name:
                            try:
                                ipr.tc("del", "ingress", found[0], "ffff:")
                            except Exception:
                                pass
                        elif found:
                            ipr.link("del", index=found[0])
            finally:
                ipr.close()
    except (ContainerError, OSError):
        pass
