"""Tenant-owned OpenID Connect identity providers: their configuration (client secret encrypted,
discovery validated on write), the identities they vouch for, pending sign-ins, and the IdP
tokens held server-side for browser sessions."""
