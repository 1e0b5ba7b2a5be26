import pytest

from pellucid import ids
from pellucid.errors import ContainerError, InvalidId


@pytest.mark.parametrize("id", ["a", "abc-123", "A_b.c+d-e", "a..b", "x" * 255,
                                "6949dabb0cc487840338ec967b61bd092178c6bea0fcca1ca3d7d1125fe5c808"])
def test_valid_ids(id):
    assert ids.check(id) == id


@pytest.mark.parametrize("id, message", [
    ("", "container id cannot be empty"),
    ("x" * 256, "longer than 255 characters"),
    (".", r"invalid container id format: \. \(ids starting with '\.' are reserved\)"),
    ("..", "invalid container id format: ..  ?"),
    (".x", "reserved"),
    ("..x", "reserved"),
    ("...", "reserved"),
    ("a/b", "invalid container id format: a/b"),
    ("../etc", "invalid container id format"),
    ("a\\b", "invalid container id format"),
    ("a b", "invalid container id format"),
    ("a,b", "invalid container id format"),
    ("a\nb", r"invalid container id format: 'a\\nb'"),
    ("é", "invalid container id format"),
    (None, "not a string"),
])
def test_invalid_ids(id, message):
    with pytest.raises(InvalidId, match=message) as err:
        ids.check(id)
    # Both: the CLI reports a ContainerError; the store's callers may catch bad input as ValueError.
    assert isinstance(err.value, ContainerError) and isinstance(err.value, ValueError)
