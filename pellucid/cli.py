"""The `pellucid` command: parse, call one library function, print.

containerd, Docker and conmon start the runtime several times per container, so this module
imports almost nothing: a small parser of runc's command lines (global flags, then a command
with its flags in any order, `--flag value` or `--flag=value`) instead of argparse, and each
command's module loaded only when it runs.
"""

from __future__ import annotations

import sys

from . import log
from .errors import PellucidError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

BOOL, VALUE, MANY = "bool", "value", "many"

# flag -> (destination, kind, default); short aliases map to the same tuple.
GLOBAL_FLAGS = {
    "--root": ("root", VALUE, "/run/pellucid"),
    "--log": ("log", VALUE, ""),
    "--log-format": ("log_format", VALUE, "text"),
    "--debug": ("debug", BOOL, False),
    "--systemd-cgroup": ("systemd_cgroup", BOOL, False),  # cgroupsPath is "slice:prefix:name"
    "--rootless": ("rootless", VALUE, "false"),  # accepted: pellucid runs as root
    "--config": ("config", VALUE, None),
    "--version": ("version", BOOL, False),
    "-v": ("version", BOOL, False),
    "--help": ("help", BOOL, False),
    "-h": ("help", BOOL, False),
}

_CREATE = {"--bundle": ("bundle", VALUE, "."), "-b": ("bundle", VALUE, "."), "--pid-file": ("pid_file", VALUE, ""),
           "--console-socket": ("console_socket", VALUE, ""), "--no-pivot": ("no_pivot", BOOL, False),
           "--no-new-keyring": ("no_new_keyring", BOOL, False), "--preserve-fds": ("preserve_fds", VALUE, "0")}
_FORMAT = {"--format": ("format", VALUE, "table"), "-f": ("format", VALUE, "table")}
_JSON = {"--json": ("json", BOOL, False)}
# `--config` after install/uninstall is the engine's config file; before the command, pellucid's own.
_UNINSTALL = {"--config": ("target_config", VALUE, ""), "--dry-run": ("dry_run", BOOL, False),
              "--reload": ("reload", BOOL, False)}
_INSTALL = {**_UNINSTALL, "--default": ("default", BOOL, False), "--runtime-path": ("runtime_path", VALUE, "")}

# command -> (module in pellucid.commands, function, positionals, flags, takes the rest as argv, help)
COMMANDS: dict[str, tuple[str, str, tuple[str, ...], dict, bool, str]] = {
    "create": ("container", "create", ("id",), _CREATE, False, "create a container (its VM boots)"),
    "run": ("container", "run", ("id",), {**_CREATE, "--detach": ("detach", BOOL, False), "-d": ("detach", BOOL, False),
                                          "--keep": ("keep", BOOL, False)}, False, "create and start a container"),
    "start": ("container", "start", ("id",), {}, False, "start a created container"),
    "state": ("container", "state", ("id",), {}, False, "print a container's state as JSON"),
    "kill": ("container", "kill", ("id", "signal?"), {"--all": ("all", BOOL, False), "-a": ("all", BOOL, False)},
             False, "send a signal (default SIGTERM) to a container's init process"),
    "delete": ("container", "delete", ("id",), {"--force": ("force", BOOL, False), "-f": ("force", BOOL, False)},
               False, "delete a container and its VM"),
    "exec": ("container", "exec_", ("id",), {
        "--process": ("process", VALUE, ""), "-p": ("process", VALUE, ""), "--tty": ("tty", BOOL, False),
        "-t": ("tty", BOOL, False), "--console-socket": ("console_socket", VALUE, ""),
        "--detach": ("detach", BOOL, False), "-d": ("detach", BOOL, False), "--pid-file": ("pid_file", VALUE, ""),
        "--cwd": ("cwd", VALUE, ""), "--env": ("env", MANY, None), "-e": ("env", MANY, None),
        "--user": ("user", VALUE, ""), "-u": ("user", VALUE, ""), "--additional-gids": ("additional_gids", MANY, None),
        "-g": ("additional_gids", MANY, None), "--no-new-privs": ("no_new_privs", BOOL, False),
        "--preserve-fds": ("preserve_fds", VALUE, "0")}, True, "run a process in a container"),
    "ps": ("container", "ps", ("id",), _FORMAT, True, "list a container's processes"),
    "list": ("container", "list_", (), {**_FORMAT, "--quiet": ("quiet", BOOL, False), "-q": ("quiet", BOOL, False)},
             False, "list containers"),
    "pause": ("container", "pause", ("id",), {}, False, "pause a container's processes"),
    "resume": ("container", "resume", ("id",), {}, False, "resume a paused container"),
    "events": ("container", "events", ("id",), {"--stats": ("stats", BOOL, False), "--interval": ("interval", VALUE, "5s")},
               False, "print a container's stats as events"),
    "update": ("container", "update", ("id",), {
        "--resources": ("resources", VALUE, ""), "-r": ("resources", VALUE, ""),
        **{f"--{name}": (name.replace("-", "_"), VALUE, None) for name in (
            "memory", "memory-reservation", "memory-swap", "cpu-quota", "cpu-period", "cpu-shares", "pids-limit",
            "cpuset-cpus", "cpuset-mems", "kernel-memory", "blkio-weight")}}, False,
        "update a container's resource limits"),
    "spec": ("container", "spec", (), {"--bundle": ("bundle", VALUE, "."), "-b": ("bundle", VALUE, "."),
                                       "--rootless": ("rootless_spec", BOOL, False)}, False,
             "write a default config.json"),
    "features": ("container", "features", (), {}, False, "print the features pellucid supports, as JSON"),
    "check": ("info", "check", (), {**_JSON, "--cached": ("cached", BOOL, False)}, False,
              "check that this host can run pellucid, with a real VM boot"),
    "env": ("info", "env", (), _JSON, False, "print the configuration in effect and the guest assets"),
    "assets": ("info", "assets", ("action",), {}, False, "build the guest kernel and root image: `assets build`"),
    "version": ("info", "version", (), {}, False, "print the version"),
    "template": ("template", "template", ("action", "key?"), {
        **_JSON, "--dir": ("dir", VALUE, ""), "--memory": ("memory", VALUE, ""), "--vcpus": ("vcpus", VALUE, "")},
        False, "VM templates clones start from: `template list|build|verify|remove [KEY]`"),
    "install": ("install", "install", ("client",), _INSTALL, False,
                "make docker, containerd, crio or podman able to run pellucid (--default: as their default)"),
    "uninstall": ("install", "uninstall", ("client",), _UNINSTALL, False,
                  "take out of docker, containerd, crio or podman what `install` put in"),
    "ksm": ("ksm", "ksm", (), {**_JSON, "--once": ("once", BOOL, False), "--restore": ("restore", BOOL, False),
                               "--interval": ("interval", VALUE, "5")}, False,
            "throttle the host's KSM for pellucid's VMs (a daemon; see contrib/systemd)"),
}


class Args:
    """The parsed command line: attributes named after the flags' destinations."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


class UsageError(PellucidError):
    pass


def _defaults(flags: dict) -> dict[str, Any]:
    return {dest: ([] if kind == MANY else default) for dest, kind, default in flags.values()}


def _take_flag(words: list[str], i: int, flags: dict, values: dict[str, Any]) -> int:
    """Consume the flag at words[i] (and its value); returns the next index."""
    name, eq, inline = words[i].partition("=")
    spec = flags.get(name)
    if spec is None and not name.startswith("--"):
        spec = flags.get("-" + name)  # urfave/cli, runc's parser, takes -root for --root
    if spec is None:
        raise UsageError(f"flag provided but not defined: {name}")
    dest, kind, _ = spec
    if kind == BOOL:
        values[dest] = inline.lower() not in ("false", "0") if eq else True
        return i + 1
    if eq:
        value, i = inline, i + 1
    elif i + 1 < len(words):
        value, i = words[i + 1], i + 2
    else:
        raise UsageError(f"flag needs an argument: {name}")
    if kind == MANY:
        values[dest].append(value)
    else:
        values[dest] = value
    return i


def parse(argv: list[str]) -> Args:
    values = _defaults(GLOBAL_FLAGS)
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
        i = _take_flag(argv, i, GLOBAL_FLAGS, values)
    if i == len(argv):
        return Args(command="version" if values["version"] else "", **values)
    command = argv[i]
    if command not in COMMANDS:
        raise UsageError(f"no such command: {command}")
    _, _, positionals, flags, rest, _ = COMMANDS[command]
    values.update(_defaults(flags), command=command, argv=[])
    found: list[str] = []
    i += 1
    while i < len(argv):
        word = argv[i]
        if word == "--":
            found += argv[i + 1:]
            break
        if word.startswith("-") and word != "-" and not (rest and len(found) >= len(positionals)):
            if word in ("-h", "--help"):
                values["help"] = True
                i += 1
                continue
            i = _take_flag(argv, i, flags, values)
            continue
        found.append(word)
        i += 1
    required = [p for p in positionals if not p.endswith("?")]
    if values["help"]:
        return Args(**values)
    if len(found) < len(required):
        raise UsageError(f"{command}: missing {' '.join(p.upper() for p in required[len(found):])}")
    if len(found) > len(positionals) and not rest:
        raise UsageError(f"{command}: unexpected argument {found[len(positionals)]}")
    for j, name in enumerate(positionals):
        values[name.rstrip("?")] = found[j] if j < len(found) else None
    values["argv"] = found[len(positionals):]
    return Args(**values)


def usage(command: str = "") -> str:
    if command:
        _, _, positionals, flags, rest, help = COMMANDS[command]
        args = " ".join(p.rstrip("?").upper() for p in positionals) + (" [COMMAND...]" if rest else "")
        lines = [f"usage: pellucid [global flags] {command} [flags] {args}".rstrip(), "", help, "", "flags:"]
        lines += [f"  {flag}" + ("" if kind == BOOL else " VALUE") for flag, (_, kind, _) in flags.items()]
        return "\n".join(lines)
    lines = ["usage: pellucid [global flags] COMMAND [flags] [args]", "",
             "An OCI runtime that runs each container, or pod, in its own lightweight VM.", "", "commands:"]
    lines += [f"  {name:<10} {spec[5]}" for name, spec in COMMANDS.items()]
    lines += ["", "global flags:"] + [f"  {flag}" for flag in GLOBAL_FLAGS]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    log.guard_stdio()
    try:
        return _run(sys.argv[1:] if argv is None else argv)
    finally:
        log.finish_stdout()


def _run(argv: list[str]) -> int:
    try:
        args = parse(argv)
    except UsageError as err:
        log.error(f"pellucid: {err}")
        return 2
    if args.log_format not in ("text", "json"):
        log.setup(args.log, "text", args.debug)
        log.error(f"pellucid: invalid value {args.log_format!r} for flag --log-format: use text or json")
        return 2
    log.setup(args.log, args.log_format, args.debug)
    if args.help or not args.command:
        print(usage(args.command if args.help else ""))
        return 0
    module_name, function, *_ = COMMANDS[args.command]
    try:
        if getattr(args, "id", None) is not None:
            from .ids import check
            check(args.id)  # before any path is built from it
        module = __import__(f"pellucid.commands.{module_name}", fromlist=[function])
        return getattr(module, function)(args)
    except PellucidError as err:
        log.error(f"pellucid: {err}")
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except OSError as err:  # writing the output to a broken stdout, among others
        where = f"{err.filename}: " if err.filename else ""
        log.error(f"pellucid: {where}{(err.strerror or str(err)).lower()}")
        return 1
    except (ValueError, UnicodeError) as err:  # bad input that no check caught: still its cause, one line
        import traceback
        log.debug(traceback.format_exc())
        log.error(f"pellucid: invalid input: {err}")
        return 1
    except Exception as err:  # a bug: still an error line in the log, and runc's exit status
        import traceback
        log.debug(traceback.format_exc())
        log.error(f"pellucid: internal error: {type(err).__name__}: {err}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
