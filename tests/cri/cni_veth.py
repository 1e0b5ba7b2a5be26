#!/usr/bin/python3 -I
"""A CNI plugin of the CRI tests' own: one veth pair per pod, one /24 per pod in 169.254.0.0/16.

Implements the CNI spec's ADD, DEL, CHECK and VERSION (versions 0.3.0 to 1.0.0) for two
plugin types, chosen by the network configuration's `type`:

* `pellucid-test-veth`: ADD creates a veth pair from inside the pod's network namespace,
  leaving the peer `pcv<hash>` in the namespace this plugin runs in (the test's), gives
  the pod end (CNI_IFNAME, normally eth0) 169.254.N.2/24 with a default route via
  169.254.N.1, and the host end 169.254.N.1/24, so the host reaches the pod over the link
  and nothing is routed or bridged. N is the first free /24 of the configuration's
  `network` (for example 169.254.160.0/20); leases are files in `dataDir`, under a lock.
  DEL removes the pair and the lease and succeeds when they are already gone.
* `loopback`: brings `lo` up in the pod (used when Debian's plugin is not installed).

Standard library and iproute2 (`ip`, `nsenter`) only: containerd runs it with a bare
environment. It logs one line per call to `dataDir/plugin.log`.
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SUPPORTED = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]
VETH_TYPE = "pellucid-test-veth"
HOST_PREFIX = "pcv"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# CNI error codes (spec: "Error"): 4 invalid configuration, 7 invalid environment
# variables, 11 try again later; 100 and up are the plugin's own.
E_CONFIG, E_ENV, E_FAILED = 4, 7, 100


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


def run(*argv: str, netns: str = "") -> str:
    """Run a command (inside `netns`, a path, if given); raise CniError with its stderr on failure."""
    full = (["nsenter", f"--net={netns}", "--"] if netns else []) + list(argv)
    proc = subprocess.run(full, capture_output=True, text=True, env={"PATH": PATH}, timeout=30)
    if proc.returncode != 0:
        raise CniError(E_FAILED, f"{' '.join(argv)} failed", proc.stderr.strip())
    return proc.stdout


def host_link_name(container_id: str, ifname: str) -> str:
    """The host end's name: fixed by the container and interface, at most 15 bytes (IFNAMSIZ)."""
    return HOST_PREFIX + hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()[:12]


def link_json(name: str, netns: str = "") -> dict[str, Any] | None:
    """`ip -j addr show dev NAME` (in `netns`), or None if there is no such link."""
    full = (["nsenter", f"--net={netns}", "--"] if netns else []) + ["ip", "-j", "addr", "show", "dev", name]
    proc = subprocess.run(full, capture_output=True, text=True, env={"PATH": PATH}, timeout=30)
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    return json.loads(proc.stdout)[0]


class Leases:
    """Which /24 of the network each (container, interface) holds: one file per /24 index."""

    def __init__(self, data_dir: Path, network: ipaddress.IPv4Network) -> None:
        if not network.subnet_of(ipaddress.IPv4Network("169.254.0.0/16")) or network.prefixlen > 24:
            raise CniError(E_CONFIG, f"network {network} is not a /24 or larger within 169.254.0.0/16")
        self.dir = data_dir
        self.network = network
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.dir / "lock", "a")
        fcntl.flock(self._lock, fcntl.LOCK_EX)

    def subnet(self, index: int) -> ipaddress.IPv4Network:
        return list(self.network.subnets(new_prefix=24))[index]

    def find(self, owner: str) -> int | None:
        for path in self.dir.glob("lease-*"):
            if path.read_text() == owner:
                return int(path.name.split("-", 1)[1])
        return None

    def take(self, owner: str) -> int:
        found = self.find(owner)
        if found is not None:
            return found
        for index in range(2 ** (24 - self.network.prefixlen)):
            path = self.dir / f"lease-{index}"
            if not path.exists():
                path.write_text(owner)
                return index
        raise CniError(11, f"no free /24 left in {self.network}")

    def release(self, owner: str) -> None:
        index = self.find(owner)
        if index is not None:
            (self.dir / f"lease-{index}").unlink()


def versioned_ips(version: str, ips: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Spec 0.3.x/0.4.0 results name the IP version of each address; 1.0.0 dropped that field."""
    return [{"version": "4", **ip} for ip in ips] if version.startswith("0.") else ips


def veth_add(conf: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    version = conf["cniVersion"]
    cid, ifname, netns = env["CNI_CONTAINERID"], env["CNI_IFNAME"], env["CNI_NETNS"]
    leases = Leases(Path(conf["dataDir"]), ipaddress.IPv4Network(conf["network"]))
    owner = f"{cid}/{ifname}"
    host = host_link_name(cid, ifname)
    index = leases.take(owner)
    subnet = leases.subnet(index)
    gateway, pod_ip = subnet[1], subnet[2]
    try:
        if link_json(host) is None:
            # Made from inside the pod so that eth0 never appears in the test's namespace;
            # `netns <our pid>` puts the peer where this plugin runs.
            run("ip", "link", "add", ifname, "type", "veth", "peer", "name", host,
                "netns", str(os.getpid()), netns=netns)
        run("ip", "addr", "replace", f"{gateway}/24", "dev", host)
        run("ip", "link", "set", host, "up")
        run("ip", "addr", "replace", f"{pod_ip}/24", "dev", ifname, netns=netns)
        run("ip", "link", "set", ifname, "up", netns=netns)
        run("ip", "route", "replace", "default", "via", str(gateway), "dev", ifname, netns=netns)
        host_mac = (link_json(host) or {}).get("address", "")
        pod_mac = (link_json(ifname, netns) or {}).get("address", "")
    except BaseException:
        veth_del(conf, env)
        raise
    return {
        "cniVersion": version,
        "interfaces": [{"name": host, "mac": host_mac},
                       {"name": ifname, "mac": pod_mac, "sandbox": netns}],
        "ips": versioned_ips(version, [{"address": f"{pod_ip}/24", "gateway": str(gateway), "interface": 1}]),
        "routes": [{"dst": "0.0.0.0/0", "gw": str(gateway)}],
        "dns": {},
    }


def veth_del(conf: dict[str, Any], env: dict[str, str]) -> None:
    cid, ifname = env["CNI_CONTAINERID"], env["CNI_IFNAME"]
    leases = Leases(Path(conf["dataDir"]), ipaddress.IPv4Network(conf["network"]))
    host = host_link_name(cid, ifname)
    if link_json(host) is not None:
        run("ip", "link", "del", host)  # takes the pod's end with it
    leases.release(f"{cid}/{ifname}")


def veth_check(conf: dict[str, Any], env: dict[str, str]) -> None:
    cid, ifname, netns = env["CNI_CONTAINERID"], env["CNI_IFNAME"], env["CNI_NETNS"]
    leases = Leases(Path(conf["dataDir"]), ipaddress.IPv4Network(conf["network"]))
    index = leases.find(f"{cid}/{ifname}")
    if index is None:
        raise CniError(E_FAILED, f"no lease for {cid}/{ifname}")
    subnet = leases.subnet(index)
    for name, where, want in ((host_link_name(cid, ifname), "", subnet[1]), (ifname, netns, subnet[2])):
        link = link_json(name, where)
        addrs = [a.get("local") for a in (link or {}).get("addr_info", [])]
        if str(want) not in addrs:
            raise CniError(E_FAILED, f"{name} {'in the pod' if where else 'on the host'} lacks {want}/24")


def loopback(command: str, conf: dict[str, Any], env: dict[str, str]) -> dict[str, Any] | None:
    netns = env.get("CNI_NETNS", "")
    if command == "ADD":
        run("ip", "link", "set", "lo", "up", netns=netns)
        return {"cniVersion": conf["cniVersion"], "interfaces": [{"name": "lo", "sandbox": netns}],
                "ips": versioned_ips(conf["cniVersion"], [{"address": "127.0.0.1/8", "interface": 0}]),
                "dns": {}}
    if command == "CHECK" and "UP" not in ((link_json("lo", netns) or {}).get("flags") or []):
        raise CniError(E_FAILED, "lo is down in the pod")
    return None  # DEL: the loopback goes with the namespace


def handle(command: str, conf: dict[str, Any], env: dict[str, str]) -> dict[str, Any] | None:
    if command == "VERSION":
        return {"cniVersion": conf.get("cniVersion") or SUPPORTED[-1], "supportedVersions": SUPPORTED}
    if conf.get("cniVersion") not in SUPPORTED:
        raise CniError(1, f"unsupported cniVersion {conf.get('cniVersion')!r}")
    required = ["CNI_CONTAINERID", "CNI_IFNAME"] + (["CNI_NETNS"] if command in ("ADD", "CHECK") else [])
    missing = [k for k in required if not env.get(k)]
    if missing:
        raise CniError(E_ENV, f"missing {', '.join(missing)}")
    kind = conf.get("type")
    if kind == "loopback":
        return loopback(command, conf, env)
    if kind != VETH_TYPE:
        raise CniError(E_CONFIG, f"unknown plugin type {kind!r}")
    if "dataDir" not in conf or "network" not in conf:
        raise CniError(E_CONFIG, "the configuration needs dataDir and network")
    if command == "ADD":
        return veth_add(conf, env)
    if command == "DEL":
        veth_del(conf, env)
        return None
    if command == "CHECK":
        veth_check(conf, env)
        return None
    raise CniError(E_ENV, f"unknown CNI_COMMAND {command!r}")


def main() -> int:
    env = dict(os.environ)
    command = env.get("CNI_COMMAND", "")
    raw = sys.stdin.read()
    started = time.monotonic()
    conf: dict[str, Any] = {}
    try:
        try:
            conf = json.loads(raw) if raw.strip() else {}
        except ValueError as exc:
            raise CniError(6, f"cannot decode the network configuration: {exc}") from None
        result = handle(command, conf, env)
        status = 0
    except CniError as exc:
        result = {"cniVersion": conf.get("cniVersion") or SUPPORTED[-1], "code": exc.code,
                  "msg": exc.msg, "details": exc.details}
        status = 1
    if result is not None:
        sys.stdout.write(json.dumps(result))
    if isinstance(conf.get("dataDir"), str) and os.path.isdir(conf["dataDir"]):
        with open(Path(conf["dataDir"]) / "plugin.log", "a") as log:
            log.write(f"{command} type={conf.get('type')} container={env.get('CNI_CONTAINERID', '')} "
                      f"netns={env.get('CNI_NETNS', '')} exit={status} "
                      f"{int((time.monotonic() - started) * 1000)}ms {json.dumps(result) if status else ''}\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
