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
from tests.cri.images import BUSYBOX_REF, PAUSE_REF, busybox_archive, pause_archive
from tests.cri.kubelet import Kubelet, Pod
from tests.cri.client import pb

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
    assert {PAUSE_REF, BUSYBOX_REF} <= tags
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


def test_removed_pods_leave_nothing(kubelet: Kubelet, containerd: CriContainerd, handler: str) -> None:
    """After kubelet removes its pods: no process, mount, state, cgroup, CNI lease or veth of theirs."""
    pods = []
    for name in ("gone-a", "gone-b"):
        pod = kubelet.new_pod(name, handler, ports=(HTTP_PORT,))
        containers = [pod.run_container("server", SERVER), pod.run_container("sleeper", SLEEPER)]
        pods.append((pod, [c.id for c in containers]))
    assert http_get(pods[0][0].ip(), HTTP_PORT) == "hello from gone-a\n"

    for pod, _ in pods:
        kubelet.remove(pod)
    assert containerd.cri is not None
    assert containerd.cri.list_pod_sandbox() == [] and containerd.cri.list_containers() == []
    for pod, container_ids in pods:
        assert containerd.pod_leftovers(pod.id, pod.cgroup_parent, container_ids) == []
    assert containerd.our_links() == []


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
