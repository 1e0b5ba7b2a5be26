"""VM templates without a VM: the key, the template's and a clone's command lines, the store's checks
and the build lock."""

import hashlib
import json
import os
import threading
import time

import pytest

from pellucid import config
from pellucid.errors import PellucidError
from pellucid.vm import template as tpl
from pellucid.vm.qemu_args import Nic, Share, VMSpec, build_argv
from pellucid.vm.size_class import SizeClass


def spec(**kw):
    base = dict(qemu="/usr/bin/qemu-system-x86_64", machine="q35", accelerator="tcg", kernel="/a/vmlinux",
                image="/a/root.img", image_size=64 << 20, firmware="/usr/share/qemu/qboot.rom", agent_fd=5,
                qmp_fd=6, name="pellucid-c1", pidfile="/run/c1/qemu.pid",
                shares=(Share("sandbox", "/run/c1/shared"),))
    base.update(kw)
    return VMSpec(**base)


def pairs(argv, flag):
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


@pytest.mark.parametrize("machine, accel", [("q35", "tcg"), ("q35", "kvm"), ("microvm", "tcg"), ("microvm", "kvm")])
def test_a_clone_has_the_templates_devices_in_the_same_order(machine, accel):
    container = spec(machine=machine, accelerator=accel, nics=(Nic(mac="02:42:a9:fe:4d:02", tap="pltap0"),))
    shape = tpl.shape_of(container)
    template = tpl.template_spec(container, shape, "/t/ram", "/t/share")
    clone = tpl.clone_spec(container, shape, "/t/ram")
    assert tpl.layout_argv(template) == tpl.layout_argv(clone)
    targv, cargv = build_argv(template), build_argv(clone)
    # The template: RAM shared, NIC slot connected to nothing, 9p of an empty directory, running at once.
    assert "memory-backend-file,id=ram0,mem-path=/t/ram,size=256M,share=on" in pairs(targv, "-object")
    assert pairs(targv, "-netdev") == []
    assert pairs(targv, "-fsdev")[0].startswith("local,id=fs0,path=/t/share,")
    assert "-incoming" not in targv
    # The clone: RAM private, the container's tap in the slot, its share, waiting for the state.
    assert "memory-backend-file,id=ram0,mem-path=/t/ram,size=256M,share=off" in pairs(cargv, "-object")
    assert pairs(cargv, "-netdev") == ["tap,id=net0,ifname=pltap0,script=no,downscript=no,vhost=off"]
    assert pairs(cargv, "-fsdev")[0].startswith("local,id=fs0,path=/run/c1/shared,")
    assert cargv[-3:] == ["-S", "-incoming", "defer"]
    bus = "pci" if machine == "q35" else "device"
    # The guest saw the slot's MAC at boot; the agent gives the clone's NIC the container's.
    assert f"virtio-net-{bus},netdev=net0,mac=02:70:6c:74:00:00,host_mtu=1500" in pairs(cargv, "-device")
    assert pairs(cargv, "-cpu") == ["host" if accel == "kvm" else "max"]
    assert pairs(cargv, "-machine")[0].startswith(f"{machine},")
    assert pairs(cargv, "-accel") == [accel]


def test_unused_nic_slots_are_connected_to_nothing():
    container = spec()
    clone = tpl.clone_spec(container, tpl.Shape(256, 1, nic_slots=2, share_tags=("sandbox",)), "/t/ram")
    assert pairs(build_argv(clone), "-netdev") == []
    assert [d for d in pairs(build_argv(clone), "-device") if d.startswith("virtio-net")] == [
        "virtio-net-pci,mac=02:70:6c:74:00:00,host_mtu=1500", "virtio-net-pci,mac=02:70:6c:74:00:01,host_mtu=1500"]


@pytest.mark.parametrize("change, why", [
    (dict(memory_mib=512), "size"), (dict(vcpus=2), "size"),
    (dict(nics=(Nic(mac="02:00:00:00:00:01", tap="a"), Nic(mac="02:00:00:00:00:02", tap="b"))), "NICs"),
    (dict(nics=(Nic(mac="02:00:00:00:00:01", tap="a", mtu=9000),)), "MTU"),
    (dict(shares=()), "shares"), (dict(shares=(Share("sandbox", "/x", readonly=True),)), "shares"),
])
def test_a_vm_that_does_not_fit_the_template_is_refused(change, why):
    shape = tpl.Shape(256, 1, nic_slots=1, share_tags=("sandbox",))
    assert why in tpl.fits(spec(**change), shape)
    with pytest.raises(tpl.TemplateError):
        tpl.clone_spec(spec(**change), shape, "/t/ram")
    assert tpl.fits(spec(), shape) == ""


def test_the_key_covers_what_must_match_and_nothing_per_clone():
    def key(s, qemu="q:1", kernel="k:1", image="i:1"):
        shape = tpl.shape_of(s)
        return tpl.template_key(tpl.layout_argv(tpl.template_spec(s, shape, "RAM", "SHARE")), qemu, kernel, image)

    base = key(spec())
    # Per-clone parts: name, pid file, channels, console, NIC backends and MACs, share paths.
    assert key(spec(name="other", pidfile="/x", agent_fd=9, qmp_fd=10, console_file="/c",
                    shares=(Share("sandbox", "/elsewhere"),))) == base
    assert key(spec(nics=(Nic(mac="02:00:00:00:00:09", tap="x"),))) == key(spec(nics=(Nic(mac="02:00:00:00:00:01", fd=7),)))
    # What must match: binaries and assets, accelerator, CPU, machine, size, devices.
    others = [key(spec(), qemu="q:2"), key(spec(), kernel="k:2"), key(spec(), image="i:2"),
              key(spec(accelerator="kvm")), key(spec(machine="microvm")), key(spec(memory_mib=512)),
              key(spec(vcpus=2)), key(spec(nics=(Nic(mac="02:00:00:00:00:01", tap="a"),) * 2)),
              key(spec(shares=(Share("other", "/x"),))), key(spec(debug=True)), key(spec(image_size=128 << 20))]
    assert len({base, *others}) == len(others) + 1
    # TCG's code cache cap is QEMU's, not the guest's: not migrated, so a clone may have its own.
    assert key(spec(tcg_tb_size_mib=16)) == base
    # VMs with no NIC and with one share a template (one NIC slot by default).
    assert key(spec(nics=(Nic(mac="02:00:00:00:00:01", tap="a"),))) == base


def test_file_identity_changes_when_the_file_is_replaced(tmp_path):
    f = tmp_path / "qemu"
    f.write_bytes(b"a")
    first = tpl.file_identity(str(f))
    f.unlink()
    f.write_bytes(b"bb")
    assert tpl.file_identity(str(f)) != first


def fake_template(root, key, ram=b"\0" * (1 << 20), state=b"state", shape=tpl.Shape(1, 1, 1, ()), accelerator="tcg"):
    d = root / key
    d.mkdir(mode=0o700)
    (d / "ram").write_bytes(ram)
    (d / "state").write_bytes(state)
    manifest = {"recipe": tpl.RECIPE, "key": key, "memory_mib": len(ram) >> 20, "state_bytes": len(state),
                "state_sha256": hashlib.sha256(state).hexdigest(), "ram_sha256": hashlib.sha256(ram).hexdigest(),
                "accelerator": accelerator,
                "shape": {"memory_mib": shape.memory_mib, "vcpus": shape.vcpus, "nic_slots": shape.nic_slots,
                          "share_tags": list(shape.share_tags)}}
    (d / "manifest.json").write_text(json.dumps(manifest))
    for name in ("ram", "state", "manifest.json"):
        os.chmod(d / name, 0o600)
    return tpl.load(str(root), key)


def test_a_valid_template_has_no_problems_and_lists(tmp_path):
    t = fake_template(tmp_path, "k1")
    assert tpl.problems(t, full=True) == []
    assert [x.key for x in tpl.list_templates(str(tmp_path))] == ["k1"]
    assert t.shape == tpl.Shape(1, 1, 1, ())


def test_damage_is_found(tmp_path):
    t = fake_template(tmp_path, "k1")
    with open(t.ram, "r+b") as f:
        f.write(b"x")
    assert tpl.problems(t, full=False) == []  # the RAM is hashed only in a full check
    assert tpl.problems(t, full=True) == ["ram: checksum mismatch"]
    (tmp_path / "k1" / "state").write_bytes(b"STATE")
    assert tpl.problems(t, full=False) == ["state: checksum mismatch"]
    os.chmod(t.state, 0o644)
    assert "not a private regular file" in tpl.problems(t, full=False)[0]
    os.truncate(t.ram, 4096)
    assert any("ram: 4096 bytes" in p for p in tpl.problems(t, full=False))
    other = tpl.Template(t.dir, "k2", t.manifest)
    assert tpl.problems(other, full=False) == ["built by another recipe or for another key"]


def test_remove(tmp_path):
    fake_template(tmp_path, "k1")
    assert tpl.remove(str(tmp_path), "k1") is True
    assert tpl.list_templates(str(tmp_path)) == [] and not list(tmp_path.iterdir())
    assert tpl.remove(str(tmp_path), "k1") is False
    with pytest.raises(tpl.TemplateError):
        tpl.remove(str(tmp_path), "../etc")


def test_the_store_refuses_a_directory_of_someone_else(tmp_path):
    target = tmp_path / "real"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(tpl.TemplateError):
        tpl._private_dir(str(tmp_path / "link"))
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o777)
    tpl._private_dir(str(open_dir))
    assert os.stat(open_dir).st_mode & 0o777 == 0o700


def test_concurrent_first_builders_wait_for_one_build(tmp_path, monkeypatch):
    """Four callers need the same missing template at once: one builds, the others wait and use it."""
    builds = []
    factory = tpl.Factory(str(tmp_path / "templates"))
    monkeypatch.setattr(factory, "key", lambda s, shape: "k1")

    def build(s, shape, key):
        builds.append(key)
        time.sleep(0.3)
        return fake_template(tmp_path / "templates", key)

    monkeypatch.setattr(factory, "_build", build)
    got = []
    threads = [threading.Thread(target=lambda: got.append(factory.ensure(spec()))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert builds == ["k1"] and len(got) == 4 and {t.key for t in got} == {"k1"}
    assert os.stat(tmp_path / "templates").st_mode & 0o777 == 0o700


def test_an_invalid_template_is_rebuilt(tmp_path, monkeypatch):
    factory = tpl.Factory(str(tmp_path))
    monkeypatch.setattr(factory, "key", lambda s, shape: "k1")
    t = fake_template(tmp_path, "k1")
    (tmp_path / "k1" / "state").write_bytes(b"other")
    rebuilt = []
    monkeypatch.setattr(factory, "_build", lambda s, shape, key: rebuilt.append(key) or t)
    factory.ensure(spec())
    assert rebuilt == ["k1"]


def test_the_template_is_built_with_qemus_code_cache_and_a_clone_has_its_own_cap():
    container = spec(tcg_tb_size_mib=32)
    shape = tpl.shape_of(container)
    assert pairs(build_argv(tpl.template_spec(container, shape, "/t/ram", "/t/share")), "-accel") == ["tcg"]
    assert pairs(build_argv(tpl.clone_spec(container, shape, "/t/ram")), "-accel") == ["tcg,tb-size=32"]


def test_a_new_template_replaces_the_stale_ones_of_its_kind(tmp_path, monkeypatch):
    """Built for the same shape and accelerator under another key (new assets, QEMU, protocol...),
    the old template goes; those of another size or accelerator stay."""
    fake_template(tmp_path, "old")
    fake_template(tmp_path, "big", shape=tpl.Shape(2, 1, 1, ()))
    fake_template(tmp_path, "kvm", accelerator="kvm")
    factory = tpl.Factory(str(tmp_path))
    monkeypatch.setattr(factory, "key", lambda s, shape: "new")
    monkeypatch.setattr(factory, "_build", lambda s, shape, key: fake_template(tmp_path, key))
    assert factory.ensure(spec()).key == "new"
    assert [t.key for t in tpl.list_templates(str(tmp_path))] == ["big", "kvm", "new"]
    assert not (tmp_path / ".old.lock").exists()


@pytest.fixture
def host_files(tmp_path):
    """A configuration whose QEMU binary, kernel and root image are files of the test's own."""
    for name in ("qemu", "vmlinux", "root.img"):
        (tmp_path / name).write_bytes(name.encode())
    text = (f'[hypervisor]\npath = "{tmp_path}/qemu"\n'
            f'[assets]\nkernel = "{tmp_path}/vmlinux"\nimage = "{tmp_path}/root.img"\n')
    return config.parse(text), tmp_path


def current(cfg, store, shape, accelerator="tcg"):
    """A template under the key this configuration gives its shape now."""
    s = tpl.class_spec(cfg, accelerator, SizeClass(shape.memory_mib, shape.vcpus), shape.share_tags)
    return fake_template(store, tpl.Factory(str(store)).key(s, shape), shape=shape, accelerator=accelerator)


def test_stale_templates_are_those_whose_key_no_longer_matches(host_files):
    cfg, files = host_files
    store = files / "store"
    store.mkdir(mode=0o700)
    small, big = tpl.Shape(256, 1, 1, ("sandbox",)), tpl.Shape(512, 2, 1, ("sandbox",))
    fresh = [current(cfg, store, small), current(cfg, store, big), current(cfg, store, small, "kvm")]
    fake_template(store, "0" * 32, shape=small)  # built from something else: another key for the same shape
    assert [t.key for t in tpl.stale(cfg, str(store))] == ["0" * 32]
    # The root image is rebuilt (a new file): every template made from the old one is stale.
    (files / "root.img").unlink()
    (files / "root.img").write_bytes(b"new image")
    assert sorted(t.key for t in tpl.stale(cfg, str(store))) == sorted(["0" * 32, *(t.key for t in fresh)])


def test_a_template_of_another_recipe_is_stale(host_files):
    cfg, files = host_files
    store = files / "store"
    store.mkdir(mode=0o700)
    t = current(cfg, store, tpl.Shape(256, 1, 1, ("sandbox",)))
    manifest = dict(t.manifest, recipe="template-0")
    (store / t.key / "manifest.json").write_text(json.dumps(manifest))
    assert [s.key for s in tpl.stale(cfg, str(store))] == [t.key]


def test_nothing_is_known_stale_without_the_assets(host_files):
    cfg, files = host_files
    store = files / "store"
    store.mkdir(mode=0o700)
    current(cfg, store, tpl.Shape(256, 1, 1, ("sandbox",)))
    (files / "vmlinux").unlink()
    with pytest.raises(PellucidError, match="kernel"):
        tpl.stale(cfg, str(store))
