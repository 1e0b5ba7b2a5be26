"""Fixtures of the CRI tests: one private containerd per session, a kubelet per test.

The `handler` fixture parametrises a test over the CRI runtime handlers: `runc` and `pellucid`
(PELLUCID_CRI_TESTS=0 leaves pellucid's cases out; the binary is PELLUCID_CRI_BINARY, by default
this checkout's .venv/bin/pellucid). The pellucid runtime reads PELLUCID_CONFIG as always; with
PELLUCID_TEST_ASSETS_DIR (as the e2e tests take it) and no PELLUCID_CONFIG, the tests write a
configuration naming that assets directory, with a boot timeout generous for TCG.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from tests import evidence
from tests.cri.containerd import CriContainerd
from tests.cri.images import BUSYBOX_REF, busybox_archive, pause_archive
from tests.cri.kubelet import Kubelet

REPO = Path(__file__).resolve().parents[2]
PELLUCID_ENABLED = os.environ.get("PELLUCID_CRI_TESTS", "1") != "0"
PELLUCID_BINARY = os.environ.get("PELLUCID_CRI_BINARY") or str(REPO / ".venv/bin/pellucid")
VM_HANDLERS = {"pellucid"}  # handlers that give each pod its own kernel

# Left out with PELLUCID_CRI_TESTS=0: not collected, never skipped.
HANDLERS = ["runc", *([pytest.param("pellucid", marks=pytest.mark.pellucid_pod)] if PELLUCID_ENABLED else [])]


@pytest.fixture(scope="session")
def cri_image_archives(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The pause and busybox OCI archives, built once per session."""
    work = tmp_path_factory.mktemp("cri-images")
    return [pause_archive(work), busybox_archive(work)]


def runtime_env(work: Path) -> dict[str, str]:
    """PELLUCID_CONFIG for the pellucid runtime under containerd (see the module's docstring)."""
    assets = os.environ.get("PELLUCID_TEST_ASSETS_DIR")
    if os.environ.get("PELLUCID_CONFIG") or not assets:
        return {}
    config = work / "config.toml"
    config.write_text(f'[hypervisor]\nboot_timeout = 240\n\n[assets]\ndir = "{assets}"\n')
    return {"PELLUCID_CONFIG": str(config)}


@pytest.fixture(scope="session")
def containerd(cri_image_archives: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[CriContainerd]:
    """A private containerd with handlers runc and pellucid, both images imported; nothing left after it."""
    # A deadline past the runtime's boot timeout: VMs boot under TCG on a host that others load too.
    with CriContainerd({"pellucid": PELLUCID_BINARY}, env=runtime_env(tmp_path_factory.mktemp("pellucid")),
                       request_timeout=300) as cd:
        for archive in cri_image_archives:
            cd.import_image(archive)
        yield cd
    assert cd.leftovers() == []


@pytest.fixture
def kubelet(containerd: CriContainerd, request: pytest.FixtureRequest) -> Iterator[Kubelet]:
    """Makes pods on the session's containerd; removes those a test leaves, then checks the CRI is empty."""
    assert containerd.cri is not None
    evidence.keep_on_failure(request.node, *containerd.logs())
    k = Kubelet(containerd.cri, containerd.kubelet_root, containerd.cgroup_root, BUSYBOX_REF)
    try:
        yield k
    finally:
        k.remove_all()
    assert containerd.cri.list_pod_sandbox() == []


@pytest.fixture(params=HANDLERS)
def handler(request: pytest.FixtureRequest) -> str:
    """The CRI runtime handler under test."""
    return request.param
