"""The guest's clone_resumed: reseeds from the host's bytes, sets the clock, gives each NIC in a
template's slot its MAC, and answers with the clone's boot id; a NIC in no slot is refused before any
link changes (bad entropy or MACs never reach it: the record refuses them, see test_messages)."""

import pytest

from pellucid import messages
from pellucid.guest import clone
from pellucid.guest.agent import AgentError

SLOT0, SLOT1 = "02:70:6c:74:00:00", "02:70:6c:74:00:01"


class FakeAgent:
    def hello_result(self, boot_id):
        return messages.HelloResult(version=1, kernel="6.1", boot_id=boot_id, rootfs_dax=False, init_ms=1,
                                    uptime_ms=2)


class FakeNetlink:
    links: list = []

    def set_link(self, index, **kw):
        self.links.append((index, kw))

    def close(self):
        pass


@pytest.fixture
def guest(tmp_path, monkeypatch):
    """A guest with two NIC slots (eth0: slot 0, eth1: slot 1); what the clone does is recorded."""
    for i, (name, mac) in enumerate((("eth0", SLOT0), ("eth1", SLOT1))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "address").write_text(mac + "\n")
        (tmp_path / name / "ifindex").write_text(f"{i + 2}\n")
    done = {"links": []}
    monkeypatch.setattr(clone, "SYS_NET", str(tmp_path))
    monkeypatch.setattr(clone, "reseed", lambda entropy: done.setdefault("entropy", entropy))
    monkeypatch.setattr(clone.time, "clock_settime_ns", lambda clock, ns: done.setdefault("time_ns", ns))
    monkeypatch.setattr(clone, "read_boot_id", lambda: "1234abcd-0000")
    import pellucid.guest.netlink as netlink
    monkeypatch.setattr(FakeNetlink, "links", done["links"])
    monkeypatch.setattr(netlink, "Netlink", FakeNetlink)
    return done


def test_a_clone_is_reseeded_timed_and_its_nics_get_their_macs(guest):
    request = messages.CloneResumed(entropy=b"e" * 64, time_ns=7,
                                    nics=[messages.NicSlot(slot_mac=SLOT1.upper(), mac="02:42:ac:11:00:02")])
    result = clone.resumed(FakeAgent(), request)
    assert result.boot_id == "1234abcd-0000"
    assert guest["entropy"] == b"e" * 64 and guest["time_ns"] == 7
    assert guest["links"] == [(3, {"mac": bytes.fromhex("0242ac110002")})]


def test_a_nic_in_no_slot_is_refused_before_any_link_changes(guest):
    request = messages.CloneResumed(entropy=b"e" * 64, time_ns=7, nics=[
        messages.NicSlot(slot_mac=SLOT0, mac="02:42:ac:11:00:02"),
        messages.NicSlot(slot_mac="02:70:6c:74:00:09", mac="02:42:ac:11:00:03")])
    with pytest.raises(AgentError) as err:
        clone.resumed(FakeAgent(), request)
    assert err.value.kind == messages.ERR_NOT_FOUND
    assert guest["links"] == []
