"""Gateway configuration for one endpoint: nginx, Envoy and Traefik snippets that ask Warden's
`/api/v1/authz/forward` about every request (docs/gateways.md has the full files)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from app.endpoints.models import Endpoint

FORWARD_PATH = "/api/v1/authz/forward"


@dataclass(frozen=True)
class Snippet:
    """One gateway's configuration text."""

    gateway: str
    language: str
    text: str


def _warden(public_url: str) -> tuple[str, int, str]:
    parts = urlsplit(public_url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return host, port, f"{parts.scheme or 'http'}://{host}:{port}"


def gateway_snippets(endpoint: Endpoint, public_url: str) -> list[Snippet]:
    """The nginx, Envoy and Traefik snippets for `endpoint` (its host and path prefix)."""
    host = endpoint.host or "api.example.com"
    prefix = endpoint.path_prefix or "/"
    upstream = endpoint.upstream_url or "http://127.0.0.1:9000"
    warden_host, warden_port, warden = _warden(public_url)
    nginx = f"""# nginx: ask Warden about every request to {host}{prefix}
upstream warden {{ server {warden_host}:{warden_port}; keepalive 16; }}

server {{
    listen 80;
    server_name {host};

    location = /_warden {{
        internal;
        proxy_pass http://warden{FORWARD_PATH};
        proxy_pass_request_body off;
        proxy_set_header Content-Length "";
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header X-Forwarded-Host $host;
        proxy_set_header X-Forwarded-Uri $request_uri;
        proxy_set_header X-Forwarded-Method $request_method;
    }}

    location {prefix} {{
        auth_request /_warden;
        auth_request_set $warden_user_id $upstream_http_x_user_id;
        auth_request_set $warden_user_email $upstream_http_x_user_email;
        auth_request_set $warden_tenant $upstream_http_x_tenant;
        proxy_set_header X-User-ID $warden_user_id;
        proxy_set_header X-User-Email $warden_user_email;
        proxy_set_header X-Tenant $warden_tenant;
        proxy_pass {upstream};
    }}
}}
"""
    envoy = f"""# Envoy: the HTTP ext_authz filter of the listener serving {host}
http_filters:
  - name: envoy.filters.http.ext_authz
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
      transport_api_version: V3
      failure_mode_allow: false
      http_service:
        server_uri:
          uri: {warden}
          cluster: warden
          timeout: 2s
        path_prefix: {FORWARD_PATH}
        authorization_response:
          allowed_upstream_headers:
            patterns:
              - exact: x-user-id
              - exact: x-user-email
              - exact: x-tenant
  - name: envoy.filters.http.router
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""
    router = endpoint.slug
    traefik = f"""# Traefik (dynamic configuration): forwardAuth for {host}{prefix}
http:
  middlewares:
    warden:
      forwardAuth:
        address: {warden}{FORWARD_PATH}
        authResponseHeaders: [X-User-ID, X-User-Email, X-Tenant]
  routers:
    {router}:
      rule: Host(`{host}`) && PathPrefix(`{prefix}`)
      middlewares: [warden]
      service: {router}
  services:
    {router}:
      loadBalancer:
        servers:
          - url: {upstream}
"""
    return [
        Snippet("nginx", "nginx", nginx),
        Snippet("Envoy", "yaml", envoy),
        Snippet("Traefik", "yaml", traefik),
    ]
