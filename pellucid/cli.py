"""The `pellucid` command: parse, call one library function, print. Command modules load lazily
so that what a container manager calls most (state, kill, delete) imports little."""

from __future__ import annotations

import argparse
import sys

from . import log
from .errors import PellucidError

# command -> (module in pellucid.commands, function)
COMMANDS = {
    "create": "container", "start": "container", "run": "container", "state": "container",
    "kill": "container", "delete": "container", "exec": "container", "ps": "container",
    "list": "container", "pause": "container", "resume": "container", "events": "container",
    "update": "container", "spec": "container", "features": "container",
    "check": "info", "env": "info", "assets": "info", "version": "info",
}

RENAMED = {"list": "list_", "exec": "exec_"}  # not to shadow Python's builtins in the command modules


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pellucid", description="An OCI runtime that runs each container in a VM.")
    p.add_argument("--root", default="/run/pellucid", help="root directory for container state")
    p.add_argument("--log", default="", help="log file (default: none)")
    p.add_argument("--log-format", default="text", choices=("text", "json"))
    p.add_argument("--debug", action="store_true")
    p.add_argument("--systemd-cgroup", action="store_true", help="accepted for compatibility; the guest's cgroups are pellucid's")
    p.add_argument("--rootless", default="false", help="accepted for compatibility; pellucid runs as root")
    p.add_argument("--config", default=None, help="pellucid configuration file (TOML)")
    p.add_argument("-v", "--version", action="store_true")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def cmd(name: str, help: str, *positional: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help)
        for arg in positional:
            c.add_argument(arg)
        return c

    for name, help in (("create", "create a container (its VM boots)"), ("run", "create and start a container")):
        c = cmd(name, help, "id")
        c.add_argument("-b", "--bundle", default=".")
        c.add_argument("--pid-file", default="")
        c.add_argument("--console-socket", default="")
        c.add_argument("--no-pivot", action="store_true")
        c.add_argument("--no-new-keyring", action="store_true")
        c.add_argument("--preserve-fds", type=int, default=0)
        if name == "run":
            c.add_argument("-d", "--detach", action="store_true")
            c.add_argument("--keep", action="store_true", help="do not delete the container after it exits")
    cmd("start", "start a created container", "id")
    c = cmd("state", "print a container's state as JSON", "id")
    c = cmd("kill", "send a signal to a container's init process", "id")
    c.add_argument("signal", nargs="?", default="SIGTERM")
    c.add_argument("-a", "--all", action="store_true")
    c = cmd("delete", "delete a container and its VM", "id")
    c.add_argument("-f", "--force", action="store_true")
    c = cmd("exec", "run a process in a container", "id")
    c.add_argument("argv", nargs=argparse.REMAINDER, metavar="COMMAND")
    c.add_argument("-p", "--process", default="")
    c.add_argument("-t", "--tty", action="store_true")
    c.add_argument("--console-socket", default="")
    c.add_argument("-d", "--detach", action="store_true")
    c.add_argument("--pid-file", default="")
    c.add_argument("--cwd", default="")
    c.add_argument("-e", "--env", action="append", default=[])
    c.add_argument("-u", "--user", default="")
    c.add_argument("--additional-gids", "-g", action="append", default=[])
    c.add_argument("--no-new-privs", action="store_true")
    c.add_argument("--preserve-fds", type=int, default=0)
    c = cmd("ps", "list a container's processes", "id")
    c.add_argument("-f", "--format", default="table", choices=("table", "json"))
    c.add_argument("ps_args", nargs=argparse.REMAINDER)
    c = cmd("list", "list containers")
    c.add_argument("-f", "--format", default="table", choices=("table", "json"))
    c.add_argument("-q", "--quiet", action="store_true")
    cmd("pause", "pause a container's processes", "id")
    cmd("resume", "resume a paused container", "id")
    c = cmd("events", "print a container's stats as events", "id")
    c.add_argument("--stats", action="store_true", help="print stats once and exit")
    c.add_argument("--interval", default="5s")
    c = cmd("update", "update a container's resource limits", "id")
    c.add_argument("-r", "--resources", default="")
    for flag in ("--memory", "--memory-reservation", "--memory-swap", "--cpu-quota", "--cpu-period", "--cpu-shares",
                 "--pids-limit", "--cpuset-cpus", "--cpuset-mems", "--kernel-memory", "--blkio-weight"):
        c.add_argument(flag, default=None)
    c = cmd("spec", "write a default config.json")
    c.add_argument("-b", "--bundle", default=".")
    c.add_argument("--rootless", action="store_true")
    cmd("features", "print the features pellucid supports, as JSON")

    c = cmd("check", "check that this host can run pellucid, with a real VM boot")
    c.add_argument("--json", action="store_true")
    c.add_argument("--cached", action="store_true", help="reuse the cached accelerator probe")
    c = cmd("env", "print the configuration in effect and the guest assets")
    c.add_argument("--json", action="store_true")
    c = cmd("assets", "build the guest kernel and root image (cached by input hash)")
    c.add_argument("action", choices=("build",))
    cmd("version", "print the version")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    log.setup(args.log, args.log_format, args.debug)
    if args.version:
        args.command = "version"
    if not args.command:
        parser.print_help()
        return 0
    module = __import__(f"pellucid.commands.{COMMANDS[args.command]}", fromlist=["x"])
    try:
        return getattr(module, RENAMED.get(args.command, args.command))(args)
    except PellucidError as err:
        log.error(f"pellucid: {err}")
        return err.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
