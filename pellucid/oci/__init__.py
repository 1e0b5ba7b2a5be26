"""OCI logic that needs no VM: bundles and their config.json, the default spec, features, hooks."""
