"""pellucid: an OCI runtime that runs each container or pod in its own lightweight VM."""

__version__ = "0.1.0"
