"""A small CRI v1 client over a unix socket: one method per RPC the tests use.

    cri = CriClient("/tmp/pcri-x/c.sock")
    pod_id = cri.run_pod_sandbox(config, "runc")

Each call has a deadline; a failed call raises `CriError` with the method, the gRPC status
and the runtime's message. Messages are the classes of `cri_v1_pb2` (`cri.pb`).
"""

from __future__ import annotations

import os
from typing import Any

# gRPC restarts its poller threads in a forked child unless told not to; the suite's own fork()s
# (tests/unit/test_state.py) close every inherited descriptor, and that thread then aborts the child.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
import grpc  # noqa: E402

from tests.cri import stubs

pb, pb_grpc = stubs.load()


class CriError(Exception):
    """A CRI call failed: carries the method name and the gRPC status code."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        self.method, self.code, self.details = method, code, details
        super().__init__(f"CRI {method}: {code.name}: {details}")


class CriClient:
    """RuntimeService and ImageService of one CRI endpoint."""

    pb = pb

    def __init__(self, socket: str, timeout: float = 120) -> None:
        self.timeout = timeout
        # No proxy and no DNS for a unix socket; gRPC honours http_proxy unless told not to.
        self.channel = grpc.insecure_channel(f"unix://{socket}", options=[("grpc.enable_http_proxy", 0)])
        self.runtime = pb_grpc.RuntimeServiceStub(self.channel)
        self.images = pb_grpc.ImageServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def _call(self, stub: Any, method: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return getattr(stub, method)(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise CriError(method, exc.code(), exc.details()) from None

    # RuntimeService
    def version(self, timeout: float | None = None) -> Any:
        return self._call(self.runtime, "Version", pb.VersionRequest(version="v1"), timeout)

    def run_pod_sandbox(self, config: Any, runtime_handler: str) -> str:
        request = pb.RunPodSandboxRequest(config=config, runtime_handler=runtime_handler)
        return self._call(self.runtime, "RunPodSandbox", request).pod_sandbox_id

    def stop_pod_sandbox(self, pod_id: str) -> None:
        self._call(self.runtime, "StopPodSandbox", pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))

    def remove_pod_sandbox(self, pod_id: str) -> None:
        self._call(self.runtime, "RemovePodSandbox", pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))

    def pod_sandbox_status(self, pod_id: str, verbose: bool = False) -> Any:
        request = pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=verbose)
        return self._call(self.runtime, "PodSandboxStatus", request)

    def list_pod_sandbox(self, **filter: Any) -> list[Any]:
        request = pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(**filter))
        return list(self._call(self.runtime, "ListPodSandbox", request).items)

    def create_container(self, pod_id: str, config: Any, sandbox_config: Any) -> str:
        request = pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=sandbox_config)
        return self._call(self.runtime, "CreateContainer", request).container_id

    def start_container(self, container_id: str) -> None:
        self._call(self.runtime, "StartContainer", pb.StartContainerRequest(container_id=container_id))

    def stop_container(self, container_id: str, timeout: int) -> None:
        """StopContainer: SIGTERM (or the image's stop signal), SIGKILL after `timeout` s."""
        request = pb.StopContainerRequest(container_id=container_id, timeout=timeout)
        self._call(self.runtime, "StopContainer", request, self.timeout + timeout)

    def remove_container(self, container_id: str) -> None:
        self._call(self.runtime, "RemoveContainer", pb.RemoveContainerRequest(container_id=container_id))

    def list_containers(self, **filter: Any) -> list[Any]:
        request = pb.ListContainersRequest(filter=pb.ContainerFilter(**filter))
        return list(self._call(self.runtime, "ListContainers", request).containers)

    def container_status(self, container_id: str, verbose: bool = False) -> Any:
        request = pb.ContainerStatusRequest(container_id=container_id, verbose=verbose)
        return self._call(self.runtime, "ContainerStatus", request)

    def container_stats(self, container_id: str) -> Any:
        request = pb.ContainerStatsRequest(container_id=container_id)
        return self._call(self.runtime, "ContainerStats", request).stats

    def exec_sync(self, container_id: str, cmd: list[str], timeout: int = 30) -> Any:
        """ExecSync: run `cmd` in the container; the response has stdout, stderr, exit_code."""
        request = pb.ExecSyncRequest(container_id=container_id, cmd=cmd, timeout=timeout)
        return self._call(self.runtime, "ExecSync", request, timeout + 30)

    # ImageService
    def list_images(self) -> list[Any]:
        return list(self._call(self.images, "ListImages", pb.ListImagesRequest()).images)

    def image_status(self, image: str) -> Any:
        """The image known by `image` (name or id), or None (the CRI answers an empty status)."""
        response = self._call(self.images, "ImageStatus", pb.ImageStatusRequest(image=pb.ImageSpec(image=image)))
        return response.image if response.HasField("image") else None
