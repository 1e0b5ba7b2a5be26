"""The TOML configuration: defaults, overrides, and clear errors."""

import pytest

from pellucid import config
from pellucid.errors import ConfigError


def test_defaults_when_the_default_file_is_absent(monkeypatch):
    monkeypatch.delenv(config.ENV_PATH, raising=False)
    monkeypatch.setattr(config, "DEFAULT_PATH", "/nonexistent/pellucid.toml")
    cfg = config.load()
    assert cfg.hypervisor.machine == "q35" and cfg.hypervisor.accelerator == "auto"
    assert cfg.kernel_path == "/var/lib/pellucid/vmlinux"


def test_values_are_read_and_typed():
    cfg = config.parse('[hypervisor]\naccelerator = "tcg"\nmemory_mib = 512\nboot_timeout = 5\n'
                       '[assets]\nkernel = "/k"\n')
    assert cfg.hypervisor.accelerator == "tcg"
    assert cfg.hypervisor.memory_mib == 512
    assert cfg.hypervisor.boot_timeout == 5.0
    assert config.parse("[hypervisor]\ntcg_tb_size_mib = 0\n").hypervisor.tcg_tb_size_mib == 0  # QEMU's default
    assert cfg.kernel_path == "/k"
    assert cfg.image_path == "/var/lib/pellucid/root.img"
    assert (cfg.filesystem.cache, cfg.filesystem.volume_cache, cfg.filesystem.msize) == ("loose", "mmap", 512000)
    assert cfg.filesystem.volume_tag == "volumes" and cfg.filesystem.cache_of("volumes") == "mmap"
    fs = config.parse('[filesystem]\ncache = "mmap"\nmsize = 262144\n').filesystem
    assert (fs.cache, fs.msize, fs.volume_tag) == ("mmap", 262144, "sandbox")  # one share serves both


@pytest.mark.parametrize("text, message", [
    ('[hypervisor]\naccelerator = "hvf"', "accelerator"),
    ('[hypervisor]\nmachine = "pc"', "machine"),
    ('[hypervisor]\nvcpus = 0', "vcpus"),
    ('[hypervisor]\ntcg_tb_size_mib = 2', "tcg_tb_size_mib"),
    ('[hypervisor]\ntcg_tb_size_mib = 4096', "tcg_tb_size_mib"),
    ('[hypervisor]\nvcpus = "2"', "must be a int"),
    ('[hypervisor]\ndebug_console = 1', "must be a bool"),
    ('[hypervisor]\nnope = 1', "unknown key"),
    ('[other]\n', "unknown section"),
    ('[filesystem]\ncache = "fscache"', "filesystem.cache"),
    ('[filesystem]\nmsize = 1048576', "filesystem.msize"),
    ('[filesystem]\nvolume_cache = "fscache"', "filesystem.volume_cache"),
    ('hypervisor = 3', "must be a table"),
    ('[hypervisor\n', "config.toml|<string>"),
])
def test_invalid_configuration(text, message):
    with pytest.raises(ConfigError, match=message):
        config.parse(text)


def test_explicit_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(str(tmp_path / "none.toml"))
