"""The host's agent client: a request record in, its checked result record out."""

import socket

import pytest

from pellucid import messages, protocol
from pellucid.errors import AgentError, VMError
from pellucid.vm.agent_client import AgentClient


@pytest.fixture
def pair():
    host, guest = socket.socketpair()
    yield AgentClient(host), guest
    host.close()
    guest.close()


def sent_request(guest: socket.socket) -> tuple[str, dict]:
    (frame,) = protocol.FrameReader().feed(guest.recv(1 << 16))
    return messages.read_request(frame.json())


def test_a_record_call_returns_the_result_record(pair):
    client, guest = pair
    guest.sendall(messages.ok(1, messages.ProcessResult(process=3, pid=40)))  # answered before asked: id 1
    result = client.call(messages.ExecProcess("c", {"args": ["true"]}), timeout=5)
    assert result == messages.ProcessResult(process=3, pid=40)
    assert sent_request(guest) == ("exec_process", {"id": "c", "process_spec": {"args": ["true"]}})


def test_a_request_without_result_returns_none(pair):
    client, guest = pair
    guest.sendall(messages.ok(1, None))
    assert client.call(messages.PauseContainer("c"), timeout=5) is None


def test_an_invalid_result_is_a_vm_error(pair):
    client, guest = pair
    guest.sendall(protocol.response_ok(1, {"process": 0, "pid": 40}))
    with pytest.raises(VMError, match="invalid ProcessResult"):
        client.call(messages.CreateContainer("c", {}), timeout=5)


def test_a_failure_is_an_agent_error_with_its_kind(pair):
    client, guest = pair
    guest.sendall(messages.Error(messages.ERR_STOPPED, "the process has already exited").encode(1))
    with pytest.raises(AgentError, match="already exited") as info:
        client.call(messages.SignalProcess(1, 9), timeout=5)
    assert info.value.kind == messages.ERR_STOPPED
