"""The host/guest wire protocol: framing, limits, malformed and hostile input."""

import json
import random
import struct

import pytest

from pellucid import protocol


def frames(data: bytes, reader=None):
    return list((reader or protocol.FrameReader()).feed(data))


def test_round_trip_of_every_kind():
    data = (protocol.request(7, "an_op", {"a": 1}) + protocol.response_ok(7, {"x": [1, 2]})
            + protocol.response_error(8, "invalid", "bad") + protocol.event("exit", status=3)
            + protocol.stream(protocol.stream_id(5, protocol.STDOUT), b"\x00\xffbytes"))
    got = frames(data)
    assert [f.kind for f in got] == [protocol.REQUEST, protocol.RESPONSE, protocol.RESPONSE, protocol.EVENT,
                                     protocol.STREAM]
    assert got[0].json() == {"op": "an_op", "args": {"a": 1}} and got[0].id == 7
    assert got[1].json() == {"ok": True, "result": {"x": [1, 2]}}
    assert got[2].json()["error"] == {"kind": "invalid", "message": "bad"}
    assert got[3].json() == {"event": "exit", "status": 3} and got[3].id == 0
    assert got[4].payload == b"\x00\xffbytes"
    assert protocol.split_stream_id(got[4].id) == (5, protocol.STDOUT)


def test_frames_split_at_every_byte_boundary():
    data = protocol.request(1, "hello", {"version": 1}) + protocol.stream(4, b"x" * 100)
    reader = protocol.FrameReader()
    got = []
    for i in range(len(data)):
        got += list(reader.feed(data[i:i + 1]))
    assert [f.kind for f in got] == [protocol.REQUEST, protocol.STREAM]
    assert reader.pending == 0


def test_empty_stream_frame_means_eof():
    (f,) = frames(protocol.stream(9, b""))
    assert f.payload == b""


@pytest.mark.parametrize("header, message", [
    (struct.pack("!2sBBII", b"XX", protocol.VERSION, 1, 0, 0), "magic"),
    (struct.pack("!2sBBII", b"PL", protocol.VERSION - 1, 1, 0, 0), "version"),
    (struct.pack("!2sBBII", b"PL", protocol.VERSION, 9, 0, 0), "kind"),
    (struct.pack("!2sBBII", b"PL", protocol.VERSION, 1, 0, protocol.MAX_PAYLOAD + 1), "exceeds"),
    (struct.pack("!2sBBII", b"PL", protocol.VERSION, 4, 0, 0xFFFFFFFF), "exceeds"),
])
def test_malformed_headers_are_rejected_before_any_payload(header, message):
    with pytest.raises(protocol.ProtocolError, match=message):
        frames(header)


def test_oversized_frame_is_refused_by_the_sender_too():
    with pytest.raises(ValueError):
        protocol.stream(1, b"x" * (protocol.MAX_PAYLOAD + 1))


def test_reader_limit_is_configurable():
    with pytest.raises(protocol.ProtocolError):
        frames(protocol.stream(1, b"x" * 11), protocol.FrameReader(max_payload=10))


@pytest.mark.parametrize("payload", [b"not json", b"[1,2]", b"\xff\xfe", b'"str"', b"1e999999"])
def test_bad_json_payloads(payload):
    (f,) = frames(protocol.encode(protocol.REQUEST, 1, payload))
    with pytest.raises(protocol.ProtocolError):
        f.json()


def test_stream_frames_carry_no_json():
    (f,) = frames(protocol.stream(1, b"{}"))
    with pytest.raises(protocol.ProtocolError):
        f.json()


def test_credit_frames_round_trip_and_are_bounded_by_the_window():
    sid = protocol.stream_id(3, protocol.STDOUT)
    (f,) = frames(protocol.credit(sid, 4096))
    assert f.kind == protocol.CREDIT and f.id == sid and protocol.parse_credit(f) == 4096
    for bad in (protocol.credit(sid, 0), protocol.credit(sid, protocol.STREAM_WINDOW + 1),
                protocol.encode(protocol.CREDIT, sid, b"\0\0\1")):
        (f,) = frames(bad)
        with pytest.raises(protocol.ProtocolError):
            protocol.parse_credit(f)


def test_a_window_is_spent_by_sending_and_refilled_only_by_what_was_consumed():
    window = protocol.Window()
    window.take(protocol.STREAM_WINDOW - 10)
    window.take(10)
    assert window.available == 0
    with pytest.raises(protocol.ProtocolError, match="credit"):
        window.take(1)
    window.grant(100)
    window.take(0)  # an EOF frame costs nothing
    assert window.available == 100
    window.grant(protocol.STREAM_WINDOW - 100)
    with pytest.raises(protocol.ProtocolError, match="beyond"):
        window.grant(1)


def test_stream_id_validation():
    with pytest.raises(ValueError):
        protocol.stream_id(1, 3)
    with pytest.raises(protocol.ProtocolError):
        protocol.split_stream_id(7)


def test_field_checks_types_and_bounds():
    msg = {"n": 1, "b": True, "s": "x" * 10, "l": [1]}
    assert protocol.field(msg, "n", int) == 1
    assert protocol.field(msg, "b", bool) is True
    with pytest.raises(protocol.ProtocolError):
        protocol.field(msg, "b", int)  # a bool is not taken for an int
    with pytest.raises(protocol.ProtocolError):
        protocol.field(msg, "s", str, max_len=5)
    with pytest.raises(protocol.ProtocolError):
        protocol.field(msg, "missing", str)
    assert protocol.field(msg, "missing", str, optional=True, default="d") == "d"
    with pytest.raises(protocol.ProtocolError):
        protocol.field(msg, "n", str)


def test_error_messages_are_truncated():
    (f,) = frames(protocol.response_error(1, "k", "m" * 10000))
    assert len(f.json()["error"]["message"]) == 4096


def test_random_garbage_never_escapes_as_anything_but_protocol_error():
    rng = random.Random(1234)
    valid = protocol.request(1, "x") + protocol.stream(4, b"abc")
    for _ in range(2000):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data += bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
        reader = protocol.FrameReader(max_payload=4096)
        try:
            for f in reader.feed(bytes(data)):
                if f.kind in protocol.JSON_KINDS:
                    try:
                        f.json()
                    except protocol.ProtocolError:
                        pass
        except protocol.ProtocolError:
            pass
        assert reader.pending <= len(data)


def test_json_encoding_is_compact_and_valid():
    raw = protocol.request(1, "op", {"k": "v"})
    assert json.loads(raw[protocol.HEADER.size:]) == {"op": "op", "args": {"k": "v"}}
    assert b" " not in raw[protocol.HEADER.size:]
