"""One root exception; subclasses carry what the CLI needs to say in runc's manner."""

from __future__ import annotations


class PellucidError(Exception):
    """Base of every error pellucid reports to its caller."""

    exit_code = 1


class ConfigError(PellucidError):
    """The runtime configuration (TOML) or a bundle's config.json is invalid."""


class AssetError(PellucidError):
    """A guest asset (kernel, root image) is missing or could not be built."""


class VMError(PellucidError):
    """The VM could not be started, or stopped answering."""

    def __init__(self, message: str, console: str = "") -> None:
        super().__init__(message)
        self.console = console


class AgentError(PellucidError):
    """The guest agent refused or failed a request."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class ContainerError(PellucidError):
    """A lifecycle command cannot be carried out on this container in its present state."""


class NotFound(ContainerError):
    """No container by that id."""


class ContainerExists(ContainerError):
    """A container by that id exists already."""


class BundleError(ConfigError):
    """A bundle, its config.json or an exec process file is missing or invalid."""


class InvalidId(ContainerError, ValueError):
    """A container id that pellucid refuses (pellucid.ids); a ValueError too, as bad input."""


class HookError(PellucidError):
    """An OCI hook could not be run, failed or timed out."""
