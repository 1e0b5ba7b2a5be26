"""Every bad input gets one runc-style error line (no traceback), a non-zero exit, and leaves
nothing behind: a table of bad ids, flags, config.json fields, bundles, sockets and state files,
each run through the real CLI (none reaches a VM boot)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pellucid.oci.default_spec import default_spec
from pellucid.mountinfo import mounts_under

REPO = Path(__file__).resolve().parents[2]
LONG = "x" * 300


def config_with(**changes) -> dict:
    """The default spec with changes by dotted path (None deletes)."""
    config = default_spec()
    config["process"]["terminal"] = False
    for path, value in changes.items():
        *parents, last = path.split("__")
        obj = config
        for key in parents:
            obj = obj.setdefault(key, {})
        if value is None:
            obj.pop(last, None)
        else:
            obj[last] = value
    return config


def bundle(config: object = None, rootfs: str = "dir", raw: str | None = None):
    """A bundle maker for the table: ``config`` (a dict, default the default spec) or ``raw`` text."""
    def make(tmp: Path) -> str:
        path = tmp / "bundle"
        path.mkdir()
        if rootfs == "dir":
            (path / "rootfs").mkdir()
        elif rootfs == "file":
            (path / "rootfs").write_text("")
        if raw is not None:
            (path / "config.json").write_text(raw)
        elif config != "none":
            (path / "config.json").write_text(json.dumps(config if config is not None else config_with()))
        return str(path)
    return make


def state_file(content: str, id: str = "c1"):
    """A container directory whose state.json is ``content``."""
    def make(root: Path) -> None:
        d = root / id
        d.mkdir(parents=True, mode=0o700)
        (d / "lock").write_text("")
        (d / "state.json").write_text(content)
    return make


def create(id: str = "c1", *flags: str, make=None):
    return ("create", *flags, "--bundle", "{bundle}", id), make or bundle()


# (name, argv, bundle maker or None, state maker or None, exit code, message)
CASES = [
    # ids
    ("id leading dot", ("state", ".x"), None, None, 1, "invalid container id format: .x"),
    ("id leading dots", ("state", "..x"), None, None, 1, "invalid container id format: ..x"),
    ("id dotdot", ("delete", ".."), None, None, 1, "invalid container id format: .."),
    ("id slash", ("kill", "a/b", "KILL"), None, None, 1, "invalid container id format: a/b"),
    ("id escape", ("delete", "--force", "../etc"), None, None, 1, "invalid container id format: ../etc"),
    ("id blank", ("start", "a b"), None, None, 1, "invalid container id format: a b"),
    ("id empty", ("state", ""), None, None, 1, "container id cannot be empty"),
    ("id non-ascii", ("state", "é"), None, None, 1, "invalid container id format: é"),
    ("id newline", ("state", "a\nb"), None, None, 1, "invalid container id format: 'a\\nb'"),
    ("id too long", create(LONG)[0], bundle(), None, 1, "longer than 255 characters"),
    ("sandbox id", *create(make=bundle(config_with(annotations={
        "io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "../x"}))), None, 1,
     "invalid container id format: ../x"),
    # flags
    ("cpu-quota", ("update", "--cpu-quota", "abc", "c1"), None, None, 1,
     "invalid value 'abc' for flag --cpu-quota: not an integer"),
    ("cpu-period", ("update", "--cpu-period", "-5", "c1"), None, None, 1, "flag --cpu-period: must be between 0"),
    ("memory", ("update", "--memory", "lots", "c1"), None, None, 1, "invalid value 'lots' for flag --memory"),
    ("pids-limit", ("update", "--pids-limit", "-5", "c1"), None, None, 1, "flag --pids-limit: must be between -1"),
    ("cpuset", ("update", "--cpuset-cpus", "3-1", "c1"), None, None, 1, "flag --cpuset-cpus: not a list"),
    ("blkio", ("update", "--blkio-weight", "5", "c1"), None, None, 1, "flag --blkio-weight: must be between 10"),
    ("resources file", ("update", "-r", "/nonexistent/r.json", "c1"), None, None, 1, "cannot read /nonexistent"),
    ("exec gid", ("exec", "-g", "x", "c1", "sh"), None, None, 1,
     "invalid value 'x' for flag --additional-gids: not an integer"),
    ("exec user", ("exec", "-u", "root", "c1", "sh"), None, None, 1, "invalid value 'root' for flag --user"),
    ("exec cwd", ("exec", "--cwd", "tmp", "c1", "sh"), None, None, 1, "flag --cwd: must be an absolute path"),
    ("exec env", ("exec", "-e", "NOEQUALS", "c1", "sh"), None, None, 1, "invalid value 'NOEQUALS' for flag --env"),
    ("exec process", ("exec", "--process", "/nonexistent/p.json", "c1"), None, None, 1,
     "open /nonexistent/p.json: no such file or directory"),
    ("exec no command", ("exec", "c1"), None, None, 1, "exec needs a command"),
    ("interval", ("events", "--interval", "abc", "c1"), None, None, 1, "invalid value 'abc' for flag --interval"),
    ("interval zero", ("events", "--interval", "0s", "c1"), None, None, 1, "must be greater than 0"),
    ("signal name", ("kill", "c1", "BOGUS"), None, None, 1, "invalid signal 'BOGUS'"),
    ("signal number", ("kill", "c1", "99"), None, None, 1, "invalid signal '99'"),
    ("preserve-fds", create("c1", "--preserve-fds", "x")[0], bundle(), None, 1,
     "invalid value 'x' for flag --preserve-fds"),
    ("preserve-fds n", create("c1", "--preserve-fds", "2")[0], bundle(), None, 1, "--preserve-fds is not supported"),
    ("ps format", ("ps", "--format", "xml", "c1"), None, None, 1, "invalid value 'xml' for flag --format"),
    ("list format", ("list", "--format", "xml"), None, None, 1, "invalid value 'xml' for flag --format"),
    ("log format", ("--log-format", "xml", "state", "c1"), None, None, 2, "invalid value 'xml' for flag --log-format"),
    ("unknown flag", ("state", "--bogus", "c1"), None, None, 2, "flag provided but not defined: --bogus"),
    ("flag value", ("create", "--bundle"), None, None, 2, "flag needs an argument: --bundle"),
    ("unknown command", ("frobnicate",), None, None, 2, "no such command: frobnicate"),
    ("missing id", ("state",), None, None, 2, "state: missing ID"),
    ("extra argument", ("state", "c1", "c2"), None, None, 2, "state: unexpected argument c2"),
    # config.json fields
    ("oci version", *create(make=bundle(config_with(ociVersion="2.0.0"))), None, 1, 'unsupported OCI version "2.0.0"'),
    ("args empty", *create(make=bundle(config_with(process__args=[]))), None, 1, "process.args must not be empty"),
    ("args kind", *create(make=bundle(config_with(process__args="sh"))), None, 1, "process.args must be an array"),
    ("cwd relative", *create(make=bundle(config_with(process__cwd="tmp"))), None, 1,
     'process.cwd must be an absolute path, not "tmp"'),
    ("env", *create(make=bundle(config_with(process__env=["NOEQUALS"]))), None, 1, 'process.env[0] must be "NAME=value"'),
    ("uid", *create(make=bundle(config_with(process__user={"uid": -1, "gid": 0}))), None, 1,
     "process.user.uid must be an integer from 0 to 4294967295"),
    ("root path", *create(make=bundle(config_with(root__path=None))), None, 1, "root.path must be specified"),
    ("mount kind", *create(make=bundle(config_with(mounts=["/x"]))), None, 1, "mounts[0] must be an object"),
    ("namespace", *create(make=bundle(config_with(linux__namespaces=[{"type": "bogus"}]))), None, 1,
     'unknown namespace type "bogus"'),
    ("hook path", *create(make=bundle(config_with(hooks={"prestart": [{"path": "true"}]}))), None, 1,
     'hooks.prestart[0].path must be an absolute path, not "true"'),
    ("container type", *create(make=bundle(config_with(annotations={"io.kubernetes.cri.container-type": "pod"}))),
     None, 1, 'unknown container type "pod"'),
    ("host netns", *create(make=bundle(config_with(linux__namespaces=[
        {"type": "network", "path": "/proc/1/ns/net"}]))), None, 1, "cannot join"),
    ("missing sandbox", *create(make=bundle(config_with(annotations={
        "io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "nopod"}))), None, 1,
     "sandbox nopod of container c1 does not exist"),
    ("nested json", *create(make=bundle(raw="[" * 100000)), None, 1, "config.json: invalid JSON"),
    # bundles
    ("no bundle", ("create", "--bundle", "/nonexistent/bundle", "c1"), None, None, 1,
     "bundle /nonexistent/bundle: no such file or directory"),
    ("bundle file", ("create", "--bundle", "/etc/hostname", "c1"), None, None, 1, "bundle /etc/hostname: not a directory"),
    ("no config", *create(make=bundle("none")), None, 1, "config.json: no such file or directory"),
    ("config not json", *create(make=bundle(raw="{not json")), None, 1, "config.json: invalid JSON"),
    ("config a list", *create(make=bundle(raw="[]")), None, 1, "config.json: invalid JSON: not an object"),
    ("no rootfs", *create(make=bundle(rootfs="none")), None, 1, "invalid rootfs: stat"),
    ("rootfs a file", *create(make=bundle(rootfs="file")), None, 1, "is not a directory"),
    # sockets and terminals
    ("tty no socket", *create(make=bundle(config_with(process__terminal=True))), None, 1,
     "cannot allocate tty if pellucid will detach without setting console socket"),
    ("socket no tty", *create("c1", "--console-socket", "/nonexistent.sock"), None, 1,
     "cannot use console socket if pellucid will not detach or allocate tty"),
    # state files
    ("state corrupt", ("state", "c1"), None, state_file("{not json"), 1, "corrupt state file"),
    ("state other id", ("state", "c1"), None, state_file('{"id": "c2"}'), 1, "it names container 'c2'"),
    ("state kind", ("state", "c1"), None, state_file('{"id": "c1", "kind": "vm"}'), 1, "corrupt state file"),
    ("state field", ("kill", "c1", "KILL"), None, state_file('{"id": "c1", "pid": "many"}'), 1, "corrupt state file"),
    ("state list", ("list",), None, state_file("[]"), 1, "corrupt state file"),
    ("state exists", *create(), state_file('{"id": "c1"}'), 1, "container with id exists: c1"),
    ("no container", ("state", "nope"), None, None, 1, "container does not exist"),
    ("config file", ("--config", "/nonexistent/p.toml", "create", "--bundle", "{bundle}", "c1"), bundle(), None, 1,
     "configuration file /nonexistent/p.toml does not exist"),
    ("config value", ("--config", "{bundle}/config.json", "create", "--bundle", "{bundle}", "c1"), bundle(), None, 1,
     "config.json"),
    ("root a file", ("--root", "/etc/hostname", "create", "--bundle", "{bundle}", "c1"), bundle(), None, 1,
     "--root /etc/hostname: not a directory"),
]


def tree(path: Path) -> list[tuple[str, str]]:
    out = []
    for dirpath, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(dirpath, name)
            out.append((os.path.relpath(full, path), Path(full).read_text() if name in files else ""))
    return sorted(out)


def test_the_table_is_large_enough():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name, argv, make_bundle, make_state, code, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, name, argv, make_bundle, make_state, code, message):
    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    if make_state:
        make_state(root)
    path = make_bundle(tmp_path) if make_bundle else ""
    config = tmp_path / "pellucid.toml"
    config.write_text("")
    before, hostname = tree(root), Path("/etc/hostname").stat()
    argv = [a.replace("{bundle}", path) for a in argv]
    if "--root" not in argv:
        argv = ["--root", str(root), *argv]
    out = subprocess.run([sys.executable, "-m", "pellucid.cli", "--log", str(tmp_path / "log"), "--log-format",
                          "json", *argv], capture_output=True, text=True, timeout=60, cwd=REPO,
                         env={**os.environ, "PELLUCID_CONFIG": str(config)})
    assert out.returncode == code, out.stderr
    assert message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stdout == ""
    assert tree(root) == before, "something was left behind (or changed)"
    assert not mounts_under(str(tmp_path))
    assert Path("/etc/hostname").stat().st_mode == hostname.st_mode
