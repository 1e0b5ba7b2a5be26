"""The `pellucid` command: parse, call one library function, print. Command modules load lazily
so that the commands a container manager calls most (state, kill, delete) import little."""

from __future__ import annotations

import argparse
import sys

from . import __version__, log
from .errors import PellucidError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pellucid", description="An OCI runtime that runs each container in a VM.")
    p.add_argument("--root", default="/run/pellucid", help="root directory for container state")
    p.add_argument("--log", default="", help="log file (default: none)")
    p.add_argument("--log-format", default="text", choices=("text", "json"))
    p.add_argument("--debug", action="store_true")
    p.add_argument("--config", default=None, help="pellucid configuration file (TOML)")
    p.add_argument("-v", "--version", action="store_true")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser("check", help="check that this host can run pellucid, with a real VM boot")
    c.add_argument("--json", action="store_true")
    c.add_argument("--cached", action="store_true", help="reuse the cached accelerator probe")

    c = sub.add_parser("env", help="print the configuration in effect and the guest assets")
    c.add_argument("--json", action="store_true")

    c = sub.add_parser("assets", help="build the guest kernel and root image (cached by input hash)")
    c.add_argument("action", choices=("build",))

    sub.add_parser("version", help="print the version")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    log.setup(args.log, args.log_format, args.debug)
    if args.version or args.command == "version":
        from .commands.info import version
        return version()
    if not args.command:
        _parser().print_help()
        return 0
    try:
        if args.command == "check":
            from .commands.info import check
            return check(args)
        if args.command == "env":
            from .commands.info import env
            return env(args)
        if args.command == "assets":
            from .commands.info import assets
            return assets(args)
    except PellucidError as err:
        log.error(f"pellucid: {err}")
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
