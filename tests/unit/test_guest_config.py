"""config.json as the guest's crun sees it, from the configs Docker and containerd really sent."""

import json
from pathlib import Path

import pytest

from pellucid.errors import BundleError
from pellucid.runtime.guest_config import (DROP, GUEST_OCI_VERSION, PASS, REFUSE, SPEC_ADDITIONS, net_sysctls,
                                            normalise, process_for_guest, translate)
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


def test_binds_go_through_the_volumes_share_when_it_is_another():
    guest, _ = translate(docker_config(), "/b", "cid", "sandbox", volume_tag="volumes")
    assert guest["root"]["path"] == "/run/pellucid/shared/sandbox/cid/rootfs"
    binds = [m for m in guest["mounts"] if m["destination"] in ("/etc/resolv.conf", "/etc/hostname", "/etc/hosts")]
    assert len(binds) == 3
    assert all(m["source"].startswith("/run/pellucid/shared/volumes/cid/mounts/") for m in binds)


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


def test_user_namespace_and_its_mappings_go_to_the_guest():
    config = docker_config()
    config["linux"]["namespaces"].append({"type": "user"})
    config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    config["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    guest, _ = translate(config, "/b", "cid", "sandbox")
    assert {"type": "user"} in guest["linux"]["namespaces"]
    assert guest["linux"]["uidMappings"] == config["linux"]["uidMappings"]
    assert guest["linux"]["gidMappings"] == config["linux"]["gidMappings"]


def test_binds_of_one_source_are_peers_in_the_guest():
    """One 9p path per source, and a later shared bind binds the first: a mount under one shows at the other."""
    config = docker_config()
    config["mounts"] += [{"destination": d, "type": "bind", "source": "/srv", "options": ["rbind", "rshared"]}
                         for d in ("/a", "/b")]
    config["mounts"].append({"destination": "/c", "type": "bind", "source": "/srv", "options": ["rbind", "ro"]})
    guest, binds = translate(config, "/b", "cid", "sandbox")
    by_dest = {m["destination"]: m for m in guest["mounts"]}
    assert by_dest["/a"]["source"].startswith("/run/pellucid/shared/sandbox/cid/mounts/")
    assert by_dest["/b"]["source"] == "/run/pellucid/shared/sandbox/cid/rootfs/a", "a peer of /a"
    assert by_dest["/c"]["source"] != by_dest["/a"]["source"]
    assert by_dest["/a"]["options"] == ["rbind", "rshared"]
    assert [(b.readonly) for b in binds if b.source == "/srv"] == [False, True]


@pytest.mark.parametrize("namespaces, message", [
    ([{"type": "time"}], "time namespaces are not supported"),
    ([{"type": "ipc", "path": "/proc/1/ns/ipc"}], "host namespace"),
])
def test_namespaces_a_vm_cannot_give(namespaces, message):
    config = docker_config()
    config["linux"]["namespaces"] = namespaces
    with pytest.raises(BundleError, match=message):
        translate(config, "/b", "cid", "sandbox")


# The guest's crun is Debian 12's 1.8: it takes ociVersion 1.0.x only, and parses and then ignores
# what later runtime-spec versions added. Docker 27+ and containerd 2.x write 1.2.0 and 1.3.0.

RECORDED = sorted(CLIENTS.glob("*/*-config.json"))


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recorded_client_configs_only_change_version(path):
    config = json.loads(path.read_text())
    warnings = []
    for version in ("1.0.2-dev", "1.2.0", "1.3.0"):
        guest = normalise(json.loads(json.dumps({**config, "ociVersion": version})), warnings.append)
        assert guest == {**config, "ociVersion": GUEST_OCI_VERSION}
    assert warnings == []


def spec_1_3_config():
    """Docker's config with what runtime-spec 1.1 to 1.3 added that crun 1.8 carries out."""
    config = docker_config()
    config["ociVersion"] = "1.3.0"
    config["domainname"] = "example.org"
    config["linux"]["personality"] = {"domain": "LINUX"}
    config["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": 1,
                                  "flags": ["SECCOMP_FILTER_FLAG_SPEC_ALLOW"]}
    config["linux"]["resources"]["cpu"] = {"idle": 0}
    config["annotations"] = {"org.opencontainers.image.title": "busybox"}
    return config


def test_a_1_3_config_keeps_what_crun_carries_out():
    config = spec_1_3_config()
    guest, _ = translate(config, "/b", "cid", "sandbox")
    assert guest["ociVersion"] == GUEST_OCI_VERSION == "1.0.2"
    assert guest["domainname"] == "example.org"
    assert guest["linux"]["personality"] == {"domain": "LINUX"}
    assert guest["linux"]["seccomp"] == config["linux"]["seccomp"]
    assert guest["linux"]["resources"]["cpu"] == {"idle": 0}
    assert config["ociVersion"] == "1.3.0"  # the input is left alone


@pytest.mark.parametrize("field, value", [
    ("process.ioPriority", {"class": "IOPRIO_CLASS_RT", "priority": 1}),
    ("process.scheduler", {"policy": "SCHED_FIFO", "priority": 10}),
    ("process.execCPUAffinity", {"initial": "0", "final": "0-3"}),
    ("linux.resources.cpu.burst", 1000000),
    ("linux.memoryPolicy", {"mode": "MPOL_BIND", "nodes": "0"}),
    ("linux.intelRdt", {"closID": "guaranteed", "schemata": ["L3:0=7f"], "enableMonitoring": True}),
    ("vm", {"hypervisor": {"path": "/usr/bin/qemu"}, "hwConfig": {"deviceTree": "/dt.dtb", "vcpus": 2}}),
    ("windows", {"layerFolders": []}),
])
def test_harmless_fields_crun_cannot_carry_out_are_dropped_with_a_warning(field, value):
    config = spec_1_3_config()
    *parents, last = field.split(".")
    target = config
    for key in parents:
        target = target.setdefault(key, {})
    target[last] = value
    warnings = []
    guest = normalise(json.loads(json.dumps(config)), warnings.append)
    target = guest
    for key in parents:
        target = target[key]
    assert last not in target
    assert len(warnings) == 1 and warnings[0].startswith(f"config.json: {last if last == 'windows' else field} ")


@pytest.mark.parametrize("change, message", [
    (lambda c: c["linux"].update(netDevices={"eth1": {"name": "eth9"}}), "linux.netDevices cannot be honoured"),
    (lambda c: c["linux"].update(timeOffsets={"monotonic": {"secs": 3600}}), "linux.timeOffsets cannot be honoured"),
    (lambda c: c["linux"]["seccomp"].update(listenerPath="/run/seccomp-agent.sock"),
     "linux.seccomp.listenerPath cannot be honoured"),
    (lambda c: c["annotations"].update({"run.oci.seccomp.receiver": "/run/agent.sock"}),
     "run.oci.seccomp.receiver cannot be honoured"),
    (lambda c: c["mounts"].append({"destination": "/data", "type": "bind", "source": "/srv", "options": ["rbind"],
                                   "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}],
                                   "gidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}]}),
     "mounts\\[\\].uidMappings cannot be honoured: idmapped mounts"),
    (lambda c: c["mounts"].append({"destination": "/data", "type": "bind", "source": "/srv",
                                   "options": ["rbind", "ridmap"]}), "idmapped mounts are not supported"),
])
def test_what_a_vm_cannot_honour_and_matters_is_refused(change, message):
    config = spec_1_3_config()
    change(config)
    with pytest.raises(BundleError, match=message):
        translate(config, "/b", "cid", "sandbox")


def test_empty_additions_ask_for_nothing():
    config = spec_1_3_config()
    config["linux"]["netDevices"] = {}
    config["process"]["scheduler"] = None
    warnings = []
    guest = normalise(json.loads(json.dumps(config)), warnings.append)
    assert warnings == [] and guest["linux"]["netDevices"] == {}


def test_an_exec_process_is_normalised_too():
    process = {"args": ["sh"], "cwd": "/", "ioPriority": {"class": "IOPRIO_CLASS_IDLE", "priority": 7},
               "execCPUAffinity": {"initial": "0"}, "apparmorProfile": "docker-default"}
    warnings = []
    assert process_for_guest(process, warnings.append) == {"args": ["sh"], "cwd": "/"}
    assert [w.split()[1] for w in warnings] == ["process.ioPriority", "process.execCPUAffinity"]
    assert "ioPriority" in process


def test_every_addition_is_decided():
    assert {action for _, _, action, _ in SPEC_ADDITIONS} == {PASS, DROP, REFUSE}
    assert all(reason for *_, reason in SPEC_ADDITIONS)


def test_cpuset_is_the_host_cgroup_s_not_the_guest_s():
    """Host CPU numbers written in the guest fail with ERANGE: the VM's host cgroup takes them."""
    from pellucid.runtime.guest_config import resources_for_guest
    resources = {"cpu": {"cpus": "3", "mems": "0", "shares": 512}, "memory": {"limit": 1 << 26},
                 "blockIO": {"weight": 10}}
    assert resources_for_guest(resources) == {"cpu": {"shares": 512}, "memory": {"limit": 1 << 26}}
    assert resources["cpu"]["cpus"] == "3", "the caller's resources are not changed"
