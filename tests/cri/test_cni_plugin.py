"""The tests' CNI plugin, driven as containerd's libcni drives it: argv-less, env and stdin in, JSON out."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.cri import cni_veth

NETWORK = "169.254.190.0/23"  # two /24s, apart from the pods' 169.254.160.0/20


def call(command: str, conf: dict[str, Any], **env: str) -> tuple[int, dict[str, Any] | None]:
    """Run the plugin; return its exit status and decoded stdout (None if empty)."""
    proc = subprocess.run([str(Path(cni_veth.__file__))], input=json.dumps(conf), capture_output=True, text=True,
                          env={"CNI_COMMAND": command, "CNI_PATH": "/nonexistent", **env}, timeout=60)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None


@pytest.fixture
def conf(tmp_path: Path) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "t", "type": cni_veth.VETH_TYPE, "network": NETWORK,
            "dataDir": str(tmp_path / "data")}


@pytest.fixture
def netns(tmp_path: Path) -> Iterator[str]:
    """A network namespace of the test's own, bound to a file (as containerd's CRI makes them)."""
    path = tmp_path / "netns"
    path.touch()
    subprocess.run(["unshare", f"--net={path}", "true"], check=True)
    try:
        yield str(path)
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_version_lists_the_supported_versions(conf: dict[str, Any]) -> None:
    status, out = call("VERSION", conf)
    assert status == 0 and out == {"cniVersion": "1.0.0", "supportedVersions": cni_veth.SUPPORTED}


@pytest.mark.parametrize("change, env, code", [
    ({"cniVersion": "9.9.9"}, {"CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x"}, 1),
    ({}, {"CNI_IFNAME": "eth0", "CNI_NETNS": "/x"}, cni_veth.E_ENV),
    ({"type": "bridge"}, {"CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x"}, cni_veth.E_CONFIG),
    ({"network": "10.0.0.0/8"}, {"CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x"}, cni_veth.E_CONFIG),
])
def test_bad_input_is_a_cni_error(conf: dict[str, Any], change: dict[str, str], env: dict[str, str],
                                  code: int) -> None:
    """Bad configurations and environments get the spec's error JSON and a non-zero exit, and no link."""
    status, out = call("ADD", {**conf, **change}, **env)
    assert status == 1 and out is not None and out["code"] == code and out["msg"]
    assert not os.path.exists(f"/sys/class/net/{cni_veth.host_link_name('c', 'eth0')}")


def test_add_check_del(conf: dict[str, Any], netns: str) -> None:
    """ADD makes eth0 in the pod and the host end outside, CHECK passes, DEL removes them and is idempotent."""
    env = {"CNI_CONTAINERID": "cni-test-1", "CNI_IFNAME": "eth0", "CNI_NETNS": netns}
    host = cni_veth.host_link_name("cni-test-1", "eth0")
    try:
        status, out = call("ADD", conf, **env)
        assert status == 0 and out is not None, out
        assert out["ips"] == [{"address": "169.254.190.2/24", "gateway": "169.254.190.1", "interface": 1}]
        assert [i["name"] for i in out["interfaces"]] == [host, "eth0"]
        assert out["interfaces"][1]["sandbox"] == netns
        pod_side = subprocess.run(["nsenter", f"--net={netns}", "ip", "-br", "addr", "show", "eth0"],
                                  capture_output=True, text=True, check=True).stdout
        assert "169.254.190.2/24" in pod_side and " UP " in pod_side
        assert call("CHECK", conf, **env) == (0, None)
        # A second pod takes the next /24.
        env2 = {**env, "CNI_CONTAINERID": "cni-test-2"}
        netns2 = netns + "2"
        Path(netns2).touch()
        subprocess.run(["unshare", f"--net={netns2}", "true"], check=True)
        try:
            status, out2 = call("ADD", conf, **{**env2, "CNI_NETNS": netns2})
            assert status == 0 and out2 is not None and out2["ips"][0]["address"] == "169.254.191.2/24"
            assert call("DEL", conf, **{**env2, "CNI_NETNS": netns2}) == (0, None)
        finally:
            subprocess.run(["umount", netns2], check=False)
    finally:
        assert call("DEL", conf, **env) == (0, None)
    assert not os.path.exists(f"/sys/class/net/{host}")
    assert list(Path(conf["dataDir"]).glob("lease-*")) == []
    assert call("DEL", conf, **{**env, "CNI_NETNS": ""}) == (0, None)  # again, with the namespace gone
    status, out = call("CHECK", conf, **env)
    assert status == 1 and out is not None and "no lease" in out["msg"]
