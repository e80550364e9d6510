"""volt-spec: declarative lifecycle for KVM microVMs, with its own VMM."""
