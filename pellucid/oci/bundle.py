"""A bundle's config.json and exec's process file: read, bounded and checked as runc checks them.

Only what pellucid relies on, or runc refuses, is checked here; the rest goes to the guest as is.
Absent and ``null`` optional fields are the same thing, as they are to runc's Go decoder.
"""

from __future__ import annotations

import json
import os
import re

from .. import ids
from ..errors import BundleError

MAX_FILE_BYTES = 4 << 20
NAMESPACES = ("pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time")
HOOK_STAGES = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")

SANDBOX, CONTAINER, SINGLE = "sandbox", "container", "single"
#: (container type, sandbox id) annotations of containerd's CRI plugin and of CRI-O
CRI_ANNOTATIONS = (
    ("io.kubernetes.cri.container-type", "io.kubernetes.cri.sandbox-id"),
    ("io.kubernetes.cri-o.ContainerType", "io.kubernetes.cri-o.SandboxID"),
)

#: runtime-spec 1.x as semver: "1.0.2", "1.0.2-dev", "1.3.0", "1.1.0+dev"
OCI_VERSION = re.compile(r"1\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)([-+][0-9A-Za-z.+-]*)?")

_KINDS = {str: "a string", int: "an integer", bool: "a boolean", list: "an array", dict: "an object"}


def load_config(bundle: str) -> dict:
    """The bundle's config.json, checked; ``root.path`` may still be relative (see :func:`rootfs_path`)."""
    if not os.path.isdir(bundle):
        reason = "not a directory" if os.path.exists(bundle) else "no such file or directory"
        raise BundleError(f"bundle {bundle}: {reason}")
    path = os.path.join(bundle, "config.json")
    config = _read_object(path)
    version = _typed(config, "ociVersion", str, path, required=True)
    if not OCI_VERSION.fullmatch(version):
        raise BundleError(f'{path}: unsupported OCI version "{version}": pellucid takes runtime-spec 1.x '
                          '(such as "1.0.2" or "1.3.0")')
    root = _typed(config, "root", dict, path, required=True)
    if not _typed(root, "root.path", str, path, required=True):
        raise BundleError(f"{path}: root.path must not be empty")
    _check_process(_typed(config, "process", dict, path, required=True), path, "process.", cwd_required=True)
    _typed(config, "hostname", str, path)
    for i, mount in enumerate(_objects(config, "mounts", path)):
        if not _typed(mount, f"mounts[{i}].destination", str, path, required=True):
            raise BundleError(f"{path}: mounts[{i}].destination must not be empty")
        if not mount["destination"].startswith("/"):  # runtime-spec 1.2: relative to "/", as runc has it
            mount["destination"] = "/" + mount["destination"]
        _typed(mount, f"mounts[{i}].type", str, path)
        _typed(mount, f"mounts[{i}].source", str, path)
        _strings(mount, f"mounts[{i}].options", path)
    annotations = _typed(config, "annotations", dict, path) or {}
    if not all(isinstance(value, str) for value in annotations.values()):
        raise BundleError(f"{path}: annotations must map strings to strings")
    _check_namespaces(_typed(config, "linux", dict, path) or {}, path)
    for stage in HOOK_STAGES:
        hooks_of(config, stage, path)
    return config


def rootfs_path(bundle: str, config: dict) -> str:
    """The absolute path of the rootfs; a relative ``root.path`` is relative to the bundle."""
    path = os.path.abspath(os.path.join(bundle, config["root"]["path"]))
    if not os.path.exists(path):
        raise BundleError(f"invalid rootfs: stat {path}: no such file or directory")
    if not os.path.isdir(path):
        raise BundleError(f"invalid rootfs: {path} is not a directory")
    return path


def load_process(path: str) -> dict:
    """The process object of ``exec --process FILE``, checked; ``cwd`` may be absent."""
    process = _read_object(path)
    _check_process(process, path, "", cwd_required=False)
    return process


def sandbox_of(config: dict) -> tuple[str, str | None]:
    """("sandbox", None) for a CRI pod sandbox, ("container", sandbox id) for a container in a pod,
    ("single", None) for a container on its own (Docker, podman, ctr)."""
    annotations = config.get("annotations") or {}
    for type_key, id_key in CRI_ANNOTATIONS:
        kind = annotations.get(type_key)
        if kind is None:
            continue
        if kind == SANDBOX:
            return SANDBOX, None
        if kind != CONTAINER:
            raise BundleError(f'config.json: annotation {type_key}: unknown container type "{kind}"')
        sandbox = annotations.get(id_key)
        if not sandbox:
            raise BundleError(f"config.json: annotation {type_key} is {CONTAINER!r} but {id_key} is missing")
        ids.check(sandbox)
        return CONTAINER, sandbox
    return SINGLE, None


def hooks_of(config: dict, stage: str, where: str = "config.json") -> list[dict]:
    """The hooks of ``stage``, checked: each has an absolute ``path``, and ``args``, ``env`` and
    ``timeout`` of the right kinds when present. ``where`` names the file in error messages."""
    if stage not in HOOK_STAGES:
        raise ValueError(f"unknown hook stage {stage!r}")
    hooks = _objects(_typed(config, "hooks", dict, where) or {}, f"hooks.{stage}", where)
    for i, hook in enumerate(hooks):
        name = f"hooks.{stage}[{i}]"
        _absolute(hook, f"{name}.path", where, required=True)
        _strings(hook, f"{name}.args", where)
        _env(hook, f"{name}.env", where)
        timeout = _typed(hook, f"{name}.timeout", int, where)
        if timeout is not None and timeout <= 0:
            raise BundleError(f"{where}: {name}.timeout must be greater than zero")
    return hooks


def _read_object(path: str) -> dict:
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        raise BundleError(f"open {path}: {(err.strerror or str(err)).lower()}") from None
    if len(data) > MAX_FILE_BYTES:
        raise BundleError(f"{path}: larger than {MAX_FILE_BYTES >> 20} MiB")
    try:
        value = json.loads(data)
    except json.JSONDecodeError as err:
        raise BundleError(f"{path}: invalid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    except (ValueError, RecursionError) as err:
        raise BundleError(f"{path}: invalid JSON: {err}") from None
    if not isinstance(value, dict):
        raise BundleError(f"{path}: invalid JSON: not an object")
    return value


def _check_process(process: dict, where: str, prefix: str, cwd_required: bool) -> None:
    if not _strings(process, f"{prefix}args", where):
        raise BundleError(f"{where}: {prefix}args must not be empty")
    _absolute(process, f"{prefix}cwd", where, required=cwd_required)
    _env(process, f"{prefix}env", where)
    _typed(process, f"{prefix}terminal", bool, where)
    user = _typed(process, f"{prefix}user", dict, where)
    if user is not None:
        _uint32(_typed(user, f"{prefix}user.uid", int, where, required=True), f"{prefix}user.uid", where)
        _uint32(_typed(user, f"{prefix}user.gid", int, where, required=True), f"{prefix}user.gid", where)
        for i, gid in enumerate(_typed(user, f"{prefix}user.additionalGids", list, where) or ()):
            _uint32(gid, f"{prefix}user.additionalGids[{i}]", where)


def _check_namespaces(linux: dict, where: str) -> None:
    seen = set()
    for i, namespace in enumerate(_objects(linux, "linux.namespaces", where)):
        kind = _typed(namespace, f"linux.namespaces[{i}].type", str, where, required=True)
        if kind not in NAMESPACES:
            raise BundleError(f'{where}: linux.namespaces[{i}]: unknown namespace type "{kind}"')
        if kind in seen:
            raise BundleError(f'{where}: linux.namespaces: duplicate namespace type "{kind}"')
        seen.add(kind)
        _absolute(namespace, f"linux.namespaces[{i}].path", where)


def _typed(obj: dict, name: str, kind: type, where: str, required: bool = False):
    """``obj``'s field named by the last part of ``name``, checked to be of ``kind`` (never bool for int);
    None when absent or null and not required."""
    value = obj.get(name.rpartition(".")[2])
    if value is None:
        if required:
            raise BundleError(f"{where}: {name} must be specified")
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise BundleError(f"{where}: {name} must be {_KINDS[kind]}")
    return value


def _strings(obj: dict, name: str, where: str) -> list[str]:
    values = _typed(obj, name, list, where) or []
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise BundleError(f"{where}: {name}[{i}] must be a string")
    return values


def _objects(obj: dict, name: str, where: str) -> list[dict]:
    values = _typed(obj, name, list, where) or []
    for i, value in enumerate(values):
        if not isinstance(value, dict):
            raise BundleError(f"{where}: {name}[{i}] must be an object")
    return values


def _absolute(obj: dict, name: str, where: str, required: bool = False) -> None:
    """An empty optional path counts as absent, as Go's omitempty has it."""
    value = _typed(obj, name, str, where, required)
    if (value or required) and not value.startswith("/"):
        raise BundleError(f"{where}: {name} must be an absolute path, not {json.dumps(value)}")


def _env(obj: dict, name: str, where: str) -> None:
    for i, var in enumerate(_strings(obj, name, where)):
        key, equals, _ = var.partition("=")
        if not key or not equals or "\0" in var:
            raise BundleError(f'{where}: {name}[{i}] must be "NAME=value", not {json.dumps(var)}')


def _uint32(value: object, name: str, where: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 32:
        raise BundleError(f"{where}: {name} must be an integer from 0 to {(1 << 32) - 1}")
