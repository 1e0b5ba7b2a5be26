"""Docker: the `pellucid` runtime in dockerd's daemon.json, and a SIGHUP to reload it.

dockerd reloads `runtimes` and `default-runtime` on SIGHUP, so no restart is needed.
"""

from __future__ import annotations

import json
import os
import signal

from . import RUNTIME_NAME, InstallError

DEFAULT_PATH = "/etc/docker/daemon.json"
PID_FILE = "/var/run/docker.pid"
EXECUTABLES = ("dockerd", "docker")
#: files whose presence shows the client is set up here
DETECT_FILES = (DEFAULT_PATH,)
#: where `pellucid check` looks for the runtime
STATUS_FROM = DEFAULT_PATH


def _load(text: str | None, path: str) -> dict:
    if text is None or not text.strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InstallError(f"{path} is not valid JSON ({err}); fix it first: nothing was changed") from None
    if not isinstance(data, dict):
        raise InstallError(f"{path} must hold a JSON object; nothing was changed")
    runtimes = data.get("runtimes", {})
    if not isinstance(runtimes, dict):
        raise InstallError(f"{path}: \"runtimes\" must be an object; nothing was changed")
    return data


def _indent(text: str | None) -> int:
    """The indentation the file uses (its first indented line), 2 if none."""
    for line in (text or "").splitlines()[1:]:
        stripped = line.lstrip(" ")
        if stripped and len(stripped) < len(line):
            return len(line) - len(stripped)
    return 2


def _dump(data: dict, like: str | None) -> str:
    return json.dumps(data, indent=_indent(like)) + "\n"


def install(text: str | None, executable: str, default: bool, path: str = DEFAULT_PATH) -> str | None:
    data = _load(text, path)
    want = {"path": executable}
    runtimes = data.get("runtimes", {})
    unchanged = runtimes.get(RUNTIME_NAME) == want and (not default or data.get("default-runtime") == RUNTIME_NAME)
    if unchanged:
        return text
    data["runtimes"] = {**runtimes, RUNTIME_NAME: want}
    if default:
        data["default-runtime"] = RUNTIME_NAME
    return _dump(data, text)


def uninstall(text: str | None, path: str = DEFAULT_PATH) -> str | None:
    data = _load(text, path)
    runtimes = data.get("runtimes", {})
    if RUNTIME_NAME not in runtimes and data.get("default-runtime") != RUNTIME_NAME:
        return text
    runtimes = {k: v for k, v in runtimes.items() if k != RUNTIME_NAME}
    if runtimes:
        data["runtimes"] = runtimes
    else:
        data.pop("runtimes", None)
    if data.get("default-runtime") == RUNTIME_NAME:
        del data["default-runtime"]
    return _dump(data, text)


def status(path: str | None = None) -> tuple[bool, bool]:
    """(pellucid is a runtime, pellucid is the default runtime) in daemon.json."""
    try:
        with open(path or DEFAULT_PATH) as f:
            data = _load(f.read(), "")
    except (OSError, UnicodeDecodeError, InstallError):
        return False, False
    return RUNTIME_NAME in data.get("runtimes", {}), data.get("default-runtime") == RUNTIME_NAME


def dockerd_pids() -> list[int]:
    """Running dockerd processes: the one in docker.pid if alive, else every process named dockerd."""
    try:
        with open(PID_FILE) as f:
            pid = int(f.read().strip())
        if _comm(pid) == "dockerd":
            return [pid]
    except (OSError, ValueError):
        pass
    return sorted(int(p) for p in os.listdir("/proc") if p.isdigit() and _comm(int(p)) == "dockerd")


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def reload() -> list[int]:
    """SIGHUP every running dockerd, which makes it read its runtimes again; the pids signalled."""
    pids = dockerd_pids()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            pass
        except PermissionError as err:
            raise InstallError(f"cannot signal dockerd (pid {pid}): {err}") from None
    return pids
