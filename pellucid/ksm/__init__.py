"""The KSM throttler: turns the host's same-page merging up while pellucid's VMs start, and back
down to the host's own settings when merging stops making progress."""
