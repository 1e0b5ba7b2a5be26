"""Building the guest assets (kernel and root image), cached by the hash of their inputs."""
