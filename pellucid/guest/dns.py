"""Docker's embedded DNS server answers at 127.0.0.11 inside the container's network namespace,
which the VM has left for its own: the agent listens on the guest's 127.0.0.11:53 and relays each
query to the host, whose monitor asks it in the container's namespace and sends the answer back."""

from __future__ import annotations

import selectors
import socket
import time
TYPE_CHECKING = False
if TYPE_CHECKING:  # no typing import at run time: see protocol.py
    from typing import Any

from .. import messages
from .agent import Agent

ADDRESS = ("127.0.0.11", 53)
MAX_PENDING = 256
PENDING_SECONDS = 10.0


class DnsRelay:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        self.sock.bind(ADDRESS)
        self.pending: dict[int, tuple[Any, float]] = {}
        self.next_id = 1
        agent.selector.register(self.sock, selectors.EVENT_READ, self._on_query)
        agent.handle(messages.DnsReply, self.reply)

    def _on_query(self, mask: int) -> None:
        try:
            data, client = self.sock.recvfrom(messages.MAX_DNS)
        except BlockingIOError:
            return
        now = time.monotonic()
        for qid in [q for q, (_, t) in self.pending.items() if now - t > PENDING_SECONDS]:
            del self.pending[qid]
        if len(self.pending) >= MAX_PENDING:
            return  # the client will retry
        qid = self.next_id
        self.next_id = self.next_id % 0xFFFFFFF + 1
        self.pending[qid] = (client, now)
        self.agent.emit(messages.DnsQuery(query=qid, data=data))

    def reply(self, request: messages.DnsReply) -> None:
        entry = self.pending.pop(request.query, None)
        if entry is None:
            return
        try:
            self.sock.sendto(request.data, entry[0])
        except OSError:
            pass
