"""The guest's network: loopback at boot; then each NIC the host gave the VM configured as the
interface it stands for in the container's namespace (same name, MAC, MTU, addresses, routes)."""

from __future__ import annotations

import os

from .. import messages
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


def configure(agent: Agent, request: messages.ConfigureNetwork) -> messages.NetworkResult:
    if request.dns_relay and messages.DnsReply.OP not in agent.handlers:
        from .dns import DnsRelay
        DnsRelay(agent)
    present = _by_mac()
    nl = Netlink()
    try:
        names: dict[str, int] = {}
        plan = []
        for i, nic in enumerate(request.nics):
            mac = nic.mac.lower()
            if mac not in present:
                raise AgentError(messages.ERR_NOT_FOUND, f"no interface with MAC {mac} in the VM")
            _, index = present[mac]
            nl.set_link(index, name=f"pltmp{i}")  # rename in two steps: the wanted names may be taken
            plan.append((nic, index))
        for nic, index in plan:
            nl.set_link(index, name=nic.name, mtu=nic.mtu)
            for addr in nic.addresses:
                nl.add_address(index, addr.family, addr.address, addr.prefixlen)
            nl.set_link(index, up=True)
            names[nic.name] = index
        for route in request.routes:
            try:
                nl.add_route(route.family, route.dst, route.dst_len, route.gateway, names[route.device], route.scope)
            except FileExistsError:
                pass
    except OSError as err:
        raise AgentError(messages.ERR_NETWORK, f"configuring the network: {err}") from err
    finally:
        nl.close()
    return messages.NetworkResult(interfaces=sorted(names))
