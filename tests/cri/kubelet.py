"""Drive a CRI runtime the way kubelet does: its configs, its call order, its teardown.

    kubelet = Kubelet(cri, root=Path("/tmp/pcri-x/kubelet"), cgroup_root="/pcri-x")
    with kubelet.pod("web", handler="runc") as pod:
        c = pod.run_container("srv", ["httpd", "-f", "-p", "8080"])
        pod.exec(c, "wget", "-qO-", "http://127.0.0.1:8080/")

The configs carry what kubelet 1.2x sends for a BestEffort pod on a node with the cgroupfs
driver and no RuntimeClass overhead: metadata, hostname, log directory, cluster DNS, port
mappings, the io.kubernetes.* labels and annotations, the pod cgroup, namespace options
(network and IPC per pod, PID per container or, with shareProcessNamespace, per pod), seccomp
Unconfined, the default masked and read-only /proc paths, the capabilities a container adds,
and the /etc/hosts and termination-log bind mounts of the pod's kubelet directory. Pod removal
follows kubelet's order: StopContainer for each container with the grace period,
StopPodSandbox, RemoveContainer for each, RemovePodSandbox.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tests.cri.client import CriClient, pb

CLUSTER_DNS = "169.254.20.10"  # an address nothing answers on; only written to resolv.conf
DEFAULT_MASKED_PATHS = ["/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                        "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                        "/sys/firmware"]
DEFAULT_READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
GRACE_PERIOD = 5  # s; kubelet's default is 30, the test workloads stop on SIGTERM at once


def pod_namespaces(share_pid: bool = False) -> Any:
    """Network and IPC shared by the pod, PID per container (kubelet's default) or, for a pod with
    shareProcessNamespace, shared by the pod too."""
    return pb.NamespaceOption(network=pb.POD, pid=pb.POD if share_pid else pb.CONTAINER, ipc=pb.POD)


def sandbox_config(name: str, namespace: str, uid: str, *, log_directory: str, cgroup_parent: str,
                   ports: tuple[int, ...] = (), labels: dict[str, str] | None = None,
                   annotations: dict[str, str] | None = None, share_pid: bool = False) -> Any:
    """A PodSandboxConfig as kubelet generates it for a pod."""
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid=uid, namespace=namespace, attempt=0),
        hostname=name,
        log_directory=log_directory,
        dns_config=pb.DNSConfig(servers=[CLUSTER_DNS],
                                searches=[f"{namespace}.svc.cluster.local", "svc.cluster.local", "cluster.local"],
                                options=["ndots:5"]),
        port_mappings=[pb.PortMapping(protocol=pb.TCP, container_port=p) for p in ports],
        labels={"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": namespace,
                "io.kubernetes.pod.uid": uid, **(labels or {})},
        annotations={"kubernetes.io/config.seen": time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime()),
                     "kubernetes.io/config.source": "api", **(annotations or {})},
        linux=pb.LinuxPodSandboxConfig(
            cgroup_parent=cgroup_parent,
            security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pod_namespaces(share_pid),
                seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.Unconfined))),
    )


def container_config(sandbox: Any, name: str, image_id: str, user_image: str, command: list[str], *,
                     args: list[str] | None = None, env: dict[str, str] | None = None,
                     mounts: list[Any] | None = None, add_capabilities: list[str] | None = None,
                     memory_limit: int = 0) -> Any:
    """A ContainerConfig as kubelet generates it for a BestEffort container of `sandbox`'s pod;
    `add_capabilities` as the pod spec's securityContext.capabilities.add (e.g. ["NET_ADMIN"]),
    `memory_limit` (bytes) as its resources.limits.memory."""
    meta = sandbox.metadata
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name, attempt=0),
        image=pb.ImageSpec(image=image_id, user_specified_image=user_image),
        command=command,
        args=args or [],
        envs=[pb.KeyValue(key=k, value=v) for k, v in (env or {}).items()],
        mounts=mounts or [],
        labels={"io.kubernetes.container.name": name, "io.kubernetes.pod.name": meta.name,
                "io.kubernetes.pod.namespace": meta.namespace, "io.kubernetes.pod.uid": meta.uid},
        annotations={"io.kubernetes.container.hash": uuid.uuid4().hex[:8],
                     "io.kubernetes.container.restartCount": "0",
                     "io.kubernetes.container.terminationMessagePath": TERMINATION_MESSAGE_PATH,
                     "io.kubernetes.container.terminationMessagePolicy": "File",
                     "io.kubernetes.pod.terminationGracePeriod": str(GRACE_PERIOD)},
        log_path=f"{name}/0.log",
        linux=pb.LinuxContainerConfig(
            resources=pb.LinuxContainerResources(cpu_period=100000, cpu_shares=2, oom_score_adj=1000,
                                                 memory_limit_in_bytes=memory_limit),
            security_context=pb.LinuxContainerSecurityContext(
                # Kubelet sends capabilities only when the pod spec asks for some.
                capabilities=pb.Capability(add_capabilities=add_capabilities) if add_capabilities else None,
                namespace_options=sandbox.linux.security_context.namespace_options,  # the pod's
                seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.Unconfined),
                masked_paths=DEFAULT_MASKED_PATHS,
                readonly_paths=DEFAULT_READONLY_PATHS)),
    )


def cgroup_hierarchies() -> list[Path]:
    """The mounted cgroup hierarchies: each v1 controller directory, the v2 (unified) one."""
    base = Path("/sys/fs/cgroup")
    if (base / "cgroup.procs").exists():
        return [base]
    return sorted(d for d in base.iterdir() if (d / "cgroup.procs").exists())


def make_pod_cgroup(cgroup_parent: str) -> None:
    """Kubelet makes the pod's cgroup in every hierarchy before RunPodSandbox."""
    for hierarchy in cgroup_hierarchies():
        (hierarchy / cgroup_parent.strip("/")).mkdir(parents=True, exist_ok=True)


def remove_pod_cgroup(cgroup_parent: str) -> None:
    """Kubelet removes the pod's cgroup once the pod is gone; one still in use stays (a leftover)."""
    for hierarchy in cgroup_hierarchies():
        with contextlib.suppress(FileNotFoundError, OSError):
            (hierarchy / cgroup_parent.strip("/")).rmdir()


@dataclass
class Container:
    id: str
    name: str


@dataclass
class Pod:
    """One pod sandbox and the containers kubelet started in it."""

    kubelet: "Kubelet"
    handler: str
    config: Any
    dir: Path  # the pod's kubelet directory (/var/lib/kubelet/pods/<uid>)
    id: str = ""
    removed: bool = False
    containers: list[Container] = field(default_factory=list)

    @property
    def cri(self) -> CriClient:
        return self.kubelet.cri

    @property
    def name(self) -> str:
        return self.config.metadata.name

    @property
    def cgroup_parent(self) -> str:
        return self.config.linux.cgroup_parent

    def status(self) -> Any:
        return self.cri.pod_sandbox_status(self.id).status

    def ip(self) -> str:
        return self.status().network.ip

    def create_container(self, name: str, command: list[str], image: str | None = None, **kw: Any) -> Container:
        """Resolve the image as kubelet does (ImageStatus, then its id) and CreateContainer."""
        user_image = image or self.kubelet.image
        found = self.cri.image_status(user_image)
        assert found is not None, f"image {user_image} is not in the runtime (kubelet would pull it)"
        container_dir = self.dir / "containers" / name
        container_dir.mkdir(parents=True)
        termination_log = container_dir / uuid.uuid4().hex[:8]
        termination_log.touch()
        mounts = [pb.Mount(container_path="/etc/hosts", host_path=str(self.dir / "etc-hosts")),
                  pb.Mount(container_path=TERMINATION_MESSAGE_PATH, host_path=str(termination_log))]
        config = container_config(self.config, name, found.id, user_image, command, mounts=mounts, **kw)
        container = Container(self.cri.create_container(self.id, config, self.config), name)
        self.containers.append(container)
        return container

    def run_container(self, name: str, command: list[str], image: str | None = None, **kw: Any) -> Container:
        """CreateContainer then StartContainer (kubelet's startContainer)."""
        container = self.create_container(name, command, image, **kw)
        self.cri.start_container(container.id)
        return container

    def exec(self, container: Container, *cmd: str, timeout: int = 30) -> Any:
        """ExecSync; returns the response (stdout, stderr, exit_code)."""
        return self.cri.exec_sync(container.id, list(cmd), timeout)

    def check_output(self, container: Container, *cmd: str, timeout: int = 30) -> str:
        """ExecSync that must exit 0; returns its stdout as text."""
        res = self.exec(container, *cmd, timeout=timeout)
        assert res.exit_code == 0, f"{cmd} exited {res.exit_code}: {res.stderr.decode(errors='replace')}"
        return res.stdout.decode()

    def remove_container(self, container: Container) -> None:
        """Kubelet's kill then garbage collection of one container: StopContainer, RemoveContainer."""
        self.cri.stop_container(container.id, GRACE_PERIOD)
        self.cri.remove_container(container.id)
        self.containers.remove(container)

    def remove(self) -> None:
        """Kubelet's order: stop every container, stop the sandbox, remove containers, remove the
        sandbox, then the pod cgroup (kubelet's, not the runtime's)."""
        if self.removed:
            return
        if self.id:
            for container in self.containers:
                self.cri.stop_container(container.id, GRACE_PERIOD)
            self.cri.stop_pod_sandbox(self.id)
            for container in self.containers:
                self.cri.remove_container(container.id)
            self.cri.remove_pod_sandbox(self.id)
        self.removed = True
        remove_pod_cgroup(self.cgroup_parent)


class Kubelet:
    """Makes pods on one CRI endpoint, kubelet-style, and removes every pod it made."""

    def __init__(self, cri: CriClient, root: Path, cgroup_root: str, image: str, namespace: str = "default") -> None:
        self.cri = cri
        self.root = root  # holds pods/<uid> (kubelet's /var/lib/kubelet) and logs/ (/var/log/pods)
        self.cgroup_root = cgroup_root  # kubelet's /kubepods
        self.image = image  # the default workload image
        self.namespace = namespace
        self.pods: list[Pod] = []

    def new_pod(self, name: str, handler: str, ports: tuple[int, ...] = (), share_pid: bool = False) -> Pod:
        """RunPodSandbox for a new pod `name` with `handler` (`share_pid`: the pod spec's
        shareProcessNamespace); the pod is tracked for removal."""
        uid = str(uuid.uuid4())
        pod_dir = self.root / "pods" / uid
        pod_dir.mkdir(parents=True)
        (pod_dir / "etc-hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n")
        log_dir = self.root / "logs" / f"{self.namespace}_{name}_{uid}"
        log_dir.mkdir(parents=True)
        config = sandbox_config(name, self.namespace, uid, log_directory=str(log_dir), ports=ports,
                                cgroup_parent=f"{self.cgroup_root}/besteffort/pod{uid}", share_pid=share_pid)
        pod = Pod(self, handler, config, pod_dir)
        self.pods.append(pod)
        make_pod_cgroup(pod.cgroup_parent)
        pod.id = self.cri.run_pod_sandbox(config, handler)
        return pod

    @contextlib.contextmanager
    def pod(self, name: str, handler: str, ports: tuple[int, ...] = (), share_pid: bool = False) -> Iterator[Pod]:
        """A pod that is removed (kubelet's order) when the block ends, however it ends."""
        pod = self.new_pod(name, handler, ports, share_pid)
        try:
            yield pod
        finally:
            self.remove(pod)

    def remove(self, pod: Pod) -> None:
        pod.remove()
        self.pods.remove(pod)

    def remove_all(self) -> None:
        """Remove every pod still tracked; the first error is raised after trying them all."""
        errors = []
        for pod in list(self.pods):
            try:
                self.remove(pod)
            except Exception as exc:  # noqa: BLE001 - keep removing the others
                errors.append(exc)
        if errors:
            raise errors[0]
