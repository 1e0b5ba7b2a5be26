"""pellucid installed from its wheel, without the source tree: the wheel built with `pip wheel`
from a copy of the package, installed into a fresh virtual environment of Debian's interpreter,
gives a `pellucid` that works, is as lean on the runtime's path as the checkout's own launcher,
and whose `assets build` finds the guest's sources in the installed package.

The wheel's dependencies (pyroute2, tomlkit) are not fetched (tests use no network): a .pth
file in the new environment adds this checkout's site-packages, which holds them but not
pellucid's code (the checkout's own pellucid is an editable install, a path in a .pth file that
an added directory's .pth files do not bring in).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

import pyroute2
import tomlkit

REPO = Path(__file__).resolve().parents[2]
DEV_VENV = REPO / ".venv"
SYSTEM_PYTHON = "/usr/bin/python3"


def run(argv: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)
    if check:
        assert out.returncode == 0, f"{' '.join(argv)} exited {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv of /usr/bin/python3 with the wheel built from a copy of the package installed."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    shutil.copy(REPO / "pyproject.toml", src)
    shutil.copytree(REPO / "pellucid", src / "pellucid", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # The checkout's setuptools builds it (no build isolation: nothing is downloaded).
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(work / "dist"),
         str(src)], cwd=work)
    wheels = list((work / "dist").glob("pellucid-*.whl"))
    assert len(wheels) == 1, wheels
    env = work / "venv"
    run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", str(env)], cwd=work)
    # The checkout's pip installs into it (`--python`): the launcher it writes is the new environment's.
    run([sys.executable, "-m", "pip", "--python", str(env / "bin/python"), "install", "-q", "--no-deps",
         "--no-index", str(wheels[0])], cwd=work)
    site = Path(run([str(env / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                    cwd=work).stdout.strip())
    deps = {Path(pyroute2.__file__).parents[1], Path(tomlkit.__file__).parents[1]}
    (site / "pellucid-test-deps.pth").write_text("".join(f"{d}\n" for d in sorted(deps)))
    return env


def installed(venv: Path, code: str) -> str:
    """What ``code`` prints, run by the new environment's interpreter outside the checkout."""
    return run([str(venv / "bin/python"), "-I", "-c", code], cwd=venv).stdout


def test_the_installed_package_is_not_the_checkout(venv: Path) -> None:
    """pellucid comes from the new environment's site-packages, with its package data."""
    where = Path(installed(venv, "import pellucid; print(pellucid.__file__)").strip())
    assert where.is_relative_to(venv) and not where.is_relative_to(REPO), where
    assert (where.parent / "build/kernel.config").is_file()


def test_the_command_works(venv: Path, tmp_path: Path) -> None:
    """`pellucid --version`, `env --json` (configuration and assets), and a runtime command's
    runc-style error, from the installed launcher."""
    pellucid = str(venv / "bin/pellucid")
    shebang = Path(pellucid).read_text().splitlines()[0]
    assert shebang.startswith(f"#!{venv}/bin/python"), f"the launcher runs another interpreter: {shebang}"
    version = run([pellucid, "--version"], cwd=tmp_path).stdout
    assert version.startswith("pellucid version ") and "agent protocol:" in version, version
    env = json.loads(run([pellucid, "env", "--json"], cwd=tmp_path).stdout)
    assert env["runtime"]["version"] == version.split()[2] and env["assets"]["kernel_source"], env
    missing = run([pellucid, "--root", str(tmp_path / "root"), "state", "absent"], cwd=tmp_path, check=False)
    assert missing.returncode == 1 and "does not exist" in missing.stderr, missing


def test_install_edits_client_configs(venv: Path, tmp_path: Path) -> None:
    """`install docker` and `install podman` (tomlkit, a dependency) from the installed package."""
    pellucid = str(venv / "bin/pellucid")
    run([pellucid, "install", "docker", "--default", "--config", str(tmp_path / "daemon.json")], cwd=tmp_path)
    assert json.loads((tmp_path / "daemon.json").read_text()) == {
        "runtimes": {"pellucid": {"path": pellucid}}, "default-runtime": "pellucid"}
    run([pellucid, "install", "podman", "--config", str(tmp_path / "containers.conf")], cwd=tmp_path)
    assert tomllib.loads((tmp_path / "containers.conf").read_text()) == {"engine": {"runtimes": {"pellucid": [pellucid]}}}


def test_assets_build_finds_its_sources_in_the_package(venv: Path, tmp_path: Path) -> None:
    """`pellucid assets build` is there, and the guest sources and kernel fragment it builds from
    are the installed package's, the same as the checkout's: it would build the same assets
    (same cache keys). Building them here would take minutes."""
    wrong = run([str(venv / "bin/pellucid"), "assets", "nonsense"], cwd=tmp_path, check=False)
    assert wrong.returncode == 1 and "pellucid assets build" in wrong.stderr, wrong
    probe = ("import json; from pellucid.build import kernel, rootfs; "
             "print(json.dumps([kernel.fragment_text(), rootfs.cache_key({'crun': '1'}), "
             "[str(p) for p in rootfs.agent_sources()]]))")
    fragment, key, sources = json.loads(installed(venv, probe))
    from pellucid.build import kernel, rootfs
    assert fragment == kernel.fragment_text()
    assert key == rootfs.cache_key({"crun": "1"}), "the installed package's guest sources differ from the checkout's"
    assert [Path(p).name for p in sources] == [p.name for p in rootfs.agent_sources()]
    assert all(Path(p).is_relative_to(venv) and Path(p).is_file() for p in sources), sources


def imported_by(launcher: Path, python: Path, root: Path) -> set[str]:
    """The modules `LAUNCHER --root ROOT state absent` imports (the runtime's lean path)."""
    out = run([str(python), "-X", "importtime", str(launcher), "--root", str(root), "state", "absent"],
              cwd=root.parent, check=False)
    return {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")} - {
        "package"}


def test_the_installed_launcher_is_as_lean_as_the_checkouts(venv: Path, tmp_path: Path) -> None:
    """The launcher pip generates imports nothing on the runtime's path that the checkout's own
    launcher (scripts/setup's) does not."""
    assert (DEV_VENV / "bin/pellucid").is_file(), "no .venv/bin/pellucid: run scripts/setup host"
    ours = imported_by(DEV_VENV / "bin/pellucid", DEV_VENV / "bin/python3", tmp_path / "root")
    theirs = imported_by(venv / "bin/pellucid", venv / "bin/python3", tmp_path / "root")
    assert "pellucid.cli" in theirs
    assert theirs - ours == set(), f"the installed launcher imports more: {sorted(theirs - ours)}"
