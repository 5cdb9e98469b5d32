"""One route table for the hot routes: what the hot path serves is what FastAPI declares (and
OpenAPI documents), both derived from `HOT_ROUTES`; a path or method served by one and not the
other fails here."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.routing import APIRoute
from starlette.routing import Match

from app.main import API_PREFIX, create_app
from app.web.hotpath import HOT_ROUTES, HotPath
from app.web.routes import authz

SAMPLES = {"{slug}": "orders-api", "{path:path}": "some/original/path"}
HOT_HANDLERS = {
    authz.query_endpoint,
    authz.check,
    authz.forward_auth,
    authz.forward_auth_suffixed,
}


def _sample(path: str) -> str:
    for name, value in SAMPLES.items():
        path = path.replace(name, value)
    return path


def _scope(method: str, path: str) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}


@pytest.fixture(scope="module")
def api_routes() -> list[APIRoute]:
    # The enforcement router's own routes (the app mounts it under API_PREFIX, which the
    # OpenAPI test below sees).
    return [r for r in authz.router.routes if isinstance(r, APIRoute)]


@pytest.fixture(scope="module")
def hot_path() -> HotPath:
    async def unused(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not called")

    return HotPath(unused, prefix=API_PREFIX)


def test_every_declared_hot_route_is_in_the_table(api_routes: list[APIRoute]) -> None:
    declared = {
        (route.path, method)
        for route in api_routes
        if route.endpoint in HOT_HANDLERS
        for method in route.methods
    }
    table = {(r.path, m) for r in HOT_ROUTES for m in r.methods}
    assert declared == table


@pytest.mark.parametrize(("path", "method"), [(r.path, m) for r in HOT_ROUTES for m in r.methods])
def test_the_hot_path_and_fastapi_take_the_same_requests(
    api_routes: list[APIRoute], hot_path: HotPath, path: str, method: str
) -> None:
    url = _sample(path)
    taken = hot_path.route(_scope(method, API_PREFIX + url))
    assert taken is not None, f"the hot path does not serve {method} {url}"
    full = [r for r in api_routes if r.matches(_scope(method, url))[0] is Match.FULL]
    assert full, f"FastAPI declares no {method} {url}"
    assert full[0].endpoint in HOT_HANDLERS


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/authz/check"),
        ("POST", "/endpoints"),
        ("POST", "/endpoints/orders-api"),
        ("GET", "/endpoints/orders-api/query"),
        ("POST", "/endpoints/NOT_A_SLUG/query"),
        ("POST", "/endpoints/a/b/query"),
        ("TRACE", "/authz/forward"),
        ("GET", "/authz/forwarded"),
        ("POST", "/endpoints/orders-api/istio"),
    ],
)
def test_other_requests_fall_through_to_fastapi(hot_path: HotPath, method: str, path: str) -> None:
    assert hot_path.route(_scope(method, API_PREFIX + path)) is None


def test_documented_rows_are_in_openapi() -> None:
    paths = create_app().openapi()["paths"]
    for route in HOT_ROUTES:
        documented = {m.lower() for m in route.methods} & set(
            paths.get(API_PREFIX + route.path, {})
        )
        assert bool(documented) is route.documented, route
