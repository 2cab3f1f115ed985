"""The reply engine: protocol, replies (local, remote, saved), registry, turn start, worker."""
