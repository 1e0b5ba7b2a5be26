"""`pellucid install` / `uninstall`: every engine's config format, edited on sample files."""

from __future__ import annotations

import difflib
import json
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest

from pellucid import cli
from pellucid.config import Config, HypervisorConfig
from pellucid.install import InstallError, clients, containerd, crio, docker, files, podman, runtimeclass

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "install"
EXE = "/usr/local/bin/pellucid"


def sample(tmp_path: Path, name: str, mode: int = 0o644) -> Path:
    path = tmp_path / name
    shutil.copyfile(FIXTURES / name, path)
    path.chmod(mode)
    return path


def only_insertions(old: str, new: str) -> list[str]:
    """The lines ``new`` adds to ``old``; fails if any line of ``old`` changed or went."""
    matcher = difflib.SequenceMatcher(a=old.splitlines(), b=new.splitlines(), autojunk=False)
    added = []
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        assert op in ("equal", "insert"), f"{op} of {old.splitlines()[a0:a1]}"
        added += new.splitlines()[b0:b1]
    return added


def backups(path: Path) -> list[Path]:
    directory = path.parent.parent if path.parent.name.endswith(".d") else path.parent
    return sorted(directory.glob(path.name + ".pellucid-backup-*"))


def install(name: str, path: Path, default: bool = False, dry_run: bool = False) -> files.Outcome:
    return clients.install(name, str(path), EXE, default, dry_run)


# Docker


def test_docker_keeps_other_keys_backs_up_and_keeps_mode(tmp_path):
    path = sample(tmp_path, "daemon-other-keys.json", 0o600)
    before = path.read_text()
    out = install("docker", path)
    data = json.loads(path.read_text())
    assert data["runtimes"] == {"crun": {"path": "/usr/bin/crun"}, "pellucid": {"path": EXE}}
    assert data["log-level"] == "warn" and data["storage-driver"] == "overlay2"
    assert data["default-runtime"] == "runc"  # untouched without --default
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert out.changed and Path(out.backup).read_text() == before and backups(path) == [Path(out.backup)]


def test_docker_default_then_uninstall_removes_only_what_install_added(tmp_path):
    path = sample(tmp_path, "daemon-other-keys.json")
    install("docker", path, default=True)
    assert json.loads(path.read_text())["default-runtime"] == "pellucid"
    clients.uninstall("docker", str(path))
    data = json.loads(path.read_text())
    assert data["runtimes"] == {"crun": {"path": "/usr/bin/crun"}} and "default-runtime" not in data


def test_docker_round_trip_restores_the_file(tmp_path):
    path = sample(tmp_path, "daemon-other-keys.json")
    before = path.read_text()
    install("docker", path)
    clients.uninstall("docker", str(path))
    assert path.read_text() == before


def test_docker_uninstall_keeps_another_default_runtime(tmp_path):
    path = sample(tmp_path, "daemon-other-keys.json")
    text = docker.install(path.read_text(), EXE, default=False)
    assert json.loads(docker.uninstall(text))["default-runtime"] == "runc"


def test_docker_install_twice_changes_nothing_the_second_time(tmp_path):
    path = sample(tmp_path, "daemon-other-keys.json")
    install("docker", path, default=True)
    after_first = path.read_text()
    again = install("docker", path, default=True)
    assert not again.changed and path.read_text() == after_first and len(backups(path)) == 1


def test_docker_file_already_naming_pellucid_is_left_alone(tmp_path):
    path = sample(tmp_path, "daemon-has-pellucid.json")
    before = path.read_text()
    assert not install("docker", path, default=True).changed
    assert path.read_text() == before and backups(path) == []


def test_docker_invalid_json_is_refused_and_unchanged(tmp_path):
    path = sample(tmp_path, "daemon-broken.json")
    before = path.read_bytes()
    with pytest.raises(InstallError, match="not valid JSON.*nothing was changed"):
        install("docker", path)
    assert path.read_bytes() == before and backups(path) == []


@pytest.mark.parametrize("text", ['["a list"]', '{"runtimes": []}'])
def test_docker_json_of_the_wrong_shape_is_refused(text):
    with pytest.raises(InstallError):
        docker.install(text, EXE, default=False)


@pytest.mark.parametrize("existing", [None, "", "\n"])
def test_docker_missing_or_empty_file_is_created(tmp_path, existing):
    path = tmp_path / "docker" / "daemon.json"
    if existing is not None:
        path.parent.mkdir()
        path.write_text(existing)
    install("docker", path, default=True)
    assert json.loads(path.read_text()) == {"runtimes": {"pellucid": {"path": EXE}}, "default-runtime": "pellucid"}
    if existing is None:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        clients.uninstall("docker", str(path))
        assert json.loads(path.read_text()) == {}


def test_docker_dry_run_prints_the_diff_and_changes_nothing(tmp_path):
    path = sample(tmp_path, "daemon-other-keys.json")
    before = path.read_text()
    out = install("docker", path, default=True, dry_run=True)
    assert out.changed and '+  "default-runtime": "pellucid"' in out.diff and f'"path": "{EXE}"' in out.diff
    assert path.read_text() == before and backups(path) == []


def test_docker_status(tmp_path):
    path = sample(tmp_path, "daemon-other-keys.json")
    assert docker.status(str(path)) == (False, False)
    install("docker", path)
    assert docker.status(str(path)) == (True, False)
    install("docker", path, default=True)
    assert docker.status(str(path)) == (True, True)
    assert docker.status(str(tmp_path / "absent.json")) == (False, False)


# containerd


@pytest.mark.parametrize("name, plugin", [("containerd-v2.toml", "io.containerd.grpc.v1.cri"),
                                          ("containerd-v3.toml", "io.containerd.cri.v1.runtime")])
def test_containerd_adds_the_handler_and_keeps_the_rest_byte_for_byte(tmp_path, name, plugin):
    path = sample(tmp_path, name)
    before = path.read_text()
    install("containerd", path)
    after = path.read_text()
    added = only_insertions(before, after)
    assert any("BinaryName" in line for line in added)
    cri = tomllib.loads(after)["plugins"][plugin]["containerd"]
    assert cri["runtimes"]["pellucid"] == {"runtime_type": "io.containerd.runc.v2", "options": {"BinaryName": EXE}}
    assert cri["runtimes"]["runc"]["runtime_type"] == "io.containerd.runc.v2"
    assert cri["default_runtime_name"] == "runc"
    assert not install("containerd", path).changed
    clients.uninstall("containerd", str(path))
    assert path.read_text() == before


@pytest.mark.parametrize("name, plugin", [("containerd-v2.toml", "io.containerd.grpc.v1.cri"),
                                          ("containerd-v3.toml", "io.containerd.cri.v1.runtime")])
def test_containerd_default_runtime_name(tmp_path, name, plugin):
    path = sample(tmp_path, name)
    install("containerd", path, default=True)
    assert tomllib.loads(path.read_text())["plugins"][plugin]["containerd"]["default_runtime_name"] == "pellucid"
    assert containerd.status(str(path)) == (True, True)
    clients.uninstall("containerd", str(path))
    assert "default_runtime_name" not in tomllib.loads(path.read_text())["plugins"][plugin]["containerd"]
    assert containerd.status(str(path)) == (False, False)


def test_containerd_handler_with_another_binary_is_updated(tmp_path):
    path = sample(tmp_path, "containerd-v2.toml")
    install("containerd", path)
    out = clients.install("containerd", str(path), "/opt/pellucid/bin/pellucid")
    assert out.changed
    runtimes = tomllib.loads(path.read_text())["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
    assert runtimes["pellucid"]["options"]["BinaryName"] == "/opt/pellucid/bin/pellucid"


def test_containerd_version_1_with_plugins_is_refused(tmp_path):
    path = sample(tmp_path, "containerd-v1.toml")
    before = path.read_bytes()
    with pytest.raises(InstallError, match="version 1"):
        install("containerd", path)
    assert path.read_bytes() == before and backups(path) == []


def test_containerd_version_1_without_plugins_becomes_version_2(tmp_path):
    path = sample(tmp_path, "containerd-v1-no-plugins.toml")
    before = path.read_text()
    text = containerd.install(before, EXE, default=False, new_version=2)
    assert text.startswith("version = 2\n") and only_insertions(before, text)
    assert tomllib.loads(text)["grpc"]["address"] == "/run/containerd/containerd.sock"


def test_containerd_invalid_toml_is_refused_and_unchanged(tmp_path):
    path = sample(tmp_path, "containerd-broken.toml")
    before = path.read_bytes()
    with pytest.raises(InstallError, match="not valid TOML"):
        install("containerd", path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("version, plugin", [(2, "io.containerd.grpc.v1.cri"), (3, "io.containerd.cri.v1.runtime")])
def test_containerd_new_file_has_the_version_asked(version, plugin):
    text = containerd.install(None, EXE, default=False, new_version=version)
    data = tomllib.loads(text)
    assert data["version"] == version and "pellucid" in data["plugins"][plugin]["containerd"]["runtimes"]
    assert containerd.uninstall(text) is None  # nothing else in it: the file goes


def test_containerd_missing_file_created_with_mode_0644(tmp_path):
    path = tmp_path / "containerd" / "config.toml"
    install("containerd", path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert containerd.status(str(path)) == (True, False)
    assert clients.uninstall("containerd", str(path)).removed and not path.exists()


def test_containerd_disabled_cri_is_warned_about():
    assert containerd.warnings('version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n')
    assert not containerd.warnings('version = 2\ndisabled_plugins = ["io.containerd.snapshotter.v1.btrfs"]\n')


def test_real_containerd_parses_the_written_config(tmp_path):
    """containerd itself (`config dump`, no daemon started) reads the installed handler."""
    path = sample(tmp_path, "containerd-v2.toml")
    install("containerd", path)
    dump = subprocess.run(["containerd", "--config", str(path), "config", "dump"],
                          capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0, dump.stderr
    cri = tomllib.loads(dump.stdout)["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]
    assert cri["runtimes"]["pellucid"]["runtime_type"] == "io.containerd.runc.v2"
    assert cri["runtimes"]["pellucid"]["options"]["BinaryName"] == EXE


# CRI-O


def test_crio_drop_in_is_created_and_removed(tmp_path):
    path = tmp_path / "crio.conf.d" / "50-pellucid.conf"
    install("crio", path, default=True)
    data = tomllib.loads(path.read_text())["crio"]["runtime"]
    assert data["default_runtime"] == "pellucid"
    assert data["runtimes"]["pellucid"] == {
        "runtime_path": EXE, "runtime_type": "oci", "runtime_root": "/run/pellucid", "monitor_cgroup": "pod",
        "monitor_env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert crio.status(str(path)) == (True, True)
    assert not install("crio", path, default=True).changed
    out = clients.uninstall("crio", str(path))
    assert out.removed and not path.exists()
    assert list(path.parent.iterdir()) == []  # its backup is not left where CRI-O reads drop-ins
    assert Path(out.backup).parent == tmp_path


def test_crio_existing_drop_in_keeps_its_settings(tmp_path):
    (tmp_path / "crio.conf.d").mkdir()
    path = tmp_path / "crio.conf.d" / "crio-dropin-other.conf"
    shutil.copyfile(FIXTURES / "crio-dropin-other.conf", path)
    before = path.read_text()
    install("crio", path)
    data = tomllib.loads(path.read_text())["crio"]["runtime"]
    assert data["log_level"] == "info" and data["runtimes"]["pellucid"]["runtime_path"] == EXE
    assert only_insertions(before, path.read_text())
    clients.uninstall("crio", str(path))
    assert path.read_text() == before


def test_crio_invalid_toml_is_refused(tmp_path):
    path = sample(tmp_path, "containerd-broken.toml")
    with pytest.raises(InstallError, match="not valid TOML"):
        install("crio", path)


def test_crio_status_merges_config_files_in_order(tmp_path):
    first, second = tmp_path / "a.conf", tmp_path / "b.conf"
    first.write_text(crio.install(None, EXE, default=True))
    second.write_text('[crio.runtime]\ndefault_runtime = "crun"\n')
    assert crio.status(str(first)) == (True, True)
    assert crio.status(str(second)) == (False, False)


# podman


@pytest.mark.parametrize("name", ["containers-no-engine.conf", "containers-with-engine.conf"])
def test_podman_runtime_added_and_removed(tmp_path, name):
    path = sample(tmp_path, name)
    before = path.read_text()
    install("podman", path)
    engine = tomllib.loads(path.read_text())["engine"]
    assert engine["runtimes"]["pellucid"] == [EXE] and "runtime" not in engine
    assert only_insertions(before, path.read_text())
    assert podman.status(str(path)) == (True, False)
    install("podman", path, default=True)
    assert tomllib.loads(path.read_text())["engine"]["runtime"] == "pellucid"
    assert podman.status(str(path)) == (True, True)
    assert not install("podman", path, default=True).changed
    clients.uninstall("podman", str(path))
    assert path.read_text() == before


def test_podman_keeps_other_runtimes(tmp_path):
    path = sample(tmp_path, "containers-with-engine.conf")
    install("podman", path, default=True)
    engine = tomllib.loads(path.read_text())["engine"]
    assert engine["runtimes"]["crun"] == ["/usr/bin/crun"] and engine["cgroup_manager"] == "cgroupfs"


def test_podman_missing_file_created(tmp_path):
    path = tmp_path / "containers" / "containers.conf"
    install("podman", path, default=True)
    assert tomllib.loads(path.read_text()) == {"engine": {"runtime": "pellucid", "runtimes": {"pellucid": [EXE]}}}
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_podman_invalid_toml_is_refused_and_unchanged(tmp_path):
    path = sample(tmp_path, "containers-broken.conf")
    before = path.read_bytes()
    with pytest.raises(InstallError, match="not valid TOML"):
        install("podman", path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("name", ["containers-with-engine.conf", "containerd-v3.toml"])
def test_dry_run_changes_nothing_for_toml_files(tmp_path, name):
    client = "podman" if name.startswith("containers") else "containerd"
    path = sample(tmp_path, name)
    before = path.read_text()
    out = install(client, path, default=True, dry_run=True)
    assert out.changed and out.diff.startswith(f"--- {path}\n+++ {path}\n") and EXE in out.diff
    assert path.read_text() == before and backups(path) == []


# shared pieces


def test_write_atomic_follows_a_symlink_and_keeps_the_link(tmp_path):
    real = sample(tmp_path, "containers-no-engine.conf", 0o640)
    link = tmp_path / "containers.conf"
    link.symlink_to(real.name)
    install("podman", link)
    assert link.is_symlink() and "pellucid" in real.read_text()
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert not [p for p in tmp_path.iterdir() if "pellucid-tmp" in p.name]


def test_backup_names_do_not_collide(tmp_path):
    path = sample(tmp_path, "containers-no-engine.conf")
    for _ in range(3):
        Path(files.backup_path(str(path))).write_text("x")
    assert len(backups(path)) == 3


def test_unknown_client_is_refused():
    with pytest.raises(InstallError, match="unknown client"):
        clients.install("lxc", "/nonexistent", EXE)


def test_relative_runtime_path_is_refused(tmp_path):
    with pytest.raises(InstallError, match="absolute"):
        clients.install("docker", str(tmp_path / "daemon.json"), "bin/pellucid")


def test_cli_config_after_install_is_the_engines_and_before_it_pellucids():
    args = cli.parse(["--config", "/etc/pellucid/x.toml", "install", "docker", "--config", "/tmp/d.json",
                      "--default", "--dry-run", "--reload"])
    assert (args.client, args.config, args.target_config) == ("docker", "/etc/pellucid/x.toml", "/tmp/d.json")
    assert args.default and args.dry_run and args.reload and args.runtime_path == ""
    args = cli.parse(["uninstall", "podman"])
    assert (args.client, args.target_config, args.dry_run) == ("podman", "", False)


def test_cli_install_prints_the_runtimeclass_and_is_idempotent(tmp_path, capsys):
    path = tmp_path / "config.toml"
    argv = ["install", "containerd", "--config", str(path), "--runtime-path", EXE]
    assert cli.main(argv) == 0
    first = capsys.readouterr().out
    assert "kind: RuntimeClass" in first and "handler: pellucid" in first and "written" in first
    assert cli.main(argv) == 0
    assert "nothing changed" in capsys.readouterr().out


def test_cli_reload_for_another_engine_is_refused_before_any_change(tmp_path):
    path = tmp_path / "containers.conf"
    assert cli.main(["install", "podman", "--config", str(path), "--runtime-path", EXE, "--reload"]) == 1
    assert not path.exists()


def test_runtimeclass_overhead_counts_base_vm_and_host_side():
    cfg = Config(hypervisor=HypervisorConfig(vcpus=2, memory_mib=512))
    assert runtimeclass.overhead(cfg, tcg=False) == (500, 512 + runtimeclass.HOST_MIB)
    assert runtimeclass.overhead(cfg, tcg=True) == (500, 512 + runtimeclass.HOST_MIB + runtimeclass.TCG_CACHE_MIB)
    text = runtimeclass.manifest(500, 576, "why")
    assert text.splitlines()[:3] == ["# why", "apiVersion: node.k8s.io/v1", "kind: RuntimeClass"]
    assert '    cpu: "500m"' in text and '    memory: "576Mi"' in text and "handler: pellucid" in text


def test_forced_accelerator_decides_tcg_without_a_probe():
    assert runtimeclass.uses_tcg(Config(hypervisor=HypervisorConfig(accelerator="tcg")))[0]
    assert not runtimeclass.uses_tcg(Config(hypervisor=HypervisorConfig(accelerator="kvm")))[0]
