"""The documents ``spec`` and ``features`` print."""

import json

from pellucid.oci import bundle
from pellucid.oci.default_spec import default_spec
from pellucid.oci.features import features


def test_default_spec_is_a_valid_bundle_config(tmp_path):
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "config.json").write_text(json.dumps(default_spec(), indent="\t"))
    config = bundle.load_config(str(tmp_path))
    assert bundle.rootfs_path(str(tmp_path), config) == str(tmp_path / "rootfs")
    assert bundle.sandbox_of(config) == ("single", None)


def test_default_spec_matches_runc():
    spec = default_spec()
    assert list(spec) == ["ociVersion", "process", "root", "hostname", "mounts", "linux"]
    assert spec["ociVersion"] == "1.0.2-dev"
    process = spec["process"]
    assert process["terminal"] is True and process["args"] == ["sh"] and process["cwd"] == "/"
    assert process["env"][1] == "TERM=xterm"
    assert process["capabilities"] == {name: ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
                                       for name in ("bounding", "effective", "permitted")}
    assert process["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    assert spec["root"] == {"path": "rootfs", "readonly": True}
    assert [m["destination"] for m in spec["mounts"]] == [
        "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"]
    assert [ns["type"] for ns in spec["linux"]["namespaces"]] == ["pid", "network", "ipc", "uts", "mount", "cgroup"]
    assert spec["linux"]["resources"]["devices"] == [{"allow": False, "access": "rwm"}]
    assert "/proc/kcore" in spec["linux"]["maskedPaths"] and "/proc/sys" in spec["linux"]["readonlyPaths"]


def test_default_spec_is_fresh_each_time():
    spec = default_spec()
    spec["process"]["capabilities"]["bounding"].append("CAP_SYS_ADMIN")
    assert default_spec()["process"]["capabilities"]["bounding"] == ["CAP_AUDIT_WRITE", "CAP_KILL",
                                                                     "CAP_NET_BIND_SERVICE"]


def test_features():
    doc = json.loads(json.dumps(features()))
    assert doc["ociVersionMin"] == "1.0.0" and doc["ociVersionMax"] == "1.3.0"
    assert doc["hooks"] == list(bundle.HOOK_STAGES)
    assert {"bind", "rbind", "ro", "nosuid", "tmpcopyup"} <= set(doc["mountOptions"])
    linux = doc["linux"]
    assert linux["namespaces"] == ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"]
    assert len(linux["capabilities"]) == 41
    assert linux["capabilities"][0] == "CAP_CHOWN" and linux["capabilities"][-1] == "CAP_CHECKPOINT_RESTORE"
    assert linux["cgroup"] == {"v1": True, "v2": True, "systemd": False, "systemdUser": False}
    assert linux["seccomp"]["enabled"] is True and "SCMP_ARCH_X86_64" in linux["seccomp"]["archs"]
    assert linux["apparmor"] == {"enabled": False} and linux["selinux"] == {"enabled": False}
    assert doc["annotations"] == {"org.opencontainers.runc.checkpoint.enabled": "false",
                                  "io.github.pellucid.vm": "true"}
