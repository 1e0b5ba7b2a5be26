"""The evidence plugin (tests/evidence.py) without VMs: what it copies, what it leaves, and its report."""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

from tests import evidence

REPO = Path(__file__).resolve().parents[2]


def test_a_state_directory_is_copied_without_sockets_fifos_links_or_the_share(tmp_path):
    root = tmp_path / "root"
    vm = root / "c1" / "vm"
    (vm / "shared" / "c1" / "rootfs").mkdir(parents=True)
    (vm / "shared" / "c1" / "rootfs" / "secret").write_text("guest files")
    (root / "c1" / "state.json").write_text('{"id": "c1"}')
    (vm / "console.log").write_text("Linux version 6.6\n")
    os.mkfifo(vm / "fifo")  # a FIFO opened for reading would hang the copy
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(vm / "monitor.sock"))
        (vm / "link").symlink_to("/etc/hostname")
        notes = evidence.save([root, tmp_path / "runtime.log"], tmp_path / "out")
    copy = tmp_path / "out" / "root" / "c1"
    assert (copy / "state.json").read_text() == '{"id": "c1"}'
    assert (copy / "vm" / "console.log").read_text() == "Linux version 6.6\n"
    assert os.readlink(copy / "vm" / "link") == "/etc/hostname"
    assert sorted(p.name for p in (copy / "vm").iterdir()) == ["console.log", "link"]
    assert f"runtime.log: {tmp_path / 'runtime.log'} is gone" in notes
    assert any("not entered" in n and n.split()[2] == str(vm / "shared") for n in notes)


def test_a_large_file_keeps_its_tail(tmp_path, monkeypatch):
    monkeypatch.setattr(evidence, "MAX_FILE", 10)
    (tmp_path / "log").write_text("0123456789abcdefghij")
    evidence.save([tmp_path / "log"], tmp_path / "out")
    assert (tmp_path / "out" / "log").read_text() == "abcdefghij"


def test_the_directory_name_is_safe_and_stays_unique_when_shortened(monkeypatch, tmp_path):
    monkeypatch.setenv(evidence.ENV, str(tmp_path))
    named = evidence.evidence_dir("tests/e2e/test_vm.py::test_x[a/b-..]")
    assert named == tmp_path / "tests_e2e_test_vm.py_test_x_a_b-"
    assert evidence.evidence_dir("..") == tmp_path / "test"
    long_a, long_b = (evidence.evidence_dir("t.py::test_" + "x" * 200 + end) for end in "ab")
    assert long_a != long_b and len(long_a.name) < 140


def test_a_failing_test_reports_where_its_evidence_is(tmp_path):
    """A test whose fixture names a file fails: the file is copied before teardown removes it."""
    (tmp_path / "conftest.py").write_text('pytest_plugins = ("tests.evidence",)\n')
    (tmp_path / "test_inner.py").write_text(textwrap.dedent("""
        import pytest
        from tests.evidence import keep_on_failure

        @pytest.fixture
        def log(request, tmp_path):
            path = tmp_path / "daemon.log"
            path.write_text("the daemon said why")
            keep_on_failure(request.node, path)
            yield path
            path.unlink()

        def test_fails(log):
            assert False, "deliberately"

        def test_passes(log):
            pass
    """))
    out_dir = tmp_path / "evidence"
    env = {**os.environ, evidence.ENV: str(out_dir), "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "test_inner.py"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr
    kept = out_dir / "test_inner.py_test_fails"
    assert (kept / "daemon.log").read_text() == "the daemon said why"
    assert f"kept in {kept}" in run.stdout
    assert sorted(p.name for p in out_dir.iterdir()) == ["test_inner.py_test_fails"]  # nothing for the pass
