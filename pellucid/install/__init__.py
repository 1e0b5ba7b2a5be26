"""Plugging pellucid into container engines: Docker, containerd, CRI-O and podman.

One module per engine, each a pure edit of that engine's configuration text (install, uninstall,
status), and `files` for what they share: reading, backing up, diffing and writing atomically.
Nothing here is imported on the runtime's lifecycle path.
"""

from __future__ import annotations

from ..errors import PellucidError

RUNTIME_NAME = "pellucid"


class InstallError(PellucidError):
    """A configuration file cannot be edited: invalid, of an unsupported form, or unwritable."""
