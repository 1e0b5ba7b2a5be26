"""CRI-O: a drop-in of pellucid's own, `/etc/crio/crio.conf.d/50-pellucid.conf`, defining the
runtime handler `pellucid`.

CRI-O reads /etc/crio/crio.conf, then the drop-ins in lexical order. The handler runs pellucid as
an "oci" runtime under conmon, with pellucid's own state root; conmon goes in the pod's cgroup
(`monitor_cgroup = "pod"`, valid with both cgroup managers) so that what a pod's VM costs is
charged to the pod, as the RuntimeClass overhead expects.
"""

from __future__ import annotations

import glob
import os
import tomllib

from . import RUNTIME_NAME, InstallError
from .files import end_with_one_newline

DEFAULT_PATH = "/etc/crio/crio.conf.d/50-pellucid.conf"
MAIN_CONFIG = "/etc/crio/crio.conf"
EXECUTABLES = ("crio",)
#: files whose presence shows the client is set up here
DETECT_FILES = (MAIN_CONFIG, DEFAULT_PATH)
#: where `pellucid check` looks for the runtime
STATUS_FROM = "/etc/crio/crio.conf and crio.conf.d/"
RUNTIME_ROOT = "/run/pellucid"
MONITOR_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
HEADER = "# Written by `pellucid install crio`; `pellucid uninstall crio` removes it.\n"


def _parse(text: str, path: str):
    import tomlkit
    from tomlkit.exceptions import TOMLKitError
    try:
        return tomlkit.parse(text)
    except TOMLKitError as err:
        raise InstallError(f"{path} is not valid TOML ({err}); fix it first: nothing was changed") from None


def _handler(executable: str) -> dict:
    return {"runtime_path": executable, "runtime_type": "oci", "runtime_root": RUNTIME_ROOT,
            "monitor_cgroup": "pod", "monitor_env": MONITOR_ENV}


def install(text: str | None, executable: str, default: bool, path: str = DEFAULT_PATH) -> str | None:
    import tomlkit
    doc = _parse(text if text and text.strip() else HEADER, path)
    runtime = doc.setdefault("crio", tomlkit.table(is_super_table=True)).setdefault(
        "runtime", tomlkit.table())
    runtimes = runtime.setdefault("runtimes", tomlkit.table(is_super_table=True))
    want = _handler(executable)
    current = runtimes.get(RUNTIME_NAME)
    if (current is not None and all(current.get(k) == v for k, v in want.items())
            and (not default or runtime.get("default_runtime") == RUNTIME_NAME)):
        return text
    if default:
        runtime["default_runtime"] = RUNTIME_NAME
    if current is None:
        handler = tomlkit.table()
        for key, value in want.items():
            handler[key] = value
        runtimes[RUNTIME_NAME] = handler
    else:
        for key, value in want.items():
            current[key] = value
    return tomlkit.dumps(doc)


def uninstall(text: str | None, path: str = DEFAULT_PATH) -> str | None:
    """Without the handler (and default_runtime if it names it); the drop-in is removed when
    nothing but pellucid's header remains."""
    import tomlkit
    if text is None:
        return None
    doc = _parse(text, path)
    runtime = doc.get("crio", {}).get("runtime", {})
    runtimes = runtime.get("runtimes", {})
    if RUNTIME_NAME not in runtimes and runtime.get("default_runtime") != RUNTIME_NAME:
        return text
    if RUNTIME_NAME in runtimes:
        del runtimes[RUNTIME_NAME]
    if runtime.get("default_runtime") == RUNTIME_NAME:
        del runtime["default_runtime"]
    _drop_if_blank(runtime, "runtimes")
    _drop_if_blank(doc.get("crio", {}), "runtime")
    _drop_if_blank(doc, "crio")
    out = end_with_one_newline(tomlkit.dumps(doc))
    return None if out.replace(HEADER, "").strip() == "" else out


def _drop_if_blank(parent, key: str) -> None:
    """Remove a table that holds nothing, not even a comment, any more."""
    if key in parent and not parent[key].as_string().strip():
        del parent[key]


def status(path: str | None = None) -> tuple[bool, bool]:
    """(the handler is defined, it is the default) in ``path``, or after CRI-O's merge of its config files."""
    files = [path] if path else [MAIN_CONFIG] + sorted(glob.glob(os.path.join(os.path.dirname(DEFAULT_PATH), "*")))
    runtimes: dict = {}
    default = ""
    for file in files:
        try:
            with open(file, "rb") as f:
                runtime = tomllib.load(f).get("crio", {}).get("runtime", {})
        except (OSError, tomllib.TOMLDecodeError):
            continue
        runtimes.update(runtime.get("runtimes", {}))
        default = runtime.get("default_runtime", default)
    return RUNTIME_NAME in runtimes, default == RUNTIME_NAME
