"""Bad input gets a clear error in runc's manner, a non-zero exit, and leaves nothing behind
(the `root` fixture checks for QEMU processes, mounts and state directories after each test)."""

from __future__ import annotations

import json

import pytest

from .oci_client import become_subreaper, spawn, wait_exit


def failing(runtime, *args, message: str):
    out = runtime(*args, check=False)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr
    entries = [json.loads(line) for line in runtime.log.read_text().splitlines()]  # --log: JSON lines
    assert any(e["level"] == "error" and message in e["msg"] for e in entries)
    return out


def test_bundle_errors(runtime, make_bundle, tmp_path):
    failing(runtime, "create", "--bundle", str(tmp_path / "nope"), "x1", message="nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    failing(runtime, "create", "--bundle", str(empty), "x2", message="config.json: no such file or directory")
    bad = make_bundle(["true"])
    (bad / "config.json").write_text("{not json")
    failing(runtime, "create", "--bundle", str(bad), "x3", message="config.json")
    old = make_bundle(["true"], ociVersion="2.0.0")
    failing(runtime, "create", "--bundle", str(old), "x4", message='unsupported OCI version "2.0.0"')


@pytest.mark.parametrize("bad_id", ["a/b", "..", "x" * 1025, ""])
def test_invalid_ids(runtime, make_bundle, bad_id):
    out = runtime("create", "--bundle", str(make_bundle(["true"])), bad_id, check=False)
    assert out.returncode != 0 and "container id" in out.stderr


def test_missing_container(runtime):
    for cmd in (("state", "ghost"), ("start", "ghost"), ("kill", "ghost", "9"), ("delete", "ghost"),
                ("pause", "ghost"), ("ps", "ghost"), ("exec", "ghost", "true")):
        failing(runtime, *cmd, message="container does not exist")
    assert runtime("delete", "--force", "ghost").returncode == 0


@pytest.mark.vm
def test_duplicate_id_and_wrong_states(runtime, make_bundle, tmp_path):
    become_subreaper()
    bundle = make_bundle(["sleep", "1000"])
    out = spawn(runtime, "create", "--bundle", str(bundle), "--pid-file", str(tmp_path / "p"), "dup")
    assert out.returncode == 0, runtime.log.read_text()
    failing(runtime, "create", "--bundle", str(bundle), "dup", message="container with id exists: dup")
    runtime("start", "dup")
    failing(runtime, "start", "dup", message="cannot start an already running container")
    failing(runtime, "delete", "dup", message="not stopped: running")
    runtime("kill", "dup", "KILL")
    wait_exit(int((tmp_path / "p").read_text()))
    failing(runtime, "kill", "dup", "KILL", message="container not running")
    failing(runtime, "start", "dup", message="cannot start a container that has stopped")
    runtime("delete", "dup")


@pytest.mark.vm
def test_a_container_whose_process_cannot_start_leaves_nothing(runtime, make_bundle, tmp_path):
    bundle = make_bundle(["/no/such/binary"])
    out = spawn(runtime, "create", "--bundle", str(bundle), "--pid-file", str(tmp_path / "p"), "nobin")
    assert out.returncode != 0
    assert "/no/such/binary" in runtime.log.read_text()
    assert runtime("state", "nobin", check=False).returncode != 0


def test_preserved_fds_cannot_cross_into_a_vm(runtime, make_bundle):
    failing(runtime, "create", "--preserve-fds", "2", "--bundle", str(make_bundle(["true"])), "pfds",
            message="--preserve-fds is not supported")
