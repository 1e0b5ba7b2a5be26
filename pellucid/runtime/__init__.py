"""The container lifecycle on the host: what each runtime command does, over the state store,
the VM's monitor and the shims."""
