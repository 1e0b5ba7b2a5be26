"""`docker run --network host` hands the runtime the host's own network namespace. A VM cannot
share it (tc redirects on the host's interfaces would take the host's traffic), so `create`
refuses it before any hook, shim, tap or VM, and the host's interfaces and qdiscs stay as they were.
No VM boots here: the refusal comes first (the `root` fixture checks that nothing is left)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.clients import harness

MESSAGE = "cannot join the host's network namespace"


def host_network() -> tuple[str, str]:
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    qdiscs = subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True, check=True).stdout
    return links, qdiscs


@pytest.fixture
def host_netns_bind(tmp_path):
    """The host's namespace under another name, as `ip netns` or a client's netns directory has it."""
    path = tmp_path / "hostns"
    path.touch()
    subprocess.run(["mount", "--bind", "/proc/self/ns/net", str(path)], check=True)
    yield str(path)
    harness.unmount_all_under(tmp_path)


def pid1_namespace_visible() -> bool:
    try:
        os.stat("/proc/1/ns/net")
        return True
    except OSError:  # PID 1 out of our reach (a sandboxed host): refused as a namespace we cannot look at
        return False


@pytest.mark.parametrize("which", ["test process", "self", "bind mount", "pid 1"])
def test_the_hosts_network_namespace_is_refused_and_nothing_is_touched(runtime, make_bundle, tmp_path,
                                                                       host_netns_bind, which):
    path = {"test process": f"/proc/{os.getpid()}/ns/net", "self": "/proc/self/ns/net",
            "bind mount": host_netns_bind, "pid 1": "/proc/1/ns/net"}[which]
    marker = tmp_path / "hook-ran"
    bundle = make_bundle(["true"], hooks={"prestart": [{"path": "/bin/sh", "args": ["sh", "-c", f"touch {marker}"]}],
                                          "createRuntime": [{"path": "/bin/sh",
                                                             "args": ["sh", "-c", f"touch {marker}"]}]})
    config = json.loads((bundle / "config.json").read_text())
    for ns in config["linux"]["namespaces"]:
        if ns["type"] == "network":
            ns["path"] = path
    (bundle / "config.json").write_text(json.dumps(config))
    before = host_network()

    out = runtime("create", "--bundle", str(bundle), "--pid-file", str(tmp_path / "pid"), "hostnet", check=False)

    assert out.returncode == 1
    expected = MESSAGE if which != "pid 1" or pid1_namespace_visible() else "cannot join network namespace"
    assert expected in out.stderr, out.stderr
    last = json.loads(runtime.log.read_text().splitlines()[-1])
    assert last["level"] == "error" and expected in last["msg"]
    if expected == MESSAGE:
        assert "host networking is not supported; use a network namespace" in last["msg"]
    assert not marker.exists(), "a hook ran before the refusal"
    assert not (tmp_path / "pid").exists()
    assert runtime("state", "hostnet", check=False).returncode == 1
    assert host_network() == before
    assert runtime("delete", "--force", "hostnet").returncode == 0


def test_a_config_without_a_network_namespace_is_refused(runtime, make_bundle):
    bundle = make_bundle(["true"])
    config = json.loads((bundle / "config.json").read_text())
    config["linux"]["namespaces"] = [ns for ns in config["linux"]["namespaces"] if ns["type"] != "network"]
    (bundle / "config.json").write_text(json.dumps(config))
    out = runtime("create", "--bundle", str(bundle), "hostnet", check=False)
    assert out.returncode == 1 and f"{MESSAGE}: a VM has a network stack of its own" in out.stderr
