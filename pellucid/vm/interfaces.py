"""One VM as its owner (the monitor) sees it, and the agent as a caller sees it: the interfaces
pellucid.vm.machine.VM and pellucid.vm.agent_client.AgentClient implement, and tests/fakes.py
fakes (tests/contract checks that both behave alike)."""

from __future__ import annotations

from typing import Any, Protocol

from ..messages import HelloResult, Request
from .machine import BootTimeline, State


class Agent(Protocol):
    def call(self, request: Request, timeout: float = 30.0) -> Any:
        """The checked result record of ``request`` (None for a request without one); AgentError if
        the agent refuses it, VMError if the channel fails or the result is invalid."""
        ...


class QMPMonitor(Protocol):
    def execute(self, command: str, **arguments: Any) -> Any:
        """The command's result; VMError if QEMU refuses it or does not answer."""
        ...


class Machine(Protocol):
    """A QEMU process: NEW -> RUNNING (start) -> STOPPED (stop: QMP quit, SIGTERM, SIGKILL)."""

    state: State
    hello: HelloResult | None
    timeline: BootTimeline | None  # once the handshake is done

    @property
    def pid(self) -> int: ...

    @property
    def agent(self) -> Agent | None: ...

    def start(self) -> None: ...

    def handshake(self, timeout: float) -> HelloResult: ...

    def monitor(self) -> QMPMonitor: ...

    def stop(self, timeout: float = 3.0) -> None: ...
