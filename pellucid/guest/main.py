"""PID 1's entry point: the base mounts, the channel to the host, and the agent with every
request handler wired in. Imports run one way: this module -> the handlers -> the agent."""

from __future__ import annotations

import os

from .. import messages, protocol
from . import boot, clone, network
from .agent import Agent, find_port
from .containers import Containers


def main() -> None:
    started_ms = boot.uptime_ms()
    boot.mount_base()
    boot.enable_controllers()
    fd = os.open(find_port(protocol.AGENT_PORT_NAME), os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    agent = Agent(fd, started_ms)
    network.loopback_up()
    agent.handle(messages.ConfigureNetwork, lambda request: network.configure(agent, request))
    agent.handle(messages.CloneResumed, lambda request: clone.resumed(agent, request))
    Containers(agent)
    agent.run()
