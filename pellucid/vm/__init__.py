"""The VM: QEMU command line (pure), the QEMU process, QMP, the agent channel, the accelerator probe."""
