"""Host network state the clients touch: bridges in 169.254.0.0/16, veths, a free TCP port."""

from __future__ import annotations

import os
import socket
import subprocess

from .commands import HarnessError, run_cmd

LINK_LOCAL_PREFIX = "169.254."


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def create_bridge(name: str, cidr: str | None) -> None:
    """Create bridge `name`, give it `cidr` (e.g. 169.254.77.1/24) if any, and bring it up."""
    if cidr is not None:
        if not cidr.startswith(LINK_LOCAL_PREFIX):
            raise HarnessError(f"{cidr}: harness bridges stay in 169.254.0.0/16")
        prefix = cidr.split("/")[0].rsplit(".", 1)[0] + "."
        for line in run_cmd(["ip", "-o", "-4", "addr", "show"]).stdout.splitlines():
            fields = line.split()
            if fields[3].startswith(prefix):
                raise HarnessError(f"{fields[3]} already on {fields[1]}: another harness, or a "
                                   f"leftover bridge (delete it with `ip link del {fields[1]}`)")
    run_cmd(["ip", "link", "add", "name", name, "type", "bridge"])
    try:
        if cidr is not None:
            run_cmd(["ip", "addr", "add", cidr, "dev", name])
        run_cmd(["ip", "link", "set", name, "up"])
    except BaseException:
        delete_link(name)
        raise


def delete_link(name: str) -> None:
    if link_exists(name):
        subprocess.run(["ip", "link", "del", name], capture_output=True)


def veths() -> set[str]:
    """Names of the host's veth interfaces."""
    out = run_cmd(["ip", "-o", "link", "show", "type", "veth"]).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}
