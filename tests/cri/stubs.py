"""Python modules for cri_v1.proto, compiled with grpcio-tools on first use.

The generated `cri_v1_pb2` and `cri_v1_pb2_grpc` go to a cache directory keyed by the
proto's hash and grpcio-tools' version (never into the source tree), so an edit of the
proto or an upgrade recompiles, and concurrent test runs never see a half-written module.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

PROTO = Path(__file__).with_name("cri_v1.proto")


def cache_root() -> Path:
    """$PELLUCID_TEST_CACHE, else $XDG_CACHE_HOME/pellucid-tests, else ~/.cache/pellucid-tests."""
    explicit = os.environ.get("PELLUCID_TEST_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(xdg) / "pellucid-tests"


def _compile(dest: Path) -> None:
    from grpc_tools import protoc  # imported here: only a test run that needs the stubs pays for it

    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    try:
        include = Path(protoc.__file__).parent / "_proto"  # the well-known types grpcio-tools ships
        rc = protoc.main(["grpc_tools.protoc", f"-I{PROTO.parent}", f"-I{include}",
                          f"--python_out={tmp}", f"--grpc_python_out={tmp}", PROTO.name])
        if rc != 0:
            raise RuntimeError(f"protoc failed ({rc}) on {PROTO}")
        try:
            tmp.rename(dest)
        except OSError:
            if not dest.is_dir():  # another run won the race: its copy is as good as ours
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load() -> tuple[ModuleType, ModuleType]:
    """(cri_v1_pb2, cri_v1_pb2_grpc), compiling them into the cache first if needed."""
    tools = importlib.metadata.version("grpcio-tools")
    key = hashlib.sha256(PROTO.read_bytes() + tools.encode()).hexdigest()[:16]
    dest = cache_root() / f"cri-stubs-{key}"
    if not (dest / "cri_v1_pb2_grpc.py").exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        _compile(dest)
    if str(dest) not in sys.path:
        sys.path.insert(0, str(dest))  # the _grpc module imports `cri_v1_pb2` by that name
    return importlib.import_module("cri_v1_pb2"), importlib.import_module("cri_v1_pb2_grpc")
