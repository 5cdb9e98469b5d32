"""The web layer: per-process state, request dependencies, the authenticator, hot path, routes."""
