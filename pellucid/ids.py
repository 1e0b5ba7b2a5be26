"""The one rule for container ids, checked by the CLI before any path is built from an id, and by
the store and the bundle reader again (an id is a directory name under ``--root``).

runc's character rule, plus: no leading dot (the store keeps dot-names for its own entries and
temporary files), and at most NAME_MAX bytes, so that the id's directory can exist.
"""

from __future__ import annotations

from .errors import InvalidId

MAX_LENGTH = 255  # NAME_MAX: the id is the name of the container's directory
CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_+-.")


def check(id: object) -> str:
    """``id`` if it is a valid container id, else :class:`InvalidId` saying why."""
    if not isinstance(id, str):
        raise InvalidId(f"invalid container id: {type(id).__name__}, not a string")
    if not id:
        raise InvalidId("container id cannot be empty")
    if len(id) > MAX_LENGTH:
        raise InvalidId(f"invalid container id format: longer than {MAX_LENGTH} characters")
    shown = id if id.isprintable() else repr(id)
    if not CHARS.issuperset(id):
        raise InvalidId(f"invalid container id format: {shown}")
    if id.startswith("."):
        raise InvalidId(f"invalid container id format: {shown} (ids starting with '.' are reserved)")
    return id
