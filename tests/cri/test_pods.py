"""Pods driven through the CRI as kubelet drives them, for each runtime handler.

Every scenario runs with `runc` (the reference) and with `pellucid` (left out with
PELLUCID_CRI_TESTS=0). A pod is removed in kubelet's order when its block ends, and the `kubelet`
fixture then checks that the runtime lists no pod.
"""

from __future__ import annotations

import http.client
import ipaddress
import time
from pathlib import Path

import pytest

from tests.cri.conftest import VM_HANDLERS
from tests.cri.containerd import CriContainerd
from tests.cri.images import BUSYBOX_REF, IPTABLES_REF, PAUSE_REF, busybox_archive, pause_archive
from tests.clients import harness
from tests.clients.harness.processes import cmdline
from tests.cri.kubelet import Kubelet, Pod, cgroup_hierarchies
from tests.cri.client import CriError, pb

pytestmark = pytest.mark.cri

SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
HTTP_PORT = 8080
SERVER = ["sh", "-c", "mkdir -p /www && echo \"hello from $(hostname)\" > /www/index.html && "
          f"trap 'exit 0' TERM; httpd -f -p {HTTP_PORT} -h /www & wait"]
# Busybox wget, retried while the server in the other container starts (no -T: Debian 12's
# static busybox 1.35 wget crashes with a timeout option).
FETCH_LOCAL = ["sh", "-c", f"for i in $(seq 100); do wget -q -O- http://127.0.0.1:{HTTP_PORT}/ && exit 0; "
               "sleep 0.1; done; exit 1"]
MiB = 1024 * 1024
MESH_PORT = 80  # what istio-init redirects to its proxy; here to the pod's server on HTTP_PORT
REDIRECT_RULE = f"-A PREROUTING -p tcp -m tcp --dport {MESH_PORT} -j REDIRECT --to-ports {HTTP_PORT}"


def host_boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def http_get(ip: str, port: int, timeout: float = 30) -> str:
    """GET / from the host (no proxy), retried until the server answers or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        conn = http.client.HTTPConnection(ip, port, timeout=5)
        try:
            conn.request("GET", "/")
            response = conn.getresponse()
            assert response.status == 200, f"GET http://{ip}:{port}/ answered {response.status}"
            return response.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
        finally:
            conn.close()


def state_of(pod: Pod, container_id: str) -> int:
    return pod.cri.container_status(container_id).status.state


def test_images_are_known_to_the_cri(containerd: CriContainerd) -> None:
    """ListImages and ImageStatus see the locally built, imported pause and busybox images."""
    assert containerd.cri is not None
    tags = {tag for image in containerd.cri.list_images() for tag in image.repo_tags}
    assert {PAUSE_REF, BUSYBOX_REF, IPTABLES_REF} <= tags
    busybox = containerd.cri.image_status(BUSYBOX_REF)
    assert busybox is not None and busybox.id.startswith("sha256:") and busybox.size > 0
    assert containerd.cri.image_status("localhost/pellucid-test/absent:1") is None


def test_pod_with_two_containers(kubelet: Kubelet, handler: str) -> None:
    """RunPodSandbox, two containers created and started, their status, list and ExecSync."""
    with kubelet.pod("two", handler) as pod:
        # The sandbox is ready, with the handler asked for and an address from the tests' CNI.
        status = pod.status()
        assert status.state == pb.SANDBOX_READY
        assert status.runtime_handler == handler
        assert status.metadata.name == "two" and status.labels["io.kubernetes.pod.name"] == "two"
        assert ipaddress.IPv4Address(pod.ip()) in ipaddress.IPv4Network("169.254.160.0/20")

        # Two containers, created then started.
        first = pod.create_container("first", SLEEPER)
        assert state_of(pod, first.id) == pb.CONTAINER_CREATED
        pod.cri.start_container(first.id)
        second = pod.run_container("second", SLEEPER)
        for c in (first, second):
            status = pod.cri.container_status(c.id).status
            assert status.state == pb.CONTAINER_RUNNING, status
            assert status.metadata.name == c.name and status.started_at > 0
        listed = {c.id: c for c in pod.cri.list_containers(pod_sandbox_id=pod.id)}
        assert set(listed) == {first.id, second.id}
        assert all(c.state == pb.CONTAINER_RUNNING and c.pod_sandbox_id == pod.id for c in listed.values())

        # ExecSync: stdout, stderr and the exit code come back apart.
        res = pod.exec(first, "sh", "-c", "echo out-$(hostname); echo err >&2; exit 3")
        assert (res.stdout, res.stderr, res.exit_code) == (b"out-two\n", b"err\n", 3)
        # The pod's DNS config and kubelet's /etc/hosts bind mount reach the container.
        assert "nameserver 169.254.20.10" in pod.check_output(second, "cat", "/etc/resolv.conf")
        assert pod.check_output(second, "cat", "/etc/hosts").startswith("127.0.0.1\tlocalhost")

        # StopContainer: the workload exits 0 on SIGTERM.
        pod.cri.stop_container(second.id, 5)
        status = pod.cri.container_status(second.id).status
        assert (status.state, status.exit_code) == (pb.CONTAINER_EXITED, 0)


def test_containers_share_the_pods_namespaces(kubelet: Kubelet, handler: str) -> None:
    """Every container of a pod is in the pod's network, IPC and UTS namespaces, and, in a pod
    with shareProcessNamespace, its PID namespace: a container sees its sibling's processes."""
    show = ["sh", "-c", "for ns in net ipc uts pid; do readlink /proc/self/ns/$ns; done; hostname"]
    with kubelet.pod("together", handler, share_pid=True) as pod:
        first = pod.run_container("first", ["sh", "-c", "trap 'exit 0' TERM; sleep 3601 & wait"])
        second = pod.run_container("second", SLEEPER)
        assert pod.check_output(first, *show) == pod.check_output(second, *show)
        assert pod.check_output(second, *show).split()[-1] == "together"
        seen = pod.check_output(second, "ps", "-o", "args")
        assert "sleep 3601" in seen and "/pause" in seen, seen


def test_container_output_reaches_its_log(kubelet: Kubelet, handler: str) -> None:
    """What a container writes reaches the CRI log file kubelet reads (`kubectl logs`), a line per
    write with its stream: `<time> stdout|stderr F <text>`."""
    with kubelet.pod("logs", handler) as pod:
        pod.run_container("talker", ["sh", "-c", "echo to-stdout; echo to-stderr >&2; " + SLEEPER[-1]])
        log = Path(pod.config.log_directory) / "talker/0.log"
        want = [["stdout", "F", "to-stdout"], ["stderr", "F", "to-stderr"]]
        deadline = time.monotonic() + 30
        while True:
            lines = log.read_text().splitlines() if log.exists() else []
            entries = [line.split(" ", 3)[1:] for line in lines]
            if all(w in entries for w in want) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert all(w in entries for w in want), lines


def pod_cgroup_processes(cgroup_parent: str) -> dict[int, tuple[str, str]]:
    """The processes in the pod's memory cgroup and below it: pid -> (cgroup below the pod's,
    command line)."""
    hierarchy = next(h for h in cgroup_hierarchies() if h.name in ("memory", "cgroup"))
    pod = hierarchy / cgroup_parent.strip("/")
    out = {}
    for procs in pod.rglob("cgroup.procs"):
        below = str(procs.parent.relative_to(pod))
        for pid in map(int, procs.read_text().split()):
            out[pid] = (below, cmdline(pid))
    return out


def test_the_pods_host_processes_are_in_its_cgroup(kubelet: Kubelet, handler: str) -> None:
    """Kubelet limits and accounts a pod through its cgroup, so the pod's host processes are below
    it: with a VM handler the VM's (QEMU, its monitor, the containers' shims) in the sandbox's
    cgroupsPath, the workload being in the guest; with runc the pause and workload processes."""
    with kubelet.pod("charged", handler) as pod:
        for name in ("a", "b"):
            pod.run_container(name, SLEEPER)
        procs = pod_cgroup_processes(pod.cgroup_parent)
        commands = [cmd for _, cmd in procs.values()]
        if handler in VM_HANDLERS:
            qemu = [pid for pid, (_, cmd) in procs.items() if "qemu-system" in cmd]
            assert len(qemu) == 1 and pod.id in procs[qemu[0]][1], procs
            assert [pid for pid in harness.pids_referencing(pod.id) if "qemu-system" in cmdline(pid)] == qemu
            assert {below for below, _ in procs.values()} == {pod.id}, procs  # the sandbox's cgroupsPath
            assert len(procs) >= 5, procs  # QEMU, the monitor, a shim per container (the sandbox's too)
            assert not any(cmd.startswith("sleep 3600") for cmd in commands), procs
        else:
            assert sum(cmd.startswith("/pause") for cmd in commands) == 1, procs
            assert sum(cmd.startswith("sleep 3600") for cmd in commands) == 2, procs


def test_container_stats_memory_grows(kubelet: Kubelet, handler: str) -> None:
    """ContainerStats reports CPU and memory, and the working set grows when the container fills memory."""
    with kubelet.pod("stats", handler) as pod:
        c = pod.run_container("filler", SLEEPER)
        before = pod.cri.container_stats(c.id)
        assert before.attributes.id == c.id
        assert before.memory.working_set_bytes.value > 0
        assert before.cpu.usage_core_nano_seconds.value > 0

        # 48 MiB into the pod's /dev/shm (tmpfs, 64 MiB): charged to this container and held.
        pod.check_output(c, "dd", "if=/dev/zero", "of=/dev/shm/fill", "bs=1M", "count=48")
        after = pod.cri.container_stats(c.id)
        grown = after.memory.working_set_bytes.value - before.memory.working_set_bytes.value
        assert grown >= 40 * MiB, f"working set grew by {grown / MiB:.1f} MiB only"
        assert after.memory.timestamp > before.memory.timestamp


def test_second_container_reaches_first_over_localhost(kubelet: Kubelet, handler: str) -> None:
    """The containers of a pod share its network namespace: 127.0.0.1 is the pod's loopback."""
    with kubelet.pod("localhost", handler, ports=(HTTP_PORT,)) as pod:
        server = pod.run_container("server", SERVER)
        client = pod.run_container("client", SLEEPER)
        assert pod.check_output(client, *FETCH_LOCAL) == "hello from localhost\n"
        assert state_of(pod, server.id) == pb.CONTAINER_RUNNING


def test_server_answers_on_pod_ip_from_host(kubelet: Kubelet, handler: str) -> None:
    """The host reaches a server in the pod at the pod IP, over the veth the CNI plugin made."""
    with kubelet.pod("web", handler, ports=(HTTP_PORT,)) as pod:
        pod.run_container("server", SERVER)
        assert http_get(pod.ip(), HTTP_PORT) == "hello from web\n"


def test_removing_one_container_leaves_the_other_running(
        kubelet: Kubelet, containerd: CriContainerd, handler: str) -> None:
    """StopContainer and RemoveContainer of one container do not disturb its sibling or the pod."""
    with kubelet.pod("siblings", handler, ports=(HTTP_PORT,)) as pod:
        gone = pod.run_container("gone", SLEEPER)
        stays = pod.run_container("stays", SERVER)
        pod.remove_container(gone)

        assert [c.id for c in pod.cri.list_containers(pod_sandbox_id=pod.id)] == [stays.id]
        assert state_of(pod, stays.id) == pb.CONTAINER_RUNNING
        assert pod.status().state == pb.SANDBOX_READY
        assert pod.check_output(stays, "echo", "still-here") == "still-here\n"
        assert http_get(pod.ip(), HTTP_PORT) == "hello from siblings\n"
        # Nothing of the removed container is left while the pod runs on.
        left = [x for x in containerd.pod_leftovers(pod.id, pod.cgroup_parent, [gone.id])
                if gone.id[:12] in x]
        assert left == []


def test_a_container_too_big_for_the_pods_vm(kubelet: Kubelet, handler: str) -> None:
    """A container whose memory limit exceeds the pod's VM is refused with pellucid's own message,
    which containerd passes on from StartContainer (where it creates the task); the pod and its
    other container run on, and the refused one is removed as any. runc, on the host, runs it."""
    with kubelet.pod("big", handler) as pod:
        small = pod.run_container("small", SLEEPER)
        big = pod.create_container("big", SLEEPER, memory_limit=4 << 30)
        if handler in VM_HANDLERS:
            with pytest.raises(CriError, match=r"memory limit \(4096 MiB\) does not fit in the VM"):
                pod.cri.start_container(big.id)
            assert state_of(pod, big.id) != pb.CONTAINER_RUNNING
        else:
            pod.cri.start_container(big.id)
            assert state_of(pod, big.id) == pb.CONTAINER_RUNNING
        assert state_of(pod, small.id) == pb.CONTAINER_RUNNING
        assert pod.check_output(small, "echo", "still-here") == "still-here\n"
        pod.remove_container(big)
        assert [c.id for c in pod.cri.list_containers(pod_sandbox_id=pod.id)] == [small.id]


def test_removed_pods_leave_nothing(kubelet: Kubelet, containerd: CriContainerd, handler: str) -> None:
    """After kubelet removes its pods: no process, mount, state, cgroup, CNI lease or veth of theirs,
    and no network namespace (where a VM's tap is)."""
    pods = []
    for name in ("gone-a", "gone-b"):
        pod = kubelet.new_pod(name, handler, ports=(HTTP_PORT,))
        containers = [pod.run_container("server", SERVER), pod.run_container("sleeper", SLEEPER)]
        pods.append((pod, [c.id for c in containers]))
    assert http_get(pods[0][0].ip(), HTTP_PORT) == "hello from gone-a\n"
    namespaces = containerd.pod_netns()
    assert len(namespaces) == 2

    for pod, _ in pods:
        kubelet.remove(pod)
    assert containerd.cri is not None
    assert containerd.cri.list_pod_sandbox() == [] and containerd.cri.list_containers() == []
    for pod, container_ids in pods:
        assert containerd.pod_leftovers(pod.id, pod.cgroup_parent, container_ids) == []
    assert containerd.our_links() == [] and set(containerd.pod_netns()) & set(namespaces) == set()


def test_iptables_nat_in_the_pods_network_namespace(kubelet: Kubelet, handler: str) -> None:
    """As istio-init does: a container given NET_ADMIN in its CRI security context adds a NAT
    REDIRECT rule with `iptables -t nat -A` and lists it back. The rule is in the pod's network
    namespace: the pod's server, on HTTP_PORT, answers the host on port 80 of the pod IP; with a VM
    handler that namespace is in the pod's kernel, not the host's."""
    with kubelet.pod("mesh", handler, ports=(MESH_PORT, HTTP_PORT)) as pod:
        init = pod.run_container("mesh-init", SLEEPER, image=IPTABLES_REF, add_capabilities=["NET_ADMIN"])
        app = pod.run_container("app", SERVER, image=IPTABLES_REF)

        # Without NET_ADMIN the same tool is refused: the capability is the CRI config's doing.
        refused = pod.exec(app, "iptables", "-t", "nat", "-S")
        assert refused.exit_code != 0 and b"Permission denied" in refused.stderr, refused

        # The rule goes in with -A and comes back with -S, as written.
        pod.check_output(init, "iptables", "-t", "nat", *REDIRECT_RULE.split())
        assert REDIRECT_RULE in pod.check_output(init, "iptables", "-t", "nat", "-S", "PREROUTING").splitlines()

        # One network namespace for both containers, and the rule acts in it: the host's request to
        # port 80 of the pod IP reaches the server, which listens on HTTP_PORT only.
        read = ["sh", "-c", "readlink /proc/self/ns/net; cat /proc/sys/kernel/random/boot_id"]
        netns, boot_id = pod.check_output(init, *read).split()
        assert pod.check_output(app, *read).split() == [netns, boot_id]
        assert http_get(pod.ip(), MESH_PORT) == "hello from mesh\n"
        if handler in VM_HANDLERS:
            assert boot_id != host_boot_id(), "the rule went into the host's kernel"
        else:
            assert boot_id == host_boot_id()


def test_boot_ids(kubelet: Kubelet, handler: str) -> None:
    """runc shares the host's kernel; a VM handler gives each pod its own, shared by its containers."""
    with kubelet.pod("boot-a", handler) as a, kubelet.pod("boot-b", handler) as b:
        a1, a2 = a.run_container("one", SLEEPER), a.run_container("two", SLEEPER)
        b1 = b.run_container("one", SLEEPER)
        read = ["cat", "/proc/sys/kernel/random/boot_id"]
        ids = [a.check_output(a1, *read), a.check_output(a2, *read), b.check_output(b1, *read)]
        ids = [i.strip() for i in ids]
        if handler in VM_HANDLERS:
            assert ids[0] == ids[1], "two containers of one pod run in different kernels"
            assert ids[0] != host_boot_id(), "the pod runs in the host's kernel"
            assert ids[2] not in (ids[0], host_boot_id()), "two pods share a kernel"
        else:
            assert ids == [host_boot_id()] * 3


def test_harness_teardown_leaves_nothing(tmp_path: Path) -> None:
    """The harness's own exit removes a pod still running, containerd, the veth and the cgroups."""
    with CriContainerd(network="169.254.176.0/20") as cd:
        for archive in (pause_archive(tmp_path), busybox_archive(tmp_path)):
            cd.import_image(archive)
        assert cd.cri is not None
        kubelet = Kubelet(cd.cri, cd.kubelet_root, cd.cgroup_root, BUSYBOX_REF)
        pod = kubelet.new_pod("abandoned", "runc")
        pod.run_container("server", SERVER)
        assert http_get(pod.ip(), HTTP_PORT) == "hello from abandoned\n"
        assert cd.our_links() != []
    assert cd.leftovers() == []
