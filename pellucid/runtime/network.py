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


def vm_token(owner: str) -> str:
    """Six hex digits naming one VM's devices (from its directory): two VMs in one namespace never
    share a tap name, and a ``create`` killed before it saved its taps still has them found."""
    import hashlib
    return hashlib.sha256(os.path.realpath(owner).encode(errors="surrogateescape")).hexdigest()[:6]


def device_names(owner: str) -> tuple[str, str]:
    """The prefixes of the tap and macvtap names of the VM whose directory is ``owner``."""
    token = vm_token(owner)
    return TAP_PREFIX + token, MACVTAP_PREFIX + token


def connect(netns: str, mode: str = "tcfilter", owner: str = "") -> Network:
    """Give every interface of the namespace a tap (or macvtap) for QEMU, named after ``owner``
    (the VM's directory). Returns what QEMU and the agent need; no interfaces when the namespace
    has only loopback. On failure, removes what it made, and only that."""
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
                    (_tcfilter if mode == "tcfilter" else _macvtap)(ipr, nic, i, device_names(owner))
                routes = _routes(ipr, names)
            finally:
                ipr.close()
        return Network.from_dict({"nics": nics, "routes": routes})
    except Exception as err:
        disconnect(netns, [Nic(name=n["name"], tap=n.get("tap", ""), ingress=n.get("ingress", False))
                           for n in nics], owner)
        if isinstance(err, ContainerError):
            raise
        raise ContainerError(f"cannot connect the VM to network namespace {netns}: {err}") from err


def _redirect(ipr, src: int, dst: int) -> None:
    ipr.tc("add-filter", "u32", src, parent=INGRESS, protocol=ETH_P_ALL, target=0x10020,
           keys=["0x0/0x0+0"], action={"kind": "mirred", "direction": "egress", "action": "redirect",
                                       "ifindex": dst})


def _tcfilter(ipr, nic: dict[str, Any], i: int, prefixes: tuple[str, str]) -> None:
    """A tap, and traffic redirected both ways. What was made is recorded in ``nic`` once it
    exists (the tap, the interface's ingress qdisc), so that a rollback removes that and no more."""
    tap = f"{prefixes[0]}{i}"
    ipr.link("add", ifname=tap, kind="tuntap", mode="tap")
    nic["tap"] = tap
    tap_index = ipr.link_lookup(ifname=tap)[0]
    ipr.link("set", index=tap_index, mtu=nic["mtu"], state="up")
    ipr.link("set", index=nic["index"], state="up")
    ipr.tc("add", "ingress", nic["index"], "ffff:")  # EEXIST if another VM has this interface
    nic["ingress"] = True
    _redirect(ipr, nic["index"], tap_index)
    ipr.tc("add", "ingress", tap_index, "ffff:")  # goes with the tap
    _redirect(ipr, tap_index, nic["index"])


def _macvtap(ipr, nic: dict[str, Any], i: int, prefixes: tuple[str, str]) -> None:
    name = f"{prefixes[1]}{i}"
    ipr.link("add", ifname=name, kind="macvtap", link=nic["index"], macvtap_mode="passthru")
    index = ipr.link_lookup(ifname=name)[0]
    ipr.link("set", index=index, address=nic["mac"], mtu=nic["mtu"], state="up")
    ipr.link("set", index=nic["index"], state="up")
    nic["tap"] = name
    nic["device"] = f"/dev/tap{index}"


def disconnect(netns: str, nics: list[Nic], owner: str = "") -> None:
    """Remove what :func:`connect` made for the VM whose directory is ``owner``: its taps (those
    in ``nics``, and any other by its names, which a ``create`` killed half-way made without
    recording them) and the ingress qdiscs it added to the namespace's interfaces. Idempotent; a
    gone namespace is fine."""
    if not os.path.exists(netns) or netns_mod.is_host(netns):
        return  # connect never touches the host's namespace: neither may its undo
    prefixes = device_names(owner) if owner else ()
    try:
        with in_netns(netns):
            names = {name for _, name in socket.if_nameindex()}
            ours = {n.tap for n in nics if n.tap} | {n for n in names if prefixes and n.startswith(prefixes)}
            filtered = [n.name for n in nics if n.ingress and n.name in names]
            if not (ours & names) and not filtered:
                return  # nothing of ours there: no netlink (nor its import)
            ipr = _ipr()
            try:
                for name in filtered:
                    try:
                        ipr.tc("del", "ingress", ipr.link_lookup(ifname=name)[0], "ffff:")
                    except Exception:
                        pass
                for name in ours & names:
                    for index in ipr.link_lookup(ifname=name):
                        ipr.link("del", index=index)
            finally:
                ipr.close()
    except (ContainerError, OSError):
        pass
