"""containerd: a CRI runtime handler `pellucid` (containerd's runc shim v2 running pellucid).

Config version 2 (containerd 1.x) keeps CRI runtimes under `plugins."io.containerd.grpc.v1.cri"`,
version 3 (containerd 2.x) under `plugins."io.containerd.cri.v1.runtime"`. A file without a
`version` key is version 1 to containerd (short plugin ids such as `plugins.cri`): when it
configures no plugin it means the same as version 2, so `version = 2` is added; otherwise it is
refused (convert it with `containerd config migrate`, containerd 1.7 and later).
Edits go through tomlkit, which keeps the file's comments and layout.
"""

from __future__ import annotations

import re
import subprocess
import tomllib

from . import RUNTIME_NAME, InstallError
from .files import end_with_one_newline

DEFAULT_PATH = "/etc/containerd/config.toml"
EXECUTABLES = ("containerd",)
#: files whose presence shows the client is set up here
DETECT_FILES = (DEFAULT_PATH,)
#: where `pellucid check` looks for the runtime
STATUS_FROM = DEFAULT_PATH
RUNTIME_TYPE = "io.containerd.runc.v2"
#: the plugin holding CRI runtimes, by config version
CRI_PLUGIN = {2: "io.containerd.grpc.v1.cri", 3: "io.containerd.cri.v1.runtime"}
#: the CRI plugin's id in `disabled_plugins`, by config version (v1 names it `cri`)
CRI_IDS = {1: ("cri",), 2: ("io.containerd.grpc.v1.cri",), 3: ("io.containerd.cri.v1.runtime",
                                                                 "io.containerd.grpc.v1.cri")}


def installed_version() -> int:
    """The config version the installed containerd writes (3 from containerd 2.0), 2 if unknown."""
    try:
        out = subprocess.run(["containerd", "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 2
    match = re.search(r"\s v?(\d+)\.\d+", out)
    return 3 if match and int(match.group(1)) >= 2 else 2


def _parse(text: str, path: str):
    import tomlkit
    from tomlkit.exceptions import TOMLKitError
    try:
        return tomlkit.parse(text)
    except TOMLKitError as err:
        raise InstallError(f"{path} is not valid TOML ({err}); fix it first: nothing was changed") from None


def _version(doc, path: str) -> int:
    version = doc.get("version", 1)
    if version not in (1, 2, 3):
        raise InstallError(f"{path}: config version {version!r} is not one pellucid knows (2 or 3)")
    return int(version)


def _runtimes_path(version: int) -> tuple[str, ...]:
    return ("plugins", CRI_PLUGIN[version], "containerd", "runtimes")


def _walk(doc, keys: tuple[str, ...], create: bool):
    import tomlkit
    table = doc
    for key in keys:
        if key not in table:
            if not create:
                return None
            table[key] = tomlkit.table(is_super_table=True)
        table = table[key]
        if not isinstance(table, dict):
            raise InstallError(f"{'.'.join(keys)} is not a table")
    return table


def install(text: str | None, executable: str, default: bool, path: str = DEFAULT_PATH,
            new_version: int | None = None) -> str | None:
    """The config with the pellucid handler (and, with ``default``, as default_runtime_name).

    ``new_version`` is the version written into a new or empty file (default: what the installed
    containerd uses)."""
    import tomlkit
    doc = _parse(text or "", path)
    if "version" not in doc:
        if "plugins" in doc or doc.get("disabled_plugins") or doc.get("required_plugins"):
            raise InstallError(
                f"{path} has no `version` key, so containerd reads it as config version 1, which pellucid "
                "does not edit: convert it to version 2 (`containerd config migrate` in containerd 1.7+, "
                "or rename the plugin tables as containerd's docs/cri/config.md shows) and run this again")
        version = new_version or installed_version()
        doc = _parse(f"version = {version}\n" + ("\n" if (text or "").strip() else "") + (text or ""), path)
    version = _version(doc, path)
    runtimes = _walk(doc, _runtimes_path(version), create=True)
    current = runtimes.get(RUNTIME_NAME)
    cri = _walk(doc, _runtimes_path(version)[:-1], create=False)
    if (current is not None and current.get("runtime_type") == RUNTIME_TYPE
            and current.get("options", {}).get("BinaryName") == executable
            and (not default or cri.get("default_runtime_name") == RUNTIME_NAME)):
        return text
    if current is None:
        handler = tomlkit.table()
        handler["runtime_type"] = RUNTIME_TYPE
        options = tomlkit.table()
        options["BinaryName"] = executable
        options.add(tomlkit.nl())
        handler["options"] = options
        runtimes[RUNTIME_NAME] = handler
    else:
        current["runtime_type"] = RUNTIME_TYPE
        if "options" not in current:
            current["options"] = tomlkit.table()
        current["options"]["BinaryName"] = executable
    if default:
        cri["default_runtime_name"] = RUNTIME_NAME
    return tomlkit.dumps(doc)


def uninstall(text: str | None, path: str = DEFAULT_PATH) -> str | None:
    """The config without the pellucid handler, and without default_runtime_name if it named it."""
    import tomlkit
    if text is None:
        return None
    doc = _parse(text, path)
    version = _version(doc, path)
    if version == 1:
        return text
    cri = _walk(doc, _runtimes_path(version)[:-1], create=False)
    if cri is None:
        return text
    runtimes = cri.get("runtimes", {})
    if RUNTIME_NAME not in runtimes and cri.get("default_runtime_name") != RUNTIME_NAME:
        return text
    if RUNTIME_NAME in runtimes:
        del runtimes[RUNTIME_NAME]
    if cri.get("default_runtime_name") == RUNTIME_NAME:
        del cri["default_runtime_name"]
    out = end_with_one_newline(tomlkit.dumps(doc))
    # a file install created holds nothing else: no file means the same to containerd
    return None if tomllib.loads(out) == {"version": version} and not out.replace(f"version = {version}", "").strip() else out


def warnings(text: str | None) -> list[str]:
    """What would keep the handler from being used: the CRI plugin disabled."""
    try:
        data = tomllib.loads(text or "")
    except tomllib.TOMLDecodeError:
        return []
    version = data.get("version", 1)
    disabled = set(data.get("disabled_plugins", []))
    if disabled & set(CRI_IDS.get(version, ())):
        return ["containerd's CRI plugin is disabled in this config (disabled_plugins): "
                "Kubernetes cannot use the pellucid handler until it is enabled"]
    return []


def status(path: str | None = None) -> tuple[bool, bool]:
    """(the pellucid handler is configured, it is the default runtime)."""
    try:
        with open(path or DEFAULT_PATH, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return False, False
    version = data.get("version", 1)
    plugin = CRI_PLUGIN.get(version, "cri")
    cri = data.get("plugins", {}).get(plugin, {}).get("containerd", {})
    return RUNTIME_NAME in cri.get("runtimes", {}), cri.get("default_runtime_name") == RUNTIME_NAME
