"""Use cases, one module each; called by the daemon, calling runtime/images/store."""
