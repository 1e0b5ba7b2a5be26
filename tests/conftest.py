"""Plugins for every test suite: a failed test keeps the evidence its fixtures name (tests/evidence.py)."""

pytest_plugins = ("tests.evidence",)
