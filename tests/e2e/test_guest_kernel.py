"""What pods commonly need from the guest kernel, exercised with the host's own tools copied into
the container: iptables in the pod's network namespace, as service meshes' init containers run it
(istio-init, linkerd proxy-init: NAT REDIRECT with NET_ADMIN), with both backends (iptables-nft over
nf_tables and nft_compat, iptables-legacy over ip_tables); FUSE, through a /dev/fuse the
container is given as containerd gives a device (linux.devices plus a device cgroup rule); and 9p
writes that reach the host as they are made on a rootfs the guest caches (pellucid's kernel patch)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.host_tools import IPTABLES_BACKENDS, add_iptables

from .oci_client import Pipes, become_subreaper, create, read_until, spawn, wait_exit

pytestmark = pytest.mark.vm

HERE = Path(__file__).resolve().parent
FUSE_DEVICE = {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o666, "uid": 0, "gid": 0}

#: Rules of the kinds service meshes and CNI plugins write, each needing its own match or target in
#: the kernel: (table, rule), with the addresses of ADDRESSES for each family.
MESH_RULES = [
    ("nat", "-N MESH_OUTPUT"),
    ("nat", "-A MESH_OUTPUT -m owner --uid-owner 1337 -j RETURN"),
    ("nat", "-A MESH_OUTPUT -m owner --gid-owner 1337 -j RETURN"),
    ("nat", "-A MESH_OUTPUT -o lo ! -d {lo} -m addrtype --dst-type LOCAL -j RETURN"),
    ("nat", "-A MESH_OUTPUT -p tcp -m multiport --dports 15020,15021 -m comment --comment mesh-ports -j RETURN"),
    ("nat", "-A MESH_OUTPUT -p udp --dport 53 -j REDIRECT --to-ports 15053"),
    ("nat", "-A MESH_OUTPUT -p tcp -d {doc1} -j DNAT --to-destination {doc2_port}"),
    ("nat", "-A POSTROUTING -o eth9 -j MASQUERADE"),
    ("nat", "-A POSTROUTING -s {doc_net} -j SNAT --to-source {doc3}"),
    ("mangle", "-A PREROUTING -p tcp -m socket --transparent -j MARK --set-mark 1337"),
    ("mangle", "-A PREROUTING -p tcp -m mark --mark 1337 -j CONNMARK --save-mark"),
    ("mangle", "-A PREROUTING -p tcp ! -d {lo} -j TPROXY --tproxy-mark 1337/0xffffffff --on-port 15006"),
    ("raw", "-A OUTPUT -p udp --dport 53 -m owner --uid-owner 1337 -j CT --zone 1"),
    ("filter", "-A INPUT -m conntrack --ctstate INVALID -j DROP"),
    ("filter", "-A INPUT -m state --state ESTABLISHED,RELATED -j ACCEPT"),
    ("filter", "-A INPUT -p tcp --dport 9 -j REJECT --reject-with tcp-reset"),
]
ADDRESSES = {
    "iptables": {"lo": "127.0.0.1/32", "doc1": "192.0.2.1", "doc2_port": "192.0.2.2:8080",
                 "doc_net": "192.0.2.0/24", "doc3": "192.0.2.3"},
    "ip6tables": {"lo": "::1/128", "doc1": "2001:db8::1", "doc2_port": "[2001:db8::2]:8080",
                  "doc_net": "2001:db8::/64", "doc3": "2001:db8::3"},
}


@pytest.fixture(autouse=True, scope="module")
def subreaper():
    become_subreaper()


@pytest.fixture(scope="module")
def tools_rootfs(busybox_template, tmp_path_factory) -> tuple[Path, list[str]]:
    """The busybox rootfs with the host's iptables and a static FUSE filesystem, fuse_hello."""
    rootfs = tmp_path_factory.mktemp("tools") / "rootfs"
    shutil.copytree(busybox_template, rootfs, symlinks=True)
    backends = add_iptables(rootfs)
    subprocess.run(["gcc", "-static", "-O2", "-o", str(rootfs / "usr/bin/fuse_hello"), str(HERE / "fuse_hello.c")],
                   check=True, capture_output=True)
    return rootfs, backends


def run(runtime, tmp_path: Path, rootfs: Path, id: str, script: str, capabilities: list[str],
        **linux) -> tuple[int, str, str]:
    """Run ``script`` in a container of its own VM with these extra capabilities and linux.* settings;
    its exit code, stdout and stderr."""
    from pellucid.oci.default_spec import default_spec
    bundle = tmp_path / id
    shutil.copytree(rootfs, bundle / "rootfs", symlinks=True)
    config = default_spec()
    caps = config["process"]["capabilities"]
    for kind in ("bounding", "effective", "permitted"):
        caps[kind] = caps[kind] + capabilities
    config["process"].update(args=["sh", "-c", script], terminal=False)
    config["root"]["readonly"] = False
    for key, value in linux.items():
        config["linux"][key] = value
    (bundle / "config.json").write_text(json.dumps(config))
    pipes = Pipes()
    pid_file = tmp_path / f"{id}.pid"
    out = spawn(runtime, "create", "--bundle", str(bundle), "--pid-file", str(pid_file), id, pipes=pipes)
    pipes.close_child_ends()
    assert out.returncode == 0, runtime.log.read_text() + runtime.evidence()
    runtime("start", id)
    stdout, stderr = pipes.read_all(timeout=240)
    code = wait_exit(int(pid_file.read_text()))
    runtime("delete", id)
    pipes.close()
    return code, stdout.decode(), stderr.decode()


def iptables_script(backend: str) -> str:
    """The shell script of the iptables test, for ``backend`` ("nft" or "legacy")."""
    lines = ["set -e", "mkdir /www && echo redirected > /www/index.html", "httpd -p 8080 -h /www"]
    for family in ("iptables", "ip6tables"):
        cmd = f"{family}-{backend}"
        lines += [f"{cmd} -t nat -A OUTPUT -p tcp --dport 80 -j REDIRECT --to-ports 8080",
                  f"echo '== {family} nat'", f"{cmd} -t nat -L OUTPUT -n"]
        lines += [f"{cmd} -t {table} {rule.format(**ADDRESSES[family])}" for table, rule in MESH_RULES]
        count = f"for t in nat mangle raw filter; do {cmd} -t $t -S; done | grep -c '^-A'"
        lines += [f"echo '== {family} rules:' $({count})"]
    lines += ["echo '== fetched:' $(wget -q -O - http://127.0.0.1:80/) $(wget -q -O - 'http://[::1]:80/')",
              "ip rule add fwmark 1337 lookup 133", "ip route add local 0.0.0.0/0 dev lo table 133",
              "echo '== policy routing:' $(ip rule | grep -c 'lookup 133')"]
    return "\n".join(lines)


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_iptables_redirect_in_the_pods_network_namespace(runtime, tmp_path, tools_rootfs, backend):
    """As istio-init does: NAT REDIRECT of port 80 to 8080 (IPv4 and IPv6) with CAP_NET_ADMIN, listed
    back with -L; a connection to port 80 really reaches the server on 8080. Then the rules of the
    kinds meshes and CNI plugins write, each needing its match or target in the guest kernel."""
    rootfs, backends = tools_rootfs
    if backend not in backends:
        pytest.fail(f"{IPTABLES_BACKENDS[backend]} not on this host (scripts/setup installs iptables)")
    code, out, err = run(runtime, tmp_path, rootfs, f"ipt-{backend}", iptables_script(backend),
                         ["CAP_NET_ADMIN", "CAP_NET_RAW"])
    assert code == 0, f"stdout:\n{out}\nstderr:\n{err}"
    for family in ("iptables", "ip6tables"):
        listing = out.split(f"== {family} nat\n")[1]
        assert re.search(r"REDIRECT +(tcp|6) .*dpt:80 redir ports 8080", listing), out
        assert f"== {family} rules: {1 + sum(rule.startswith('-A') for _, rule in MESH_RULES)}\n" in out, out
    assert "== fetched: redirected redirected\n" in out, out
    assert "== policy routing: 1\n" in out, out


def test_fuse_mount_through_a_given_dev_fuse(runtime, tmp_path, tools_rootfs):
    """The guest kernel has FUSE (its misc device, the fuse filesystem type) and virtio-fs; a container
    given /dev/fuse as containerd gives a device mounts a FUSE filesystem and reads a file from it."""
    rootfs, _ = tools_rootfs
    script = "\n".join([
        "set -e",
        "echo '== misc:' $(grep -w fuse /proc/misc)",
        "echo '== filesystems:' $(grep -wE 'fuse|virtiofs' /proc/filesystems | sort)",
        "echo '== device:' $(stat -c '%F %t:%T' /dev/fuse)",
        "mkdir /mnt/hello && fuse_hello /mnt/hello",
        "echo '== read:' $(cat /mnt/hello/hello)",
        "echo '== mounted:' $(grep -c ' /mnt/hello fuse ' /proc/mounts)",
        "umount /mnt/hello",
    ])
    resources = {"devices": [{"allow": False, "access": "rwm"},
                             {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rwm"}]}
    code, out, err = run(runtime, tmp_path, rootfs, "fuse", script, ["CAP_SYS_ADMIN"],
                         devices=[FUSE_DEVICE], resources=resources)
    assert code == 0, f"stdout:\n{out}\nstderr:\n{err}"
    assert "== misc: 229 fuse\n" in out, out
    assert "== filesystems: nodev fuse nodev virtiofs\n" in out, out
    assert "== device: character special file a:e5\n" in out, out
    assert "== read: hello from fuse\n" in out, out
    assert "== mounted: 1\n" in out, out


def test_writes_to_a_cached_rootfs_reach_the_host_as_they_are_made(runtime, make_bundle, tmp_path):
    """The rootfs is mounted cache=loose (the default); 6.1 would keep the writes in the guest's page
    cache for up to ~30 s, the patched kernel writes through: the host's rootfs has every line once
    the container says it wrote them, with no exec, exit or pause between."""
    bundle = make_bundle(["sh", "-c", "i=0; while [ $i -lt 3000 ]; do echo line $i; i=$((i+1)); done > /written; "
                                      "echo appended >> /written; echo written; read line"])
    pipes = Pipes()
    pid = create(runtime, bundle, "through", tmp_path, pipes)
    assert runtime.vm_info("through")["share_cache"] == "loose"
    runtime("start", "through")
    assert b"written\n" in read_until(pipes.stdout_r, b"written\n", timeout=120)
    expected = "".join(f"line {i}\n" for i in range(3000)) + "appended\n"
    assert (bundle / "rootfs/written").read_text() == expected
    pipes.write_stdin(b"\n")
    assert wait_exit(pid) == 0
    runtime("delete", "through")
    pipes.close()
