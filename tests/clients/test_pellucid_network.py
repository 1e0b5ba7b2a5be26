"""Docker networking with pellucid as the runtime: a published port answers on loopback, and two
containers on a user-defined bridge reach each other by name (Docker's embedded DNS, relayed from
each VM). Traffic goes only to 127.0.0.1 and to the 169.254.0.0/16 networks the harness made."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
import uuid

import pytest

from tests.evidence import keep_on_failure

from . import harness

pytestmark = pytest.mark.clients

PELLUCID = os.environ.get("PELLUCID_TEST_BINARY", "/usr/local/bin/pellucid")  # a worktree's own, to try it


@pytest.fixture(scope="module")
def dockerd(tmp_path_factory, request):
    """A private dockerd for the module; a failed test keeps its logs, its exec-root (pellucid's
    --root and VMs) and its containerd's state."""
    with harness.Dockerd(runtimes={"pellucid": PELLUCID}) as d:
        keep_on_failure(request.node, *d.logs(), d.dir / "x", d.containerd.dir / "state")
        d.import_image(harness.busybox_tarball(tmp_path_factory.mktemp("image")), "local/busybox")
        yield d


def qemu_count() -> int:
    out = subprocess.run(["pgrep", "-fc", "qemu-system.*runtime-pellucid"], capture_output=True, text=True).stdout
    return int(out.strip() or 0)


def get(url: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return urllib.request.urlopen(url, timeout=10).read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_published_port_answers_on_loopback(dockerd):
    port = harness.free_port()
    name = f"web{uuid.uuid4().hex[:6]}"
    dockerd.docker("run", "-d", "--runtime", "pellucid", "--name", name, "-p", f"127.0.0.1:{port}:80",
                   "local/busybox", "sh", "-c",
                   "mkdir /www && echo served-by-$(uname -r) > /www/index.html && exec httpd -f -p 80 -h /www")
    try:
        body = get(f"http://127.0.0.1:{port}/")
        assert body.startswith("served-by-") and body.strip() != f"served-by-{__import__('os').uname().release}"
    finally:
        dockerd.docker("rm", "-f", name)
    assert qemu_count() == 0


def test_containers_on_a_user_defined_bridge_reach_each_other_by_name(dockerd):
    net = f"plnet{uuid.uuid4().hex[:6]}"
    server = f"srv{uuid.uuid4().hex[:6]}"
    dockerd.docker("network", "create", net)
    try:
        dockerd.docker("run", "-d", "--runtime", "pellucid", "--network", net, "--name", server, "local/busybox",
                       "sh", "-c", "mkdir /www && echo hello-by-name > /www/index.html && exec httpd -f -p 80 -h /www")
        out = dockerd.docker("run", "--rm", "--runtime", "pellucid", "--network", net, "local/busybox", "sh", "-c",
                             f"for i in 1 2 3 4 5 6 7 8 9 10; do nslookup {server} 127.0.0.11 >/dev/null 2>&1 && break;"
                             f" sleep 1; done; wget -q -O - http://{server}/ && ping -c 1 -W 5 {server} >/dev/null"
                             f" && echo ping-ok", timeout=300)
        assert out.stdout.split() == ["hello-by-name", "ping-ok"], out.stdout + out.stderr
    finally:
        dockerd.docker("rm", "-f", server, check=False)
        dockerd.docker("network", "rm", net, check=False)
    assert qemu_count() == 0


def host_network() -> tuple[str, str]:
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    qdiscs = subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True, check=True).stdout
    return links, qdiscs


def test_host_networking_is_refused_and_the_hosts_interfaces_are_untouched(dockerd):
    """A VM cannot share the host's network stack: tc redirects on the host's interfaces would take
    its traffic. The refusal comes before anything touches an interface, and reaches the user."""
    before = host_network()
    out = dockerd.docker("run", "--rm", "--runtime", "pellucid", "--network", "host", "local/busybox", "true",
                         check=False, timeout=300)
    assert out.returncode != 0
    assert "cannot join the host's network namespace" in out.stderr, out.stderr
    assert "host networking is not supported" in out.stderr, out.stderr
    assert host_network() == before
    assert qemu_count() == 0
