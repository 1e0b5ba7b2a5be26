"""Code that runs inside the VM. It imports only the standard library and pellucid.protocol."""
