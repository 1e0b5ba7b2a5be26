"""The protocol's messages: every record round-trips, and every bad field is refused with
ProtocolError on the receiving side (the guest is not trusted, nor is the host by the guest)."""

import copy
import os
import subprocess
import sys

import pytest

from pellucid import messages, protocol
from pellucid.messages import ProtocolError

ADDRESS4 = messages.Address(family=4, address="10.0.0.2", prefixlen=24)
ADDRESS6 = messages.Address(family=6, address="fd00::2", prefixlen=64)
NIC = messages.Nic(name="eth0", mac="02:42:ac:11:00:02", mtu=1500, addresses=[ADDRESS4, ADDRESS6])
ROUTE = messages.Route(family=4, dst="", dst_len=0, gateway="10.0.0.1", device="eth0", scope=0)
NIC_SLOT = messages.NicSlot(slot_mac="02:70:6c:74:00:00", mac="02:42:ac:11:00:02")
PS_ENTRY = messages.PsEntry(pid=1, ppid=0, uid=0, state="S", utime=1, stime=2, start=3, cmd="sleep 9")

# One of each record, every field set (optional ones too).
SAMPLES = [
    messages.Hello(version=1, time_ns=1_700_000_000_000_000_000, template=True),
    messages.HelloResult(version=1, kernel="6.6.0", boot_id="b" * 36, rootfs_dax=True, init_ms=80, uptime_ms=90),
    NIC_SLOT,
    messages.CloneResumed(entropy=bytes(range(64)), time_ns=1_700_000_000_000_000_000, nics=[NIC_SLOT]),
    messages.Ping(),
    messages.PingResult(uptime_ms=5),
    messages.MountShare(tag=messages.SHARE_TAG),
    messages.MountShare(tag=messages.SHARE_TAG, cache="loose", msize=512000),
    messages.SyncShares(invalidate=True),
    ADDRESS4, ADDRESS6, NIC, ROUTE,
    messages.ConfigureNetwork(nics=[NIC], routes=[ROUTE], dns_relay=True),
    messages.NetworkResult(interfaces=["eth0"]),
    messages.DnsReply(query=7, data=b"\x00\x01answer"),
    messages.CreateContainer(id="c1", config={"ociVersion": "1.0.2"}, tty=True,
                             net_sysctls={"net.ipv4.ip_forward": "1"}),
    messages.ProcessResult(process=1, pid=42, agent_us=900, crun_us=700),
    messages.StartContainer(id="c1"),
    messages.CrunResult(crun_us=500),
    messages.PauseContainer(id="c1"),
    messages.ResumeContainer(id="c1"),
    messages.DeleteContainer(id="c1"),
    messages.ExecProcess(id="c1", process_spec={"args": ["sh"], "terminal": False}),
    messages.SignalProcess(process=3, signal=15, all=True),
    messages.Resize(process=3, rows=24, cols=80),
    messages.UpdateContainer(id="c1", resources={"memory": {"limit": 1 << 28}}),
    messages.Ps(id="c1"),
    PS_ENTRY,
    messages.PsResult([PS_ENTRY]),
    messages.Stats(id="c1"),
    messages.StatsResult(cpu_total=1000, cpu_user=600, cpu_kernel=400, memory_usage=1 << 20, memory_limit=0,
                         memory_cache=4096, memory_raw={"file": 4096, "anon": 8192}, pids_current=2,
                         memory_max=2 << 20, memory_failcnt=3, pids_limit=20, cpu_periods=10, cpu_throttled_periods=4,
                         cpu_throttled_time=5000, network=[messages.InterfaceStats("eth0", rx_bytes=100, tx_packets=2)]),
    messages.InterfaceStats("eth0", rx_bytes=100),
    messages.Shutdown(),
    messages.Exit(process=3, container="c1", status=137),
    messages.DnsQuery(query=7, data=b"\x12\x34query"),
    messages.Error(kind=messages.ERR_NOT_FOUND, message="no process 9"),
]
# Records that are laid out on the wire as their fields, one JSON key each.
FLAT = [s for s in SAMPLES if not isinstance(s, (messages.PsResult, messages.StatsResult, messages.InterfaceStats))]


def test_every_record_has_a_sample():
    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)
    concrete = {c for c in subclasses(messages.Record) if c not in (messages.Request, messages.Event)
                and not c.__name__.startswith("_") and c.__module__ == messages.__name__}
    assert concrete == {type(s) for s in SAMPLES}


@pytest.mark.parametrize("record", SAMPLES, ids=lambda r: type(r).__name__)
def test_round_trip(record):
    assert type(record).from_json(record.to_json()) == record
    assert repr(record).startswith(type(record).__name__ + "(")


@pytest.mark.parametrize("record", [s for s in SAMPLES if isinstance(s, messages.Request)], ids=lambda r: r.OP)
def test_requests_round_trip_through_frames(record):
    (frame,) = protocol.FrameReader().feed(record.encode(9))
    assert frame.kind == protocol.REQUEST and frame.id == 9
    op, args = messages.read_request(frame.json())
    assert messages.REQUESTS[op].from_json(args) == record


@pytest.mark.parametrize("record", [s for s in SAMPLES if isinstance(s, messages.Event)], ids=lambda r: r.EVENT)
def test_events_round_trip_through_frames(record):
    (frame,) = protocol.FrameReader().feed(record.encode())
    assert frame.kind == protocol.EVENT and frame.id == 0
    assert messages.read_event(frame.json()) == record


def test_responses_round_trip_through_frames():
    result = messages.ProcessResult(process=2, pid=77)
    ok, failed, empty = protocol.FrameReader().feed(
        messages.ok(4, result) + messages.Error(messages.ERR_CRUN, "boom").encode(5) + messages.ok(6, None))
    assert messages.ProcessResult.from_json(ok.json()["result"]) == result
    assert messages.Error.from_json(failed.json()["error"]) == messages.Error("crun", "boom")
    assert empty.json() == {"ok": True, "result": None}


def test_op_and_event_names_are_unique_and_complete():
    assert len(messages.REQUESTS) == len({c.OP for c in messages.REQUESTS.values()}) == 19
    assert all(op and messages.REQUESTS[op].OP == op for op in messages.REQUESTS)
    assert set(messages.EVENTS) == {"exit", "dns_query"}


def bad_values(f: messages.Field):
    """Values each kind of field must refuse."""
    if isinstance(f, messages.Int):
        return ["1", True, 1.5, f.low - 1, f.high + 1]
    if isinstance(f, messages.Bool):
        return [1, "true"]
    if isinstance(f, messages.Ident):
        return [1, "", ".", "..", "a/b", "a\0b", "x" * (messages.MAX_ID + 1)]
    if isinstance(f, messages.Str):
        return [1, ["x"], "x" * (f.max_len + 1)]
    if isinstance(f, messages.Bytes):
        too_short = [messages.Bytes(f.max_len).dump(b"x" * (f.min_len - 1))] if f.min_len else []
        return [1, "not base64!", "QU=D", "QUJ", "A" * ((f.max_len + 2) // 3 * 4 + 4), *too_short]
    if isinstance(f, messages.Obj):
        return [[], "x", {str(i): i for i in range(4097)}]
    if isinstance(f, messages.StrMap):
        return [[], {"kernel.panic": "1"}, {"net..x": "1"}, {"net.a/b": "1"}, {"net.x": 1}, {"net.x": "1" * 257},
                {f"net.x{i}": "1" for i in range(257)}]
    if isinstance(f, messages.Counters):
        return [[], {"file": -1}, {"file": "1"}, {"file": True}, {"x" * 65: 1}]
    if isinstance(f, messages.ListOf):
        return ["x", {}, [None], [{"bad": 1}] if isinstance(f.item, messages.Nested) else [[1]],
                [None] * (f.max_len + 1)]
    if isinstance(f, messages.Nested):
        return ["x", [], {}]
    raise AssertionError(f"no bad values for {f!r}")


def bad_fields():
    for record in FLAT:
        for name, f in type(record).FIELDS.items():
            for value in bad_values(f):
                yield pytest.param(record, name, value, id=f"{type(record).__name__}.{name}={str(value)[:20]}")
            if not f.optional:
                yield pytest.param(record, name, None, id=f"{type(record).__name__}.{name}:missing")


@pytest.mark.parametrize("record, name, value", list(bad_fields()))
def test_every_bad_field_is_refused(record, name, value):
    msg = copy.deepcopy(record.to_json())
    if value is None:
        del msg[name]
    else:
        msg[name] = value
    with pytest.raises(ProtocolError):
        type(record).from_json(msg)


@pytest.mark.parametrize("cls", [type(s) for s in SAMPLES], ids=lambda c: c.__name__)
@pytest.mark.parametrize("value", [None, [], "x", 1])
def test_a_record_is_an_object(cls, value):
    if cls in (messages.PsResult,) and value == []:
        assert cls.from_json([]) == messages.PsResult([])  # an empty list of processes
        return
    with pytest.raises(ProtocolError):
        cls.from_json(value)


def test_optional_fields_take_their_defaults():
    assert messages.CreateContainer.from_json({"id": "c", "config": {}}) == messages.CreateContainer("c", {})
    assert messages.SignalProcess.from_json({"process": 1, "signal": 9}).all is False
    assert messages.Hello.from_json({"version": 1}).time_ns is None
    request = messages.ConfigureNetwork.from_json({"nics": []})
    assert request.routes == [] and request.dns_relay is False
    # Defaults are fresh objects, never shared between records.
    request.routes.append(ROUTE)
    assert messages.ConfigureNetwork.from_json({"nics": []}).routes == []
    assert messages.Nic.from_json({"name": "eth0", "mac": "02:00:00:00:00:01"}) == \
        messages.Nic("eth0", "02:00:00:00:00:01")


def test_unknown_fields_are_ignored():
    assert messages.StartContainer.from_json({"id": "c", "later": 1}) == messages.StartContainer("c")


@pytest.mark.parametrize("address", [
    {"family": 4, "address": "fd00::1", "prefixlen": 24},
    {"family": 6, "address": "10.0.0.1", "prefixlen": 24},
    {"family": 4, "address": "10.0.0.300", "prefixlen": 24},
    {"family": 4, "address": "10.0.0.1", "prefixlen": 33},
    {"family": 5, "address": "10.0.0.1", "prefixlen": 8},
])
def test_addresses_are_checked_against_their_family(address):
    with pytest.raises(ProtocolError):
        messages.Address.from_json(address)


@pytest.mark.parametrize("change", [
    {"dst": "fd00::", "dst_len": 8}, {"gateway": "fd00::1"}, {"dst": "10.0.0.0", "dst_len": 33},
    {"dst": "nonsense"}, {"family": 5},
])
def test_routes_are_checked_against_their_family(change):
    with pytest.raises(ProtocolError):
        messages.Route.from_json({**ROUTE.to_json(), **change})


@pytest.mark.parametrize("mac", ["02:42:ac:11:00", "02:42:ac:11:00:0g", "0242ac110002", "02-42-ac-11-00-02"])
def test_mac_syntax(mac):
    with pytest.raises(ProtocolError, match="MAC"):
        messages.Nic.from_json({"name": "eth0", "mac": mac})
    for field in ("slot_mac", "mac"):
        with pytest.raises(ProtocolError, match="MAC"):
            messages.NicSlot.from_json({**NIC_SLOT.to_json(), field: mac})


def test_a_clone_gets_at_most_one_nic_per_slot():
    other = messages.NicSlot(slot_mac=NIC_SLOT.slot_mac.upper(), mac="02:42:ac:11:00:03")
    with pytest.raises(ProtocolError, match="same slot"):
        messages.CloneResumed.from_json(messages.CloneResumed(b"e" * 32, 1, [NIC_SLOT, other]).to_json())


def test_entropy_is_bounded_in_bytes():
    for n in (messages.MIN_ENTROPY, messages.MAX_ENTROPY):
        assert messages.CloneResumed.from_json(messages.CloneResumed(b"e" * n, 1).to_json()).entropy == b"e" * n
    for n in (0, messages.MIN_ENTROPY - 1, messages.MAX_ENTROPY + 1):
        with pytest.raises(ProtocolError):
            messages.CloneResumed.from_json(messages.CloneResumed(b"e" * n, 1).to_json())


def test_only_a_templates_hello_is_answered_without_a_boot_id():
    """A template never reads its boot id (each clone reads its own); any other hello's answer must
    carry one, and a template's must not: the host checks the answer against its request."""
    answer = next(s for s in SAMPLES if isinstance(s, messages.HelloResult)).to_json()
    without = {**answer, "boot_id": ""}
    assert messages.Hello(1).read_result(answer).boot_id == answer["boot_id"]
    assert messages.Hello(1, template=True).read_result(without).boot_id == ""
    assert messages.CloneResumed(b"e" * 32, 1).read_result(answer).boot_id == answer["boot_id"]
    for request, bad in ((messages.Hello(1), without), (messages.Hello(1, template=True), answer),
                         (messages.CloneResumed(b"e" * 32, 1), without)):
        with pytest.raises(ProtocolError, match="boot id"):
            request.read_result(bad)
    with pytest.raises(ProtocolError, match="boot id"):
        messages.HelloResult.from_json({**answer, "boot_id": "../x"})


def test_network_routes_name_a_configured_interface_and_names_are_unique():
    routes = [{**ROUTE.to_json(), "device": "eth1"}]
    with pytest.raises(ProtocolError, match="unknown device"):
        messages.ConfigureNetwork.from_json({"nics": [NIC.to_json()], "routes": routes})
    with pytest.raises(ProtocolError, match="same name"):
        messages.ConfigureNetwork.from_json({"nics": [NIC.to_json(), {**NIC.to_json(), "mac": "02:00:00:00:00:09"}]})


def test_nested_errors_name_the_field():
    with pytest.raises(ProtocolError, match=r"nics\[0\]"):
        messages.ConfigureNetwork.from_json({"nics": [{"name": "eth0", "mac": 5}]})


def test_ps_result_is_a_list_on_the_wire_and_every_entry_is_checked():
    wire = messages.PsResult([PS_ENTRY]).to_json()
    assert wire == [PS_ENTRY.to_json()]
    for bad in ({**PS_ENTRY.to_json(), "pid": "1"}, {**PS_ENTRY.to_json(), "state": "RUNNING"}, "x"):
        with pytest.raises(ProtocolError):
            messages.PsResult.from_json([PS_ENTRY.to_json(), bad])
    with pytest.raises(ProtocolError):
        messages.PsResult.from_json([PS_ENTRY.to_json()] * ((1 << 16) + 1))


def test_stats_result_keeps_runc_layout_and_checks_every_counter():
    stats = next(s for s in SAMPLES if isinstance(s, messages.StatsResult))
    wire = stats.to_json()
    assert wire == {"cpu": {"usage": {"total": 1000, "user": 600, "kernel": 400},
                            "throttling": {"periods": 10, "throttled_periods": 4, "throttled_time": 5000}},
                    "memory": {"usage": {"usage": 1 << 20, "max": 2 << 20, "failcnt": 3, "limit": 0}, "cache": 4096,
                               "raw": {"file": 4096, "anon": 8192}},
                    "pids": {"current": 2, "limit": 20},
                    "network_interfaces": [{"name": "eth0", "rx_bytes": 100, "rx_packets": 0, "rx_errors": 0,
                                            "rx_dropped": 0, "tx_bytes": 0, "tx_packets": 2, "tx_errors": 0,
                                            "tx_dropped": 0}]}
    assert messages.StatsResult.from_json(wire) == stats
    for path, value in ((("cpu", "usage", "total"), -1), (("memory", "usage", "limit"), "max"),
                        (("pids", "current"), None), (("memory", "raw"), {"file": -1}), (("cpu",), []),
                        (("network_interfaces",), [{"name": "eth0", "rx_bytes": -1}]),
                        (("network_interfaces",), [{"name": "x" * 65}]), (("pids", "limit"), "max")):
        bad = copy.deepcopy(wire)
        node = bad
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        with pytest.raises(ProtocolError):
            messages.StatsResult.from_json(bad)


def test_bytes_fields_bound_the_decoded_size():
    data = b"x" * messages.MAX_DNS
    assert messages.DnsQuery.from_json(messages.DnsQuery(1, data).to_json()).data == data
    with pytest.raises(ProtocolError):
        messages.DnsQuery.from_json(messages.DnsQuery(1, data + b"xxx").to_json())


def test_read_request_and_read_event():
    assert messages.read_request({"op": messages.Ping.OP}) == (messages.Ping.OP, {})
    for bad in ({}, {"op": 1}, {"op": "x" * 65}, {"op": messages.Ping.OP, "args": []}):
        with pytest.raises(ProtocolError):
            messages.read_request(bad)
    for bad in ({}, {"event": "nope"}, {"event": 3}, {"event": "exit", "process": 1}):
        with pytest.raises(ProtocolError):
            messages.read_event(bad)


def test_share_mount_point():
    assert messages.share_mount_point(messages.SHARE_TAG) == "/run/pellucid/shared/sandbox"


def test_the_guest_imports_no_typing_nor_dataclasses():
    """The guest imports these modules at boot under TCG: typing and dataclasses cost it a third of a second."""
    code = ("import sys; import pellucid.messages, pellucid.protocol; "
            "print(sorted(m for m in ('typing', 'dataclasses', 'ipaddress', 'base64') if m in sys.modules))")
    root = os.path.dirname(os.path.dirname(messages.__file__))
    out = subprocess.run([sys.executable, "-I", "-S", "-c", f"import sys; sys.path.insert(0, {root!r}); {code}"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_monitor_builds_the_network_request_from_what_the_runtime_found():
    from pellucid.host_messages import Network
    net = {"nics": [{"tap": "tap0", "device": "", "mac": "02:42:ac:11:00:02", "mtu": 1500, "name": "eth0",
                     "addresses": [{"family": 4, "address": "172.17.0.2", "prefixlen": 16}]}],
           "routes": [{"family": 4, "dst": "", "dst_len": 0, "gateway": "172.17.0.1", "scope": 0, "device": "eth0"}],
           "dns_relay": True}
    request = Network.from_dict({**net, "nics": [{**net["nics"][0], "index": 2}]}).for_guest()
    assert messages.ConfigureNetwork.from_json(request.to_json()) == request
    assert request.to_json() == {"nics": [{k: net["nics"][0][k] for k in ("name", "mac", "mtu", "addresses")}],
                                 "routes": net["routes"], "dns_relay": True}


def test_the_monitor_learns_the_process_a_creating_request_made():
    from pellucid.monitor import _created_process
    (ok, failed, bad) = protocol.FrameReader().feed(
        messages.ok(1, messages.ProcessResult(process=5, pid=9)) + messages.Error("crun", "no").encode(2)
        + protocol.response_ok(3, {"process": True, "pid": 9}))
    assert [_created_process(f) for f in (ok, failed, bad)] == [5, None, None]


def test_the_shim_checks_the_request_it_is_given():
    from pellucid.shim import creating_request
    assert creating_request("exec_process", {"id": "c", "process_spec": {}}) == messages.ExecProcess("c", {})
    with pytest.raises(ProtocolError):
        creating_request("start_container", {"id": "c"})
    with pytest.raises(ProtocolError):
        creating_request("create_container", {"id": "../c", "config": {}})


def test_guest_step_times_are_optional_and_bounded():
    """The guest's step durations only feed the timeline: absent is 0, out of range is refused."""
    assert messages.ProcessResult.from_json({"process": 1, "pid": 2}).crun_us == 0
    assert messages.StartContainer("c").read_result({}) == messages.CrunResult(0)
    for bad in (-1, messages.MAX_STEP_US + 1, "5", True):
        with pytest.raises(ProtocolError):
            messages.ProcessResult.from_json({"process": 1, "pid": 2, "crun_us": bad})
        with pytest.raises(ProtocolError):
            messages.CrunResult.from_json({"crun_us": bad})


def test_a_share_cache_mode_the_guest_does_not_offer_is_refused():
    msg = messages.MountShare(tag=messages.SHARE_TAG, cache="loose").to_json()
    assert messages.MountShare.from_json(msg).cache == "loose"
    with pytest.raises(ProtocolError, match="cache mode"):
        messages.MountShare.from_json({**msg, "cache": "fscache"})
