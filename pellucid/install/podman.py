"""podman: the runtime in containers.conf (`[engine.runtimes] pellucid = [path]`), and with
`--default` `[engine] runtime = "pellucid"`.

podman reads /usr/share/containers/containers.conf, /etc/containers/containers.conf, then
/etc/containers/containers.conf.d/*.conf, later files overriding earlier ones ($CONTAINERS_CONF,
when set, alone).
"""

from __future__ import annotations

import glob
import os
import tomllib

from . import RUNTIME_NAME, InstallError
from .files import end_with_one_newline

DEFAULT_PATH = "/etc/containers/containers.conf"
VENDOR_PATH = "/usr/share/containers/containers.conf"
DROP_IN_DIR = "/etc/containers/containers.conf.d"
EXECUTABLES = ("podman",)
#: files whose presence shows the client is set up here
DETECT_FILES = (DEFAULT_PATH,)
#: where `pellucid check` looks for the runtime
STATUS_FROM = "containers.conf (/usr/share, /etc and containers.conf.d)"


def _parse(text: str, path: str):
    import tomlkit
    from tomlkit.exceptions import TOMLKitError
    try:
        return tomlkit.parse(text)
    except TOMLKitError as err:
        raise InstallError(f"{path} is not valid TOML ({err}); fix it first: nothing was changed") from None


def install(text: str | None, executable: str, default: bool, path: str = DEFAULT_PATH) -> str | None:
    import tomlkit
    doc = _parse(text or "", path)
    engine = doc.get("engine")
    runtimes = engine.get("runtimes") if engine is not None else None
    if (runtimes is not None and list(runtimes.get(RUNTIME_NAME, [])) == [executable]
            and (not default or engine.get("runtime") == RUNTIME_NAME)):
        return text
    if engine is None:
        engine = doc["engine"] = tomlkit.table()
    if default:
        engine["runtime"] = RUNTIME_NAME
    if runtimes is None:
        runtimes = engine["runtimes"] = tomlkit.table()
    runtimes[RUNTIME_NAME] = [executable]
    return tomlkit.dumps(doc)


def uninstall(text: str | None, path: str = DEFAULT_PATH) -> str | None:
    import tomlkit
    if text is None:
        return None
    doc = _parse(text, path)
    engine = doc.get("engine", {})
    runtimes = engine.get("runtimes", {})
    if RUNTIME_NAME not in runtimes and engine.get("runtime") != RUNTIME_NAME:
        return text
    if RUNTIME_NAME in runtimes:
        del runtimes[RUNTIME_NAME]
    if engine.get("runtime") == RUNTIME_NAME:
        del engine["runtime"]
    for parent, key in ((engine, "runtimes"), (doc, "engine")):
        if key in parent and not parent[key].as_string().strip():
            del parent[key]  # a table install added, now empty
    return end_with_one_newline(tomlkit.dumps(doc))


def config_files() -> list[str]:
    if os.environ.get("CONTAINERS_CONF"):
        return [os.environ["CONTAINERS_CONF"]]
    return [VENDOR_PATH, DEFAULT_PATH] + sorted(glob.glob(os.path.join(DROP_IN_DIR, "*.conf")))


def status(path: str | None = None) -> tuple[bool, bool]:
    """(the runtime is defined, it is the default) in ``path``, or after podman's merge of its config files."""
    runtimes: dict = {}
    default = ""
    for file in [path] if path else config_files():
        try:
            with open(file, "rb") as f:
                engine = tomllib.load(f).get("engine", {})
        except (OSError, tomllib.TOMLDecodeError):
            continue
        runtimes.update(engine.get("runtimes", {}))
        default = engine.get("runtime", default)
    return RUNTIME_NAME in runtimes, default == RUNTIME_NAME
