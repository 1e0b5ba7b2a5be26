"""VM templates without a VM: the key, the template's and a clone's command lines, the store's checks
and the build lock."""

import hashlib
import json
import os
import threading
import time

import pytest

from pellucid.vm import template as tpl
from pellucid.vm.qemu_args import Nic, Share, VMSpec, build_argv


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
    assert pairs(cargv, "-machine")[0].startswith(f"{machine},accel={accel},")


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
    # VMs with no NIC and with one share a template (one NIC slot by default).
    assert key(spec(nics=(Nic(mac="02:00:00:00:00:01", tap="a"),))) == base


def test_file_identity_changes_when_the_file_is_replaced(tmp_path):
    f = tmp_path / "qemu"
    f.write_bytes(b"a")
    first = tpl.file_identity(str(f))
    f.unlink()
    f.write_bytes(b"bb")
    assert tpl.file_identity(str(f)) != first


def fake_template(root, key, ram=b"\0" * (1 << 20), state=b"state"):
    d = root / key
    d.mkdir(mode=0o700)
    (d / "ram").write_bytes(ram)
    (d / "state").write_bytes(state)
    manifest = {"recipe": tpl.RECIPE, "key": key, "memory_mib": len(ram) >> 20, "state_bytes": len(state),
                "state_sha256": hashlib.sha256(state).hexdigest(), "ram_sha256": hashlib.sha256(ram).hexdigest(),
                "shape": {"memory_mib": 1, "vcpus": 1, "nic_slots": 1, "share_tags": []}}
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
