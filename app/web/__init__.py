"""The web layer: per-process state, request dependencies, the one authenticator, the hot path, routes."""
