"""Fixtures for tests that boot real VMs: a runtime configuration with generous timeouts (TCG on
two shared cores and the guest console written to each VM's console.log), busybox bundles, the
pellucid CLI driven as containerd's shim drives runc, and a check after every test that nothing was
left behind. On failure, the VM's logs are printed, and the state directory (VM logs and console
included) and the runtime's --log are kept (tests/evidence.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from pellucid.vm import cloning
from pellucid.vm import template as tpl
from tests.clients import harness
from tests.evidence import keep_on_failure

REPO = Path(__file__).resolve().parents[2]
PELLUCID = str(REPO / ".venv/bin/pellucid")


def qemu_pids(under: Path | str = "") -> set[int]:
    """QEMU processes; with ``under``, only those of VMs whose directory is below that path
    (other work on the machine may run VMs of its own)."""
    out = subprocess.run(["pgrep", "-f", f"qemu-system.*-pidfile {under}" if under else "qemu-system"],
                         capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


TEMPLATES = os.environ.get("PELLUCID_TEST_TEMPLATES", "1") != "0"  # 0: every VM boots cold


@pytest.fixture(scope="session")
def template_dir():
    """The session's own template store on tmpfs (templates are built on first need), removed afterwards
    as `pellucid template remove` removes templates: pellucid's cgroup for their builds goes with the last."""
    path = tempfile.mkdtemp(prefix="pellucid-test-templates-", dir="/dev/shm")
    yield path
    for t in tpl.list_templates(path):
        tpl.remove(path, t.key)
    cloning.release_cgroups(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def config_file(tmp_path_factory, template_dir) -> Path:
    """The default configuration, but with boot timeouts that survive many VMs booting at once under TCG,
    the guest's console (kernel messages included) in each VM's console.log, for a failure's evidence,
    and the session's template store (or, with PELLUCID_TEST_TEMPLATES=0, no templates: cold boots)."""
    path = tmp_path_factory.mktemp("config") / "pellucid.toml"
    text = "[hypervisor]\nboot_timeout = 240\ndebug_console = true\n"
    text += f'templates = true\ntemplate_dir = "{template_dir}"\n' if TEMPLATES else "templates = false\n"
    assets = os.environ.get("PELLUCID_TEST_ASSETS_DIR")  # a checkout whose guest code differs builds its own
    if assets:
        text += f'[assets]\ndir = "{assets}"\n'
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def busybox_template(tmp_path_factory) -> Path:
    return harness.busybox_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")


@pytest.fixture
def root(tmp_path, request) -> Path:
    """The runtime's --root for this test; after it, no container, mount or QEMU may remain."""
    path = tmp_path / "root"
    keep_on_failure(request.node, path)
    yield path
    leftovers = [p for p in (path.iterdir() if path.exists() else []) if not p.name.startswith(".")]
    mounts = harness.mounts_under(tmp_path)
    deadline = time.monotonic() + 10
    graves = path / ".graves"  # deleted containers whose VM's exit a detached reaper waits for
    while (qemu_pids(tmp_path) or (graves.exists() and any(graves.iterdir()))) and time.monotonic() < deadline:
        time.sleep(0.1)
    unreaped = [p.name for p in graves.iterdir()] if graves.exists() else []
    stray = qemu_pids(tmp_path)
    for pid in stray:
        os.kill(pid, 9)
    harness.unmount_all_under(tmp_path)
    assert not stray, f"QEMU processes left behind: {stray}"
    assert not mounts, f"mounts left behind: {mounts}"
    assert not leftovers, f"containers left behind: {[p.name for p in leftovers]}"
    assert not unreaped, f"deleted containers not wholly removed: {unreaped}"


class Runtime:
    """The pellucid CLI with the global flags containerd passes (--root, --log, --log-format json)."""

    def __init__(self, root: Path, config: Path, log: Path) -> None:
        self.root, self.config, self.log = root, config, log

    def argv(self, *args: str) -> list[str]:
        return [PELLUCID, "--root", str(self.root), "--log", str(self.log), "--log-format", "json",
                "--config", str(self.config), *args]

    def __call__(self, *args: str, check: bool = True, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("stdin", subprocess.DEVNULL)
        out = subprocess.run(self.argv(*args), text=True, timeout=timeout, **kw)
        if check and out.returncode != 0:
            raise AssertionError(f"pellucid {' '.join(args)} failed ({out.returncode}): {out.stderr}"
                                 f"{self.evidence()}")
        return out

    def state(self, id: str) -> dict:
        return json.loads(self("state", id).stdout)

    def vm_info(self, id: str) -> dict:
        """The VM's info as the container's state keeps it (pellucid.host_messages.VMInfo)."""
        return json.loads((self.root / id / "state.json").read_text())["vm"]

    def evidence(self) -> str:
        """The VMs' monitor logs and consoles, for a failure message."""
        parts = []
        for path in sorted(self.root.glob("*/vm/*.log")) if self.root.exists() else []:
            parts.append(f"\n--- {path}:\n{path.read_text(errors='replace')[-3000:]}")
        return "".join(parts)

    def wait_reaped(self, timeout: float = 120) -> None:
        """Until what ``delete`` left to its detached reaper (the VM's exit, the cgroup, the
        directory) is done: ``delete`` returns before the VM has exited."""
        graves = self.root / ".graves"
        deadline = time.monotonic() + timeout
        while graves.exists() and any(graves.iterdir()):
            assert time.monotonic() < deadline, f"not reaped within {timeout} s: {list(graves.iterdir())}"
            time.sleep(0.05)

    def cleanup(self) -> None:
        if not self.root.exists():
            return
        for d in self.root.iterdir():
            if not d.name.startswith("."):
                self("delete", "--force", d.name, check=False)


@pytest.fixture
def runtime(root, config_file, tmp_path, request) -> Runtime:
    rt = Runtime(root, config_file, tmp_path / "runtime.log")
    keep_on_failure(request.node, rt.log)
    yield rt
    rt.cleanup()


@pytest.fixture
def make_bundle(tmp_path, busybox_template):
    """make_bundle(args, **process overrides) -> a bundle directory with a busybox rootfs."""
    count = 0

    def make(args: list[str], terminal: bool = False, **changes) -> Path:
        nonlocal count
        count += 1
        bundle = tmp_path / f"bundle{count}"
        shutil.copytree(busybox_template, bundle / "rootfs", symlinks=True)
        from pellucid.oci.default_spec import default_spec
        config = default_spec()
        config["process"].update(args=args, terminal=terminal)
        config["root"]["readonly"] = False
        for key, value in changes.items():
            config[key] = value
        (bundle / "config.json").write_text(json.dumps(config))
        return bundle

    return make


def host_boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
