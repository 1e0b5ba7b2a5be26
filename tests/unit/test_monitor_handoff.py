"""The monitor's exec after boot: what the booting monitor hands over (QEMU's pid and start time,
its channels, the listening socket, bytes already read) and how the serving monitor adopts and
stops that QEMU. A `sleep` stands for QEMU; socketpairs for its channels."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest

from pellucid import messages, monitor, procs, protocol
from pellucid.host_messages import MonitorHandoff
from pellucid.vm.adopted import AdoptedVM
from pellucid.vm.agent_client import AgentClient
from pellucid.vm.machine import VM, State


@pytest.fixture
def booted_vm(tmp_path):
    """A VM as the booting monitor holds it: a child process, an agent client that has read part
    of a frame past its last response, and a QMP socket; yields (vm, agent's peer, QMP's peer)."""
    child = subprocess.Popen(["sleep", "60"])
    agent_host, agent_peer = socket.socketpair()
    qmp_host, qmp_peer = socket.socketpair()
    vm = VM(spec=None, workdir=str(tmp_path))  # type: ignore[arg-type]
    vm.proc, vm.state, vm._start_time = child, State.RUNNING, procs.proc_start_time(child.pid) or 0
    vm.agent, vm._qmp_sock = AgentClient(agent_host), qmp_host
    partial = messages.Ping().encode(7)[:-2]
    assert list(vm.agent.reader.feed(partial)) == []
    yield vm, agent_peer, qmp_peer
    child.kill()
    child.wait()
    for s in (agent_host, agent_peer, qmp_host, qmp_peer):
        s.close()


def adopt(vm: VM, handoff: MonitorHandoff) -> AdoptedVM:
    """What the exec does: the booting side's objects are gone, the serving side owns the fds."""
    vm.agent.sock.detach()
    vm._qmp_sock.detach()
    return AdoptedVM(MonitorHandoff.from_json(handoff.to_json()))


def test_the_handoff_carries_qemu_its_channels_and_the_partial_frame(booted_vm):
    vm, _, _ = booted_vm
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    handoff = MonitorHandoff.from_json(vm.hand_over(listener.fileno()).to_json())
    assert (handoff.qemu_pid, handoff.qemu_start) == (vm.proc.pid, vm._start_time)
    assert handoff.agent_fd == vm.agent.sock.fileno() and handoff.qmp_fd == vm._qmp_sock.fileno()
    assert handoff.listener_fd == listener.fileno() and not handoff.qmp_ready
    assert bytes.fromhex(handoff.agent_pending) == messages.Ping().encode(7)[:-2]
    # Every descriptor in it survives the exec.
    assert all(os.get_inheritable(fd) for fd in (handoff.agent_fd, handoff.qmp_fd, handoff.listener_fd))
    listener.close()


def test_a_handoff_with_pending_bytes_that_are_not_hex_is_refused():
    with pytest.raises(ValueError, match="agent_pending"):
        MonitorHandoff.from_json('{"qemu_pid": 1, "qemu_start": 1, "agent_fd": 3, "qmp_fd": 4, '
                                 '"listener_fd": 5, "agent_pending": "zz"}')


def test_the_adopted_vm_resumes_the_agent_stream_where_the_boot_left_it(booted_vm):
    vm, agent_peer, _ = booted_vm
    handoff = vm.hand_over(socket.socket().detach())
    adopted = adopt(vm, handoff)
    whole = messages.Ping().encode(7)
    agent_peer.sendall(whole[-2:])
    frames = list(adopted.agent.reader.feed(adopted.agent.sock.recv(100)))
    assert [(f.kind, f.id) for f in frames] == [(protocol.REQUEST, 7)]
    os.close(handoff.listener_fd)
    adopted.proc.returncode = 0  # the fixture reaps the child
    adopted.stop()


def test_the_adopted_vm_stops_qemu_with_qmp_quit_then_reaps_it(booted_vm):
    vm, _, qmp_peer = booted_vm
    handoff = vm.hand_over(socket.socket().detach())
    handoff.qmp_ready = True  # the boot negotiated QMP: no greeting is read again
    adopted = adopt(vm, handoff)
    asked = []

    def qemu_side() -> None:
        asked.append(qmp_peer.recv(1000))
        vm.proc.terminate()  # QEMU quits as asked
        qmp_peer.sendall(b'{"return": {}}\n')

    t = threading.Thread(target=qemu_side)
    t.start()
    assert adopted.proc.poll() is None
    adopted.stop(timeout=5)
    t.join()
    assert asked == [b'{"execute": "quit"}\n']
    assert adopted.proc.returncode == -15 and adopted.proc.poll() == -15
    assert adopted.agent.sock.fileno() < 0
    os.close(handoff.listener_fd)


def test_the_adopted_vm_escalates_to_signals_when_qmp_is_gone(booted_vm):
    vm, _, qmp_peer = booted_vm
    handoff = vm.hand_over(socket.socket().detach())
    qmp_peer.close()  # no greeting will come: the polite request fails at once
    adopted = adopt(vm, handoff)
    adopted.stop(timeout=5)
    assert adopted.proc.returncode == -15
    os.close(handoff.listener_fd)


def test_the_serving_monitor_runs_with_the_interpreter_flags_it_was_started_with(monkeypatch):
    monkeypatch.setattr(sys, "orig_argv", ["python3", "-X", "importtime", "-m", "pellucid.monitor", "/d",
                                           "--ready-fd", "5"])
    assert monitor._serve_argv("/d", 9) == [sys.executable, "-X", "importtime", "-m", "pellucid.monitor", "/d",
                                            "--serve", "9"]


@pytest.mark.parametrize("argv", [[], ["/d"], ["/d", "--ready-fd"], ["/d", "--serve", "x"], ["/d", "--other", "3"]])
def test_the_monitor_refuses_a_command_line_it_does_not_know(argv):
    with pytest.raises(SystemExit, match="usage"):
        monitor._parse(argv)


@pytest.mark.parametrize("module", ["pellucid.monitor", "pellucid.shim", "pellucid.vm.adopted"])
def test_what_serves_a_vm_for_its_life_loads_no_boot_path(module):
    """The serving monitor and the shim stay resident for as long as the VM: the boot path's
    modules (configuration, templates, QEMU's command line) and typing stay out of them."""
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
                 .stdout.split())
    heavy = {"typing", "argparse", "dataclasses", "tomllib", "hashlib", "subprocess", "pellucid.config",
             "pellucid.vm.template", "pellucid.vm.cloning", "pellucid.vm.qemu_args", "pellucid.vm.machine"}
    assert not loaded & heavy
