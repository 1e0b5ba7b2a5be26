"""The VM joins the container's network namespace. The test plays the CNI plugin: it makes a
namespace pair joined by a veth, with 169.254.0.0/16 (and ULA IPv6) addresses, runs a server in
the container's VM and reaches it from the other end. Traffic never leaves the test's namespaces."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from .conftest import TEMPLATES
from .oci_client import become_subreaper, read_until, spawn, wait_exit, Pipes

pytestmark = pytest.mark.vm


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=60)


@pytest.fixture
def cni_pair():
    """Two namespaces, 'peer' and 'ctr', joined by a veth as a CNI bridge/ptp plugin would leave them."""
    tag = uuid.uuid4().hex[:6]
    peer, ctr = f"plpeer{tag}", f"plctr{tag}"
    sh("ip", "netns", "add", peer)
    sh("ip", "netns", "add", ctr)
    try:
        sh("ip", "-n", peer, "link", "add", "veth0", "type", "veth", "peer", "name", "eth0", "netns", ctr)
        sh("ip", "-n", peer, "link", "set", "lo", "up")
        sh("ip", "-n", peer, "addr", "add", "169.254.30.1/24", "dev", "veth0")
        sh("ip", "-n", peer, "addr", "add", "fd69:1::1/64", "dev", "veth0", "nodad")
        sh("ip", "-n", peer, "link", "set", "veth0", "up")
        sh("ip", "-n", ctr, "link", "set", "eth0", "mtu", "1400")
        sh("ip", "-n", ctr, "addr", "add", "169.254.30.2/24", "dev", "eth0")
        sh("ip", "-n", ctr, "addr", "add", "fd69:1::2/64", "dev", "eth0", "nodad")
        sh("ip", "-n", ctr, "link", "set", "eth0", "up")
        sh("ip", "-n", ctr, "route", "add", "default", "via", "169.254.30.1")
        yield peer, ctr
    finally:
        sh("ip", "netns", "del", ctr, check=False)
        sh("ip", "netns", "del", peer, check=False)


def fetch_in(netns: str, url: str) -> str:
    """GET ``url`` from inside namespace ``netns`` (bounded: one request, 20 s)."""
    code = f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=20).read().decode(), end='')"
    return sh("ip", "netns", "exec", netns, "/usr/bin/python3", "-c", code).stdout


def with_netns(bundle, path: str | None) -> None:
    config = json.loads((bundle / "config.json").read_text())
    for ns in config["linux"]["namespaces"]:
        if ns["type"] == "network":
            if path:
                ns["path"] = path
            else:
                ns.pop("path", None)
    (bundle / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("mode", ["tcfilter", "macvtap"])
def test_a_server_in_the_vm_is_reached_from_the_other_end_of_the_veth(runtime, make_bundle, tmp_path, cni_pair, mode,
                                                                     config_file):
    become_subreaper()
    runtime.config = tmp_path / "pellucid.toml"
    runtime.config.write_text(config_file.read_text() + f'[network]\nmode = "{mode}"\n')
    peer, ctr = cni_pair
    mac = json.loads(sh("ip", "-n", ctr, "-j", "link", "show", "eth0").stdout)[0]["address"]
    bundle = make_bundle(["sh", "-c", "mkdir -p /www && echo hello-from-vm > /www/index.html && "
                          "cat /sys/class/net/eth0/address /sys/class/net/eth0/mtu && ip route && ip -6 addr && "
                          "httpd -f -p 80 -h /www & "  # serving only once it answers: no race with the fetches below
                          "until wget -q -O /dev/null http://127.0.0.1/; do sleep 0.1; done; echo serving; wait"])
    with_netns(bundle, f"/run/netns/{ctr}")
    pipes = Pipes()
    pid_file = tmp_path / "pid"
    out = spawn(runtime, "create", "--bundle", str(bundle), "--pid-file", str(pid_file), "web", pipes=pipes)
    pipes.close_child_ends()
    assert out.returncode == 0, runtime.log.read_text() + runtime.evidence()
    # A clone's NIC (tap or macvtap) is in its template's slot, given the namespace's MAC when it resumed.
    assert bool(runtime.vm_info("web")["template"]) == TEMPLATES
    runtime("start", "web")
    shown = read_until(pipes.stdout_r, b"serving").decode()
    # The guest's interface is the namespace's: same MAC, MTU, addresses and default route.
    assert mac in shown and "1400" in shown
    assert "default via 169.254.30.1 dev eth0" in shown and "fd69:1::2/64" in shown
    # TCP over IPv4 and IPv6, and ping both ways, from the peer namespace.
    for url in ("http://169.254.30.2/", "http://[fd69:1::2]/"):
        assert fetch_in(peer, url) == "hello-from-vm\n"
    assert sh("ip", "netns", "exec", peer, "ping", "-c", "2", "-W", "5", "169.254.30.2").returncode == 0
    assert sh("ip", "netns", "exec", peer, "ping", "-6", "-c", "2", "-W", "5", "fd69:1::2").returncode == 0
    assert sh("ip", "-n", ctr, "-o", "link").stdout.count("pltap" if mode == "tcfilter" else "plmvt") == 1
    runtime("delete", "--force", "web")
    wait_exit(int(pid_file.read_text()))
    pipes.close()
    # Torn down: no tap, no ingress qdisc left on the namespace's interface.
    assert "pltap" not in sh("ip", "-n", ctr, "-o", "link").stdout
    assert "plmvt" not in sh("ip", "-n", ctr, "-o", "link").stdout
    assert "ingress" not in sh("ip", "netns", "exec", ctr, "tc", "qdisc", "show", "dev", "eth0").stdout
    assert "169.254.30.2/24" in sh("ip", "-n", ctr, "addr", "show", "eth0").stdout  # the namespace is left as found


def test_a_new_namespace_without_a_path_has_loopback_only(runtime, make_bundle, tmp_path):
    become_subreaper()
    bundle = make_bundle(["sh", "-c", "ip -o addr | grep -v ' lo ' | grep inet; ip -o link | grep -c 'state UP'; "
                          "(echo lo-ok | nc -l -p 7000 &); sleep 0.5; nc 127.0.0.1 7000 </dev/null"])
    with_netns(bundle, None)
    pipes = Pipes()
    out = spawn(runtime, "create", "--bundle", str(bundle), "--pid-file", str(tmp_path / "pid"), "lo", pipes=pipes)
    pipes.close_child_ends()
    assert out.returncode == 0, runtime.log.read_text()
    runtime("start", "lo")
    stdout, _ = pipes.read_all()
    wait_exit(int((tmp_path / "pid").read_text()))
    assert stdout.decode().split() == ["0", "lo-ok"]  # no address but loopback's, no interface up but lo
    runtime("delete", "lo")
    pipes.close()


def test_a_namespace_that_cannot_be_joined_fails_cleanly(runtime, make_bundle, tmp_path):
    bundle = make_bundle(["true"])
    with_netns(bundle, "/run/netns/does-not-exist")
    out = spawn(runtime, "create", "--bundle", str(bundle), "--pid-file", str(tmp_path / "pid"), "nons")
    assert out.returncode != 0
    assert "does-not-exist" in runtime.log.read_text()
