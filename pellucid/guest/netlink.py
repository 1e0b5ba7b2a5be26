"""Just enough rtnetlink for the agent: links up, renamed, with an MTU; addresses; routes.

pyroute2 does this on the host; in the guest its import alone would cost seconds under TCG, so the
agent speaks the few messages it needs itself.
"""

from __future__ import annotations

import os
import socket
import struct

RTM_NEWLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 20, 24
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU = 1, 3, 4
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
IFA_F_NODAD = 0x02
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5
RT_TABLE_MAIN, RTPROT_BOOT, RTN_UNICAST = 254, 3, 1
IFF_UP = 0x1

NLMSGHDR = struct.Struct("=IHHII")
IFINFOMSG = struct.Struct("=BxHiII")
IFADDRMSG = struct.Struct("=BBBBI")
RTMSG = struct.Struct("=BBBBBBBBI")


def _attr(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * ((4 - length % 4) % 4)


def _family(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


class Netlink:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def _request(self, kind: int, flags: int, body: bytes) -> None:
        self.seq += 1
        msg = NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK | flags, self.seq, 0) + body
        self.sock.send(msg)
        while True:
            data = self.sock.recv(65536)
            offset = 0
            while offset + NLMSGHDR.size <= len(data):
                length, mtype, _, seq, _ = NLMSGHDR.unpack_from(data, offset)
                if mtype == NLMSG_ERROR and seq == self.seq:
                    (error,) = struct.unpack_from("=i", data, offset + NLMSGHDR.size)
                    if error:
                        raise OSError(-error, os.strerror(-error))
                    return
                offset += max(length, NLMSGHDR.size)

    def set_link(self, index: int, *, up: bool | None = None, mtu: int | None = None, name: str | None = None,
                 mac: bytes | None = None) -> None:
        attrs = b""
        if mac:
            attrs += _attr(IFLA_ADDRESS, mac)
        if mtu:
            attrs += _attr(IFLA_MTU, struct.pack("=I", mtu))
        if name:
            attrs += _attr(IFLA_IFNAME, name.encode() + b"\0")
        flags = IFF_UP if up else 0
        change = IFF_UP if up is not None else 0
        self._request(RTM_NEWLINK, 0, IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change) + attrs)

    def add_address(self, index: int, version: int, address: str, prefixlen: int) -> None:
        family = _family(version)
        raw = socket.inet_pton(family, address)
        attrs = _attr(IFA_LOCAL, raw) + _attr(IFA_ADDRESS, raw)
        if version == 6:
            attrs += _attr(IFA_FLAGS, struct.pack("=I", IFA_F_NODAD))  # usable at once: no duplicate detection wait
        self._request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL,
                      IFADDRMSG.pack(family, prefixlen, IFA_F_NODAD if version == 6 else 0, 0, index) + attrs)

    def add_route(self, version: int, dst: str, dst_len: int, gateway: str, index: int, scope: int) -> None:
        family = _family(version)
        attrs = _attr(RTA_OIF, struct.pack("=i", index))
        if dst:
            attrs += _attr(RTA_DST, socket.inet_pton(family, dst))
        if gateway:
            attrs += _attr(RTA_GATEWAY, socket.inet_pton(family, gateway))
        body = RTMSG.pack(family, dst_len, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, scope, RTN_UNICAST, 0)
        self._request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body + attrs)
