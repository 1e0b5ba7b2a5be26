"""The host's own messages (vm.json, ready lines, a shim's request, a NIC): round trips, and
checks on reading that name the bad field."""

from __future__ import annotations

import pytest

from pellucid.host_messages import (Address, MonitorReady, Network, Nic, Route, Share, ShimReady, ShimRequest,
                                    VMDescription, VMInfo)

NIC = Nic(name="eth0", index=3, mac="02:42:a9:fe:4d:02", mtu=1500, tap="pltap0",
          addresses=[Address(family=4, address="169.254.77.2", prefixlen=24)])


@pytest.mark.parametrize("message", [
    VMDescription(id="c1", config="/etc/pellucid.toml", vcpus=2, memory_mib=512, netns="/run/netns/c1",
                  network=Network(nics=[NIC], routes=[Route(family=4, dst="", dst_len=0, gateway="169.254.77.1",
                                                            scope=0, device="eth0")], dns_relay=True),
                  shares=[Share(tag="sandbox", path="/run/pellucid/c1/vm/shared")]),
    MonitorReady(ok=True, info=VMInfo(accelerator="tcg", machine="q35", boot_ms=900, qemu_pid=42, vcpus=1)),
    MonitorReady(ok=False, error="the VM did not come up"),
    ShimRequest(monitor="/run/pellucid/c1/vm/monitor.sock", op="create_container", args={"id": "c1"},
                console_socket="/tmp/console.sock"),
    ShimReady(ok=True, process=3, guest_pid=17),
], ids=lambda m: type(m).__name__)
def test_round_trip(message):
    assert type(message).from_json(message.to_json()) == message


@pytest.mark.parametrize("text, error", [
    ("", "invalid JSON"),
    ("[]", "not a JSON object"),
    ('{"vcpus": 1}', "missing field 'id'"),
    ('{"id": "c1", "vcpus": "1"}', "field 'vcpus' has the wrong type"),
    ('{"id": "c1", "vcpus": -1}', "field 'vcpus' is negative"),
    ('{"id": "c1", "vcpus": true}', "field 'vcpus' has the wrong type"),
    ('{"id": "c1", "network": {"nics": [{"mtu": "big"}]}}', "field 'network' is invalid: field 'nics' is "
                                                              "invalid: field 'mtu' has the wrong type"),
    ('{"id": "c1", "shares": {}}', "field 'shares' has the wrong type"),
])
def test_vm_description_is_checked(text, error):
    with pytest.raises(ValueError) as err:
        VMDescription.from_json(text)
    assert str(err.value).startswith(error)


def test_unknown_fields_are_ignored_and_missing_ones_default():
    ready = ShimReady.from_json('{"ok": true, "process": 2, "from_the_future": 1}')
    assert (ready.ok, ready.process, ready.guest_pid, ready.error) == (True, 2, 0, "")
    with pytest.raises(ValueError, match="missing field 'ok'"):
        ShimReady.from_json('{"process": 2}')


def test_what_the_agent_gets_of_a_nic():
    assert NIC.for_guest() == {"name": "eth0", "mac": "02:42:a9:fe:4d:02", "mtu": 1500,
                               "addresses": [{"family": 4, "address": "169.254.77.2", "prefixlen": 24}]}
    assert Network(nics=[NIC]).for_guest().to_json()["nics"] == [NIC.for_guest()]


def test_records_refuse_unknown_fields_in_code():
    with pytest.raises(TypeError, match="unknown field 'colour'"):
        Nic(colour="red")
    with pytest.raises(AttributeError):
        NIC.colour = "red"
