"""The CLI parser takes every command line containerd, Docker, ctr and podman sent to runc."""

import re

import pytest

from pellucid import cli
from tests.fixtures import CLIENTS


def recorded_command_lines():
    for argv_file in sorted(CLIENTS.glob("*-argv.txt")):
        for line in argv_file.read_text().splitlines():
            if line.startswith("  "):
                words = re.sub(r"<[A-Z_]+>", "x", line.strip()).split()
                yield pytest.param(words, id=f"{argv_file.stem}:{' '.join(words)[:60]}")


@pytest.mark.parametrize("argv", list(recorded_command_lines()))
def test_every_recorded_client_command_line_parses(argv):
    args = cli.parse(argv)
    assert args.command in cli.COMMANDS or args.command == "version"


def test_containerd_create():
    args = cli.parse(["--root", "/run/r", "--log", "/b/log.json", "--log-format", "json", "create", "--bundle", "/b",
                      "--pid-file", "/b/init.pid", "--console-socket", "/tmp/s", "cid"])
    assert (args.root, args.log, args.log_format, args.command) == ("/run/r", "/b/log.json", "json", "create")
    assert (args.bundle, args.pid_file, args.console_socket, args.id) == ("/b", "/b/init.pid", "/tmp/s", "cid")


def test_flags_in_any_order_and_with_equals():
    a = cli.parse(["exec", "--process", "/p", "--detach", "--pid-file", "/f", "c1"])
    b = cli.parse(["exec", "--pid-file=/f", "--process=/p", "-d", "c1"])
    for args in (a, b):
        assert (args.process, args.pid_file, args.detach, args.id, args.argv) == ("/p", "/f", True, "c1", [])


def test_exec_takes_the_rest_as_the_command():
    args = cli.parse(["exec", "-e", "A=1", "--env", "B=2", "-t", "c1", "sh", "-c", "echo -n hi"])
    assert args.env == ["A=1", "B=2"] and args.tty and args.argv == ["sh", "-c", "echo -n hi"]


def test_kill_signal_is_optional_and_all_is_a_flag():
    assert cli.parse(["kill", "c1"]).signal is None
    args = cli.parse(["kill", "--all", "c1", "9"])
    assert args.all and args.signal == "9"


def test_single_dash_long_flags_as_urfave_takes_them():
    assert cli.parse(["-root", "/r", "state", "c"]).root == "/r"


@pytest.mark.parametrize("argv, message", [
    (["--bogus", "state", "c"], "flag provided but not defined: --bogus"),
    (["frobnicate"], "no such command: frobnicate"),
    (["create"], "create: missing ID"),
    (["kill"], "kill: missing ID"),
    (["state", "a", "b"], "unexpected argument b"),
    (["create", "--bundle"], "flag needs an argument: --bundle"),
])
def test_usage_errors(argv, message):
    with pytest.raises(cli.UsageError, match=message):
        cli.parse(argv)


def test_version_and_help():
    assert cli.parse(["--version"]).command == "version"
    assert cli.parse(["state", "--help"]).help


def test_the_cli_module_imports_no_argparse():
    import subprocess
    import sys
    code = "import sys, pellucid.cli; print('argparse' in sys.modules, 'pellucid.runtime.lifecycle' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
