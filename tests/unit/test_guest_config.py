"""config.json as the guest's crun sees it, from the configs Docker and containerd really sent."""

import json
from pathlib import Path

import pytest

from pellucid.errors import BundleError
from pellucid.runtime.guest_config import net_sysctls, translate
from tests.fixtures import CLIENTS


def docker_config():
    return json.loads((CLIENTS / "docker" / "00-config.json").read_text())


def test_rootfs_and_binds_go_through_the_share():
    config = docker_config()
    guest, binds = translate(config, "/b", "cid", "sandbox")
    assert guest["root"] == {"path": "/run/pellucid/shared/sandbox/cid/rootfs", "readonly": False}
    assert binds[0].name == "rootfs"
    by_dest = {m["destination"]: m for m in guest["mounts"]}
    for dest in ("/etc/resolv.conf", "/etc/hostname", "/etc/hosts"):
        assert by_dest[dest]["source"].startswith("/run/pellucid/shared/sandbox/cid/mounts/")
    assert by_dest["/proc"] == next(m for m in config["mounts"] if m["destination"] == "/proc")
    assert sorted(Path(b.source).name for b in binds[1:]) == ["hostname", "hosts", "resolv.conf"]


def test_the_network_namespace_is_the_vms_and_its_sysctls_go_to_the_agent():
    config = docker_config()
    guest, _ = translate(config, "/b", "cid", "sandbox")
    assert "network" not in [ns["type"] for ns in guest["linux"]["namespaces"]]
    assert not any(k.startswith("net.") for k in guest["linux"].get("sysctl", {}))
    assert net_sysctls(config) == {"net.ipv4.ip_unprivileged_port_start": "0",
                                   "net.ipv4.ping_group_range": "0 2147483647"}


def test_block_io_host_hooks_and_labels_are_dropped():
    config = docker_config()
    config["hooks"] = {"prestart": [{"path": "/usr/bin/docker"}], "startContainer": [{"path": "/bin/true"}]}
    config["process"]["apparmorProfile"] = "docker-default"
    guest, _ = translate(config, "/b", "cid", "sandbox")
    assert "blockIO" not in guest["linux"]["resources"]
    assert guest["hooks"] == {"startContainer": [{"path": "/bin/true"}]}
    assert "apparmorProfile" not in guest["process"]
    assert guest["linux"]["cgroupsPath"] == "/pellucid/cid"
    assert config["hooks"]["prestart"]  # the input is left alone


def test_read_only_binds_are_read_only_on_the_host_too():
    config = docker_config()
    config["mounts"].append({"destination": "/data", "type": "bind", "source": "/srv", "options": ["rbind", "ro"]})
    _, binds = translate(config, "/b", "cid", "sandbox")
    assert [b.readonly for b in binds if b.source == "/srv"] == [True]


@pytest.mark.parametrize("namespaces, message", [
    ([{"type": "user"}], "user namespaces are not supported"),
    ([{"type": "ipc", "path": "/proc/1/ns/ipc"}], "host namespace"),
])
def test_namespaces_a_vm_cannot_give(namespaces, message):
    config = docker_config()
    config["linux"]["namespaces"] = namespaces
    with pytest.raises(BundleError, match=message):
        translate(config, "/b", "cid", "sandbox")
