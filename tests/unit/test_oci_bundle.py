"""Bundles, config.json and exec process files: checked as runc checks them, on real clients' files."""

import json
from pathlib import Path

import pytest

from pellucid.errors import BundleError, ConfigError, InvalidId
from pellucid.oci import bundle
from tests.fixtures import CLIENTS

CONFIGS = sorted(CLIENTS.glob("*/*-config.json"))
PROCESSES = sorted(CLIENTS.glob("*/*-process.json"))


def _name(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def minimal_config() -> dict:
    return {
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs"},
        "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
    }


@pytest.fixture
def make_bundle(tmp_path):
    """A bundle with a rootfs directory and the given config (a dict, or raw text)."""
    def make(config: dict | str) -> Path:
        (tmp_path / "rootfs").mkdir(exist_ok=True)
        text = config if isinstance(config, str) else json.dumps(config)
        (tmp_path / "config.json").write_text(text)
        return tmp_path
    return make


def test_minimal_config_loads(make_bundle):
    path = make_bundle(minimal_config())
    config = bundle.load_config(str(path))
    assert config["process"]["args"] == ["sh"]
    assert bundle.rootfs_path(str(path), config) == str(path / "rootfs")


def test_errors_are_config_errors():
    assert issubclass(BundleError, ConfigError)


def test_missing_bundle(tmp_path):
    with pytest.raises(BundleError, match=f"^bundle {tmp_path}/none: no such file or directory$"):
        bundle.load_config(str(tmp_path / "none"))


def test_bundle_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(BundleError, match=f"^bundle {tmp_path}/f: not a directory$"):
        bundle.load_config(str(tmp_path / "f"))


def test_missing_config(tmp_path):
    with pytest.raises(BundleError, match=f"^open {tmp_path}/config.json: no such file or directory$"):
        bundle.load_config(str(tmp_path))


def test_config_too_large(make_bundle):
    path = make_bundle(" " * (bundle.MAX_FILE_BYTES + 1))
    with pytest.raises(BundleError, match="config.json: larger than 4 MiB"):
        bundle.load_config(str(path))


@pytest.mark.parametrize("text, message", [
    ('{"ociVersion": ', "config.json: invalid JSON: Expecting value at line 1 column 16$"),
    ("{}\n}", "config.json: invalid JSON: Extra data at line 2 column 1$"),
    (b"\xff\xfe{".decode("latin-1"), "config.json: invalid JSON"),
    ("[" * 100000 + "]" * 100000, "config.json: invalid JSON"),
    ("[]", "config.json: invalid JSON: not an object$"),
])
def test_invalid_json(make_bundle, text, message):
    with pytest.raises(BundleError, match=message):
        bundle.load_config(str(make_bundle(text)))


def _without(config: dict, dotted: str) -> dict:
    *parents, last = dotted.split(".")
    obj = config
    for key in parents:
        obj = obj[key]
    del obj[last]
    return config


def _with(config: dict, dotted: str, value) -> dict:
    *parents, last = dotted.split(".")
    obj = config
    for key in parents:
        obj = obj.setdefault(key, {})
    obj[last] = value
    return config


@pytest.mark.parametrize("field, message", [
    ("ociVersion", "ociVersion must be specified"),
    ("root", "root must be specified"),
    ("root.path", "root.path must be specified"),
    ("process", "process must be specified"),
    ("process.args", "process.args must not be empty"),
    ("process.cwd", "process.cwd must be specified"),
    ("process.user.uid", "process.user.uid must be specified"),
    ("process.user.gid", "process.user.gid must be specified"),
])
def test_missing_fields(make_bundle, field, message):
    path = make_bundle(_without(minimal_config(), field))
    with pytest.raises(BundleError, match=f"^{path}/config.json: {message}$"):
        bundle.load_config(str(path))


@pytest.mark.parametrize("field, value, message", [
    ("ociVersion", 1, "ociVersion must be a string"),
    ("ociVersion", "2.0.0", 'unsupported OCI version "2.0.0": pellucid takes runtime-spec 1.x .*'),
    ("ociVersion", "", 'unsupported OCI version "": pellucid takes runtime-spec 1.x .*'),
    ("ociVersion", "garbage", 'unsupported OCI version "garbage": .*'),
    ("ociVersion", "1garbage", 'unsupported OCI version "1garbage": .*'),
    ("ociVersion", "1.x", 'unsupported OCI version "1.x": .*'),
    ("root", "rootfs", "root must be an object"),
    ("root.path", "", "root.path must not be empty"),
    ("process", [], "process must be an object"),
    ("process.args", [], "process.args must not be empty"),
    ("process.args", "sh", "process.args must be an array"),
    ("process.args", ["sh", 1], r"process.args\[1\] must be a string"),
    ("process.cwd", "tmp", 'process.cwd must be an absolute path, not "tmp"'),
    ("process.cwd", "", 'process.cwd must be an absolute path, not ""'),
    ("process.env", ["PATH"], r'process.env\[0\] must be "NAME=value", not "PATH"'),
    ("process.env", ["=x"], r'process.env\[0\] must be "NAME=value", not "=x"'),
    ("process.terminal", "yes", "process.terminal must be a boolean"),
    ("process.user", 0, "process.user must be an object"),
    ("process.user.uid", "0", "process.user.uid must be an integer"),
    ("process.user.uid", True, "process.user.uid must be an integer"),
    ("process.user.gid", -1, "process.user.gid must be an integer from 0 to 4294967295"),
    ("process.user.gid", 1 << 32, "process.user.gid must be an integer from 0 to 4294967295"),
    ("process.user.additionalGids", [0, "1"], r"process.user.additionalGids\[1\] must be an integer from 0 to 4294967295"),
    ("hostname", 7, "hostname must be a string"),
    ("mounts", {}, "mounts must be an array"),
    ("mounts", ["/proc"], r"mounts\[0\] must be an object"),
    ("mounts", [{"type": "proc"}], r"mounts\[0\].destination must be specified"),
    ("mounts", [{"destination": ""}], r"mounts\[0\].destination must not be empty"),
    ("mounts", [{"destination": "/p", "options": "ro"}], r"mounts\[0\].options must be an array"),
    ("annotations", {"a": 1}, "annotations must map strings to strings"),
    ("linux", [], "linux must be an object"),
    ("linux.namespaces", {"type": "pid"}, "linux.namespaces must be an array"),
    ("linux.namespaces", [{}], r"linux.namespaces\[0\].type must be specified"),
    ("linux.namespaces", [{"type": "net"}], r'linux.namespaces\[0\]: unknown namespace type "net"'),
    ("linux.namespaces", [{"type": "pid"}, {"type": "pid"}], 'linux.namespaces: duplicate namespace type "pid"'),
    ("linux.namespaces", [{"type": "network", "path": "netns"}],
     r'linux.namespaces\[0\].path must be an absolute path, not "netns"'),
    ("hooks", [], "hooks must be an object"),
    ("hooks.prestart", {}, "hooks.prestart must be an array"),
    ("hooks.poststop", [{"args": ["x"]}], r"hooks.poststop\[0\].path must be specified"),
    ("hooks.poststop", [{"path": "hook"}], r'hooks.poststop\[0\].path must be an absolute path, not "hook"'),
    ("hooks.prestart", [{"path": "/h", "args": "x"}], r"hooks.prestart\[0\].args must be an array"),
    ("hooks.prestart", [{"path": "/h", "env": ["X"]}], r'hooks.prestart\[0\].env\[0\] must be "NAME=value", not "X"'),
    ("hooks.prestart", [{"path": "/h", "timeout": 0}], r"hooks.prestart\[0\].timeout must be greater than zero"),
    ("hooks.prestart", [{"path": "/h", "timeout": 1.5}], r"hooks.prestart\[0\].timeout must be an integer"),
])
def test_invalid_fields(make_bundle, field, value, message):
    path = make_bundle(_with(minimal_config(), field, value))
    with pytest.raises(BundleError, match=f"^{path}/config.json: {message}$"):
        bundle.load_config(str(path))


@pytest.mark.parametrize("field, value", [
    ("ociVersion", "1.1.0"),
    ("ociVersion", "1.0.2-dev"),
    ("ociVersion", "1.2.0"),
    ("ociVersion", "1.3.0"),
    ("ociVersion", "1.2.1+dev"),
    ("hostname", None),
    ("mounts", None),
    ("hooks", None),
    ("hooks", {"prestart": None, "unknownStage": [1]}),
    ("linux.namespaces", [{"type": kind} for kind in bundle.NAMESPACES]),
    ("linux.namespaces", [{"type": "network", "path": ""}]),
    ("process.user", None),
    ("process.user.additionalGids", [0, 4294967295]),
    ("process.env", ["A=", "B==c"]),
])
def test_accepted_variants(make_bundle, field, value):
    bundle.load_config(str(make_bundle(_with(minimal_config(), field, value))))


def test_relative_mount_destinations_are_relative_to_the_root(make_bundle):
    """runtime-spec 1.2 allows them (deprecated), as runc reads them."""
    path = make_bundle(_with(minimal_config(), "mounts", [{"destination": "data", "type": "tmpfs"}]))
    assert bundle.load_config(str(path))["mounts"][0]["destination"] == "/data"


def test_absolute_root_path(make_bundle, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("rootfs")
    path = make_bundle(_with(minimal_config(), "root.path", str(elsewhere)))
    assert bundle.rootfs_path(str(path), bundle.load_config(str(path))) == str(elsewhere)


def test_relative_bundle_gives_absolute_rootfs(make_bundle, monkeypatch):
    path = make_bundle(minimal_config())
    monkeypatch.chdir(path.parent)
    config = bundle.load_config(path.name)
    assert bundle.rootfs_path(path.name, config) == str(path / "rootfs")


def test_missing_rootfs(make_bundle):
    path = make_bundle(minimal_config())
    (path / "rootfs").rmdir()
    config = bundle.load_config(str(path))
    with pytest.raises(BundleError, match=f"^invalid rootfs: stat {path}/rootfs: no such file or directory$"):
        bundle.rootfs_path(str(path), config)


def test_rootfs_that_is_a_file(make_bundle):
    path = make_bundle(minimal_config())
    (path / "rootfs").rmdir()
    (path / "rootfs").write_text("")
    with pytest.raises(BundleError, match=f"^invalid rootfs: {path}/rootfs is not a directory$"):
        bundle.rootfs_path(str(path), bundle.load_config(str(path)))


def test_client_fixtures_are_present():
    assert {p.parent.name for p in CONFIGS} == {"containerd-cri", "docker", "podman"}
    assert len(PROCESSES) >= 6


@pytest.mark.parametrize("fixture", CONFIGS, ids=_name)
def test_client_configs_load(fixture, tmp_path):
    """Each config.json a real client sent, in a bundle of our own: normalised rootfs paths point to ours."""
    config = json.loads(fixture.read_text())
    if config["root"]["path"].startswith("<"):
        config["root"]["path"] = str(tmp_path / "rootfs")
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = bundle.load_config(str(tmp_path))
    assert loaded == config
    assert bundle.rootfs_path(str(tmp_path), loaded) == str(tmp_path / "rootfs")


@pytest.mark.parametrize("fixture", PROCESSES, ids=_name)
def test_client_process_files_load(fixture):
    process = bundle.load_process(str(fixture))
    assert process["args"] and process["cwd"] == "/"


def test_process_file_errors(tmp_path):
    with pytest.raises(BundleError, match=f"^open {tmp_path}/p.json: no such file or directory$"):
        bundle.load_process(str(tmp_path / "p.json"))
    path = tmp_path / "p.json"
    for process, message in [
        ({"args": []}, "args must not be empty"),
        ({"args": ["sh"], "cwd": "x"}, 'cwd must be an absolute path, not "x"'),
        ({"args": ["sh"], "env": "A=b"}, "env must be an array"),
        ({"args": ["sh"], "env": ["A"]}, r'env\[0\] must be "NAME=value", not "A"'),
        ({"args": ["sh"], "terminal": 1}, "terminal must be a boolean"),
        ({"args": ["sh"], "user": {"uid": "0", "gid": 0}}, "user.uid must be an integer"),
    ]:
        path.write_text(json.dumps(process))
        with pytest.raises(BundleError, match=f"^{path}: {message}$"):
            bundle.load_process(str(path))


def test_process_file_without_cwd(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"args": ["true"], "terminal": false, "user": {"uid": 1000, "gid": 1000}}')
    assert bundle.load_process(str(path))["args"] == ["true"]


@pytest.mark.parametrize("fixture, expected", [
    ("containerd-cri/00-config.json", ("sandbox", None)),
    ("containerd-cri/01-config.json",
     ("container", "6949dabb0cc487840338ec967b61bd092178c6bea0fcca1ca3d7d1125fe5c808")),
    ("containerd-cri/04-config.json",
     ("container", "6949dabb0cc487840338ec967b61bd092178c6bea0fcca1ca3d7d1125fe5c808")),
    ("docker/00-config.json", ("single", None)),
    ("docker/07-config.json", ("single", None)),
    ("podman/00-config.json", ("single", None)),
])
def test_sandbox_of_client_configs(fixture, expected):
    assert bundle.sandbox_of(json.loads((CLIENTS / fixture).read_text())) == expected


@pytest.mark.parametrize("annotations, expected", [
    ({"io.kubernetes.cri-o.ContainerType": "sandbox", "io.kubernetes.cri-o.SandboxID": "p1"}, ("sandbox", None)),
    ({"io.kubernetes.cri-o.ContainerType": "container", "io.kubernetes.cri-o.SandboxID": "p1"},
     ("container", "p1")),
    ({"io.kubernetes.cri-o.TTY": "false"}, ("single", None)),
    ({}, ("single", None)),
])
def test_sandbox_of_cri_o(annotations, expected):
    assert bundle.sandbox_of({"annotations": annotations}) == expected
    assert bundle.sandbox_of({}) == ("single", None)


@pytest.mark.parametrize("annotations, error, message", [
    ({"io.kubernetes.cri.container-type": "pod"}, BundleError, 'unknown container type "pod"'),
    ({"io.kubernetes.cri.container-type": "container"}, BundleError, "io.kubernetes.cri.sandbox-id is missing"),
    ({"io.kubernetes.cri-o.ContainerType": "container", "io.kubernetes.cri-o.SandboxID": "../x"},
     InvalidId, "invalid container id format"),
])
def test_sandbox_of_errors(annotations, error, message):
    with pytest.raises(error, match=message):
        bundle.sandbox_of({"annotations": annotations})


def test_hooks_of(tmp_path):
    config = {"hooks": {"prestart": [{"path": "/bin/true"}], "poststop": None}}
    assert bundle.hooks_of(config, "prestart") == [{"path": "/bin/true"}]
    assert bundle.hooks_of(config, "poststop") == []
    assert bundle.hooks_of({}, "createRuntime") == []
    with pytest.raises(BundleError, match=r"^config.json: hooks.prestart\[0\].path must be an absolute path"):
        bundle.hooks_of({"hooks": {"prestart": [{"path": "true"}]}}, "prestart")
    with pytest.raises(ValueError):
        bundle.hooks_of(config, "preStart")
