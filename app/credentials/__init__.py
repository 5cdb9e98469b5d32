"""Signing keys, access and refresh tokens, revocations and the browser-session store."""
