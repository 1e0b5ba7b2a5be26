"""The accelerator probe runs once for concurrent first VMs, and a verdict that only timed out is
not kept."""

from __future__ import annotations

import threading
import time

from pellucid import config
from pellucid.vm import accel
from pellucid.vm.assets import Assets

ASSETS = Assets(kernel="/k", image="/i", image_size=1, kernel_release="6", kernel_key="k1", image_key="i1")


def setup(tmp_path, monkeypatch, timed_out: bool = False, delay: float = 0.0):
    cfg = config.parse(f'[assets]\ndir = "{tmp_path}"\n')
    calls = []

    def probe(cfg, assets, run_dir):
        calls.append(threading.get_ident())
        time.sleep(delay)
        return accel.Probe(accelerator="tcg", kvm_usable=False, kvm_error="slow", key=accel.cache_key(cfg, assets),
                           probed_at=time.time(), timed_out=timed_out)

    monkeypatch.setattr(accel, "probe", probe)
    return cfg, calls


def test_concurrent_first_vms_probe_once(tmp_path, monkeypatch):
    cfg, calls = setup(tmp_path, monkeypatch, delay=0.3)
    results = []
    threads = [threading.Thread(target=lambda: results.append(accel.choose(cfg, ASSETS, str(tmp_path))[0]))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results == ["tcg"] * 4
    assert accel.cached(cfg, ASSETS) is not None


def test_a_probe_that_timed_out_is_used_but_not_cached(tmp_path, monkeypatch):
    cfg, calls = setup(tmp_path, monkeypatch, timed_out=True)
    assert accel.choose(cfg, ASSETS, str(tmp_path))[0] == "tcg"
    assert accel.cached(cfg, ASSETS) is None
    accel.choose(cfg, ASSETS, str(tmp_path))
    assert len(calls) == 2  # probed again: a busy host does not pin it to TCG
