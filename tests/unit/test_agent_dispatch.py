"""The guest agent's dispatch, without a VM: frames go in over a socket pair, responses come out;
handlers get checked request records, and every failure is answered with its error kind."""

import errno
import selectors
import signal
import socket
import time
import types

import pytest

from pellucid import messages, protocol
from pellucid.guest import containers as containers_mod
from pellucid.guest.agent import TICK_SECONDS, Agent, AgentError


class Channel:
    """The host's end of a socket pair whose other end the agent serves."""

    def __init__(self) -> None:
        self.host, guest = socket.socketpair()
        guest.setblocking(False)
        self.guest = guest
        self.agent = Agent(guest.fileno(), started_ms=12)
        self.reader = protocol.FrameReader()

    def exchange(self, data: bytes) -> list[protocol.Frame]:
        """Send ``data`` to the agent, let it dispatch, and return the frames it answers with."""
        self.host.sendall(data)
        self.agent._on_channel(selectors.EVENT_READ)
        self.agent._on_channel(selectors.EVENT_WRITE)
        frames: list[protocol.Frame] = []
        self.host.setblocking(False)  # the agent wrote its answers before we read: take what is there
        try:
            while True:
                frames += self.reader.feed(self.host.recv(1 << 20))
        except BlockingIOError:
            pass
        finally:
            self.host.setblocking(True)
        return frames

    def close(self) -> None:
        self.agent.selector.close()
        self.host.close()
        self.guest.close()


@pytest.fixture
def channel():
    ch = Channel()
    yield ch
    ch.close()


def error_of(frame: protocol.Frame) -> messages.Error:
    msg = frame.json()
    assert msg["ok"] is False
    return messages.Error.from_json(msg["error"])


def test_ping_answers_with_its_result_record(channel):
    (frame,) = channel.exchange(messages.Ping().encode(5))
    assert frame.kind == protocol.RESPONSE and frame.id == 5
    result = messages.PingResult.from_json(frame.json()["result"])
    assert result.uptime_ms >= 0


def test_handlers_get_checked_records(channel):
    seen = []

    def signal(request: messages.SignalProcess) -> None:
        seen.append(request)

    channel.agent.handle(messages.SignalProcess, signal)
    (frame,) = channel.exchange(messages.SignalProcess(process=4, signal=15, all=True).encode(1))
    assert frame.json() == {"ok": True, "result": None}
    assert seen == [messages.SignalProcess(process=4, signal=15, all=True)]
    # Defaults are filled in before the handler sees the record.
    channel.exchange(protocol.request(2, "signal_process", {"process": 4, "signal": 9}))
    assert seen[-1] == messages.SignalProcess(process=4, signal=9, all=False)


def test_a_result_record_is_sent_as_json(channel):
    channel.agent.handle(messages.ExecProcess, lambda request: messages.ProcessResult(process=2, pid=99))
    (frame,) = channel.exchange(messages.ExecProcess(id="c", process_spec={"args": ["true"]}).encode(3))
    assert frame.json() == {"ok": True, "result": {"process": 2, "pid": 99, "agent_us": 0, "crun_us": 0}}


@pytest.mark.parametrize("args, message", [
    ({"process": 4, "signal": 65}, "out of range"),
    ({"process": 4, "signal": "TERM"}, "not an integer"),
    ({"signal": 9}, "missing field 'process'"),
    ({"process": 4, "signal": 9, "all": "yes"}, "not a boolean"),
])
def test_bad_arguments_are_answered_invalid_and_never_reach_the_handler(channel, args, message):
    seen = []
    channel.agent.handle(messages.SignalProcess, seen.append)
    (frame,) = channel.exchange(protocol.request(7, "signal_process", args))
    error = error_of(frame)
    assert frame.id == 7 and error.kind == messages.ERR_INVALID and message in error.message
    assert seen == []


def test_an_unknown_or_unserved_operation_is_unsupported(channel):
    unknown, unserved = channel.exchange(protocol.request(1, "format_disk") + messages.Ps(id="c").encode(2))
    assert error_of(unknown).kind == messages.ERR_UNSUPPORTED
    assert error_of(unserved).kind == messages.ERR_UNSUPPORTED  # no Containers wired into this agent


def test_a_malformed_request_is_answered_invalid(channel):
    frames = channel.exchange(protocol.encode(protocol.REQUEST, 1, b"[1]")
                              + protocol.encode(protocol.REQUEST, 2, b'{"op": "%s", "args": []}' % messages.Ping.OP.encode()))
    assert [(f.id, error_of(f).kind) for f in frames] == [(1, "invalid"), (2, "invalid")]


def test_handler_failures_carry_their_kind(channel):
    def fail(request: messages.StartContainer) -> None:
        if request.id == "os":
            raise OSError(errno.ENOENT, "No such file or directory")
        raise AgentError(messages.ERR_CRUN, f"crun start {request.id}: failed")

    channel.agent.handle(messages.StartContainer, fail)
    crun, os_error = channel.exchange(messages.StartContainer("c1").encode(1) + messages.StartContainer("os").encode(2))
    assert error_of(crun) == messages.Error(messages.ERR_CRUN, "crun start c1: failed")
    assert error_of(os_error).kind == messages.ERR_OS


def test_hello_refuses_another_protocol_version(channel):
    (frame,) = channel.exchange(messages.Hello(version=protocol.VERSION + 1).encode(1))
    assert error_of(frame).kind == messages.ERR_VERSION


def test_events_and_responses_from_the_host_are_ignored(channel):
    assert channel.exchange(messages.Exit(1, "c", 0).encode() + messages.ok(3, None)) == []


def test_a_broken_frame_resets_the_reader_and_the_agent_serves_on(channel):
    assert channel.exchange(b"XX" + bytes(10)) == []
    (frame,) = channel.exchange(messages.Ping().encode(8))
    assert frame.id == 8 and frame.json()["ok"] is True


def test_events_are_sent_as_records(channel):
    channel.agent.emit(messages.Exit(process=3, container="c1", status=137))
    channel.agent._on_channel(selectors.EVENT_WRITE)
    (frame,) = channel.reader.feed(channel.host.recv(1 << 16))
    assert messages.read_event(frame.json()) == messages.Exit(process=3, container="c1", status=137)


class LoopEnds(Exception):
    pass


def test_an_idle_agent_sleeps_until_woken_and_ticks_only_while_a_tick_asks(channel, monkeypatch):
    """Under TCG every guest wake-up costs host CPU: with nothing pending, the loop has no timeout."""
    timeouts: list[float | None] = []
    wants = iter([True, True, False])

    def select(timeout=None):
        timeouts.append(timeout)
        if len(timeouts) == 4:
            raise LoopEnds
        return []

    monkeypatch.setattr(channel.agent.selector, "select", select)
    others: list[int] = []

    def other_tick() -> bool:
        others.append(1)
        return False

    channel.agent.on_tick.append(lambda: next(wants))
    channel.agent.on_tick.append(other_tick)
    previous = signal.getsignal(signal.SIGCHLD)
    try:
        with pytest.raises(LoopEnds):
            channel.agent.run()
    finally:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, previous)
    assert timeouts == [None, TICK_SECONDS, TICK_SECONDS, None]
    assert len(others) == 3  # every tick runs after every wake-up, whatever the others answer


def test_the_containers_tick_asks_again_only_while_an_exit_waits_for_its_output(channel, monkeypatch, tmp_path):
    monkeypatch.setattr(containers_mod, "BUNDLES", str(tmp_path))
    containers = containers_mod.Containers(channel.agent)
    assert containers._tick() is False
    proc = containers._new_process("c1", tty=False)
    assert containers._tick() is False  # running: its exit will wake the agent
    proc.status, proc.exited_at = 0, time.monotonic()
    proc.stdio = types.SimpleNamespace(drained=lambda exited_at: False, close=lambda: None)
    assert containers._tick() is True
    proc.stdio.drained = lambda exited_at: True
    assert containers._tick() is False and proc.reported
