"""The guest's network: loopback at boot; then each NIC the host gave the VM configured as the
interface it stands for in the container's namespace (same name, MAC, MTU, addresses, routes)."""

from __future__ import annotations

import ipaddress
import os
TYPE_CHECKING = False
if TYPE_CHECKING:  # no typing import at run time: see protocol.py
    from typing import Any

from .. import protocol
from .agent import Agent, AgentError
from .netlink import Netlink

SYS_NET = "/sys/class/net"


def loopback_up() -> None:
    nl = Netlink()
    try:
        nl.set_link(1, up=True)
    finally:
        nl.close()


def _by_mac() -> dict[str, tuple[str, int]]:
    found = {}
    for name in os.listdir(SYS_NET):
        try:
            with open(f"{SYS_NET}/{name}/address") as f:
                mac = f.read().strip().lower()
            with open(f"{SYS_NET}/{name}/ifindex") as f:
                index = int(f.read())
        except (OSError, ValueError):
            continue
        found[mac] = (name, index)
    return found


def _checked_ip(value: Any, version: int, what: str) -> str:
    if not isinstance(value, str):
        raise AgentError("invalid", f"{what}: not a string")
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise AgentError("invalid", f"{what}: {value!r} is not an IP address") from None
    if ip.version != version:
        raise AgentError("invalid", f"{what}: {value} is not IPv{version}")
    return value


def configure(agent: Agent, args: dict[str, Any]) -> dict[str, Any]:
    if protocol.field(args, "dns_relay", bool, optional=True, default=False) and "dns_reply" not in agent.handlers:
        from .dns import DnsRelay
        DnsRelay(agent)
    nics = protocol.field(args, "nics", list, max_len=64)
    routes = protocol.field(args, "routes", list, optional=True, default=[], max_len=1024)
    present = _by_mac()
    nl = Netlink()
    try:
        names: dict[str, int] = {}
        plan = []
        for i, nic in enumerate(nics):
            if not isinstance(nic, dict):
                raise AgentError("invalid", "a nic is not an object")
            mac = protocol.field(nic, "mac", str, max_len=17).lower()
            name = protocol.field(nic, "name", str, max_len=15)
            if mac not in present:
                raise AgentError("not_found", f"no interface with MAC {mac} in the VM")
            _, index = present[mac]
            nl.set_link(index, name=f"pltmp{i}")  # rename in two steps: the wanted names may be taken
            plan.append((nic, index, name))
        for nic, index, name in plan:
            mtu = protocol.field(nic, "mtu", int, optional=True)
            nl.set_link(index, name=name, mtu=mtu if mtu and 68 <= mtu <= 65535 else None)
            for addr in protocol.field(nic, "addresses", list, optional=True, default=[], max_len=256):
                version = protocol.field(addr, "family", int)
                address = _checked_ip(addr.get("address"), version, "address")
                prefixlen = protocol.field(addr, "prefixlen", int)
                if not 0 <= prefixlen <= (32 if version == 4 else 128):
                    raise AgentError("invalid", f"bad prefix length {prefixlen}")
                nl.add_address(index, version, address, prefixlen)
            nl.set_link(index, up=True)
            names[name] = index
        for route in routes:
            version = protocol.field(route, "family", int)
            dst = route.get("dst") or ""
            if dst:
                _checked_ip(dst, version, "route destination")
            gateway = route.get("gateway") or ""
            if gateway:
                _checked_ip(gateway, version, "route gateway")
            device = protocol.field(route, "device", str, max_len=15)
            if device not in names:
                raise AgentError("invalid", f"route through unknown device {device}")
            dst_len = protocol.field(route, "dst_len", int)
            scope = protocol.field(route, "scope", int)
            try:
                nl.add_route(version, dst, dst_len, gateway, names[device], scope)
            except FileExistsError:
                pass
    except OSError as err:
        raise AgentError("network", f"configuring the network: {err}") from None
    finally:
        nl.close()
    return {"interfaces": sorted(names)}
