"""Register the `clients` marker: tests that drive real dockerd, containerd and podman."""


def pytest_configure(config):
    config.addinivalue_line("markers", "clients: drives real container clients (dockerd, containerd, podman); needs root")
