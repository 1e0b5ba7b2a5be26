"""Small checked records for what the host keeps and hands between its own processes: the state
file, vm.json, the monitor's and the shim's ready lines, a shim's request.

Plain classes rather than dataclasses: they are on the path of every CLI command, which must not
import dataclasses or typing. Everything read is checked field by field (``from_dict`` /
``from_json`` raise ValueError naming the field); unknown keys are ignored, so a newer writer does
not break an older reader.
"""

from __future__ import annotations

import json


class Record:
    """Subclasses set ``FIELDS`` (name -> type) and ``__slots__ = tuple(FIELDS)``. A type is str,
    int (non-negative), bool, dict or list (JSON kept as is), a Record subclass, or ``[Sub]`` (a
    list of Sub records). Fields default to their type's empty value, except those in REQUIRED."""

    FIELDS: dict = {}
    REQUIRED: tuple = ()
    __slots__ = ()

    def __init__(self, **values: object) -> None:
        for name, kind in self.FIELDS.items():
            if name in values:
                setattr(self, name, values.pop(name))
            elif name in self.REQUIRED:
                raise TypeError(f"{type(self).__name__}: missing field {name!r}")
            else:
                setattr(self, name, _empty(kind))
        if values:
            raise TypeError(f"{type(self).__name__}: unknown field {next(iter(values))!r}")
        self._check()

    def _check(self) -> None:
        """Further checks (and derived defaults) of a subclass; raise ValueError."""

    def to_dict(self) -> dict:
        return {name: _dump(getattr(self, name)) for name in self.FIELDS}

    @classmethod
    def from_dict(cls, data: object):
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        values = {}
        for name, kind in cls.FIELDS.items():
            if name not in data:
                if name in cls.REQUIRED:
                    raise ValueError(f"missing field {name!r}")
                continue
            try:
                values[name] = _load(kind, data[name])
            except ValueError as err:
                raise ValueError(f"field {name!r} {err}") from None
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes):
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
            raise ValueError(f"invalid JSON: {err}") from None
        return cls.from_dict(data)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_dict()!r})"


def _empty(kind: object) -> object:
    if isinstance(kind, list):
        return []
    return kind()  # "", 0, False, {}, [] or an empty record


def _dump(value: object) -> object:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, list):
        return [_dump(v) for v in value]
    return value


def _load(kind: object, value: object) -> object:
    if isinstance(kind, list):
        if type(value) is not list:
            raise ValueError("has the wrong type")
        return [_load(kind[0], v) for v in value]
    if isinstance(kind, type) and issubclass(kind, Record):
        try:
            return kind.from_dict(value)
        except ValueError as err:
            raise ValueError(f"is invalid: {err}") from None
    if type(value) is not kind:
        raise ValueError("has the wrong type")
    if kind is int and value < 0:
        raise ValueError("is negative")
    return value
