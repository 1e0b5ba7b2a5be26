"""The guest's clone_resumed request refuses bad input before it touches the kernel's RNG or links."""

import pytest

from pellucid.guest import clone
from pellucid.guest.agent import AgentError


class FakeAgent:
    started_ms = 5


@pytest.mark.parametrize("args, kind", [
    ({"entropy": "ab" * 8, "time_ns": 1}, "invalid"),  # too few bytes to reseed from
    ({"entropy": "zz" * 64, "time_ns": 1}, "invalid"),
])
def test_bad_entropy_is_refused_before_the_rng_is_touched(args, kind, monkeypatch):
    monkeypatch.setattr(clone, "reseed", lambda entropy: pytest.fail("reseeded from bad input"))
    with pytest.raises(AgentError) as err:
        clone.resumed(FakeAgent(), args)
    assert err.value.kind == kind


def test_a_bad_mac_is_refused(monkeypatch):
    monkeypatch.setattr(clone, "reseed", lambda entropy: None)
    monkeypatch.setattr(clone.time, "clock_settime_ns", lambda clock, ns: None)
    monkeypatch.setattr(clone.os, "listdir", lambda path: [])

    class NoNetlink:
        def set_link(self, *a, **kw):
            pytest.fail("a link was changed")

        def close(self):
            pass

    import pellucid.guest.netlink as netlink
    monkeypatch.setattr(netlink, "Netlink", NoNetlink)
    for pair, kind in (({"slot_mac": "02:70:6c:74:00:00", "mac": "not-a-mac"}, "invalid"),
                       ({"slot_mac": "02:70:6c:74:00:00", "mac": "02:42:a9:fe:5b:02"}, "not_found")):
        with pytest.raises(AgentError) as err:
            clone.resumed(FakeAgent(), {"entropy": "ab" * 64, "time_ns": 1, "nics": [pair]})
        assert err.value.kind == kind
