"""The `warden` command line: migrate, create tenants, rotate keys, serve."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import typer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings, get_settings
from app.core.crypto import KeyRing, generate_master_key
from app.core.db import make_engine

cli = typer.Typer(
    help="Warden: multi-tenant access control.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
tenant_cli = typer.Typer(help="Tenants.", no_args_is_help=True)
keys_cli = typer.Typer(help="Signing and encryption keys.", no_args_is_help=True)
cli.add_typer(tenant_cli, name="tenant")
cli.add_typer(keys_cli, name="keys")
audit_cli = typer.Typer(
    help="The audit trail: verify its hash chains, prune old events.", no_args_is_help=True
)
cli.add_typer(audit_cli, name="audit")

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent


def _run_in_session(work: Callable[[AsyncSession, Settings], Awaitable[T]]) -> T:
    from app import models  # noqa: F401  (every table mapped before the first query)

    settings = get_settings()

    async def runner() -> T:
        engine = make_engine(settings.database_url)
        try:
            async with async_sessionmaker(engine, expire_on_commit=False)() as session:
                async with session.begin():
                    return await work(session, settings)
        finally:
            await engine.dispose()

    return asyncio.run(runner())


def _run_with_sessionmaker(
    work: Callable[[async_sessionmaker[AsyncSession], Settings], Awaitable[T]],
) -> T:
    """Like `_run_in_session`, for work that opens its own short transactions."""
    from app import models  # noqa: F401  (every table mapped before the first query)

    settings = get_settings()

    async def runner() -> T:
        engine = make_engine(settings.database_url)
        try:
            return await work(async_sessionmaker(engine, expire_on_commit=False), settings)
        finally:
            await engine.dispose()

    return asyncio.run(runner())


def run_migrations(database_url: str | None = None) -> None:
    """Apply every alembic migration (the only way the schema is made)."""
    from alembic import command
    from alembic.config import Config

    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    if database_url:
        config.attributes["database_url"] = database_url
    command.upgrade(config, "head")


@cli.command()
def migrate() -> None:
    """Apply database migrations."""
    run_migrations()
    typer.echo("migrations applied")


@tenant_cli.command("create")
def tenant_create(
    slug: str,
    owner_email: str = typer.Option(..., "--owner-email", help="Email of the first owner."),
    name: str = typer.Option("", "--name", help="Display name (defaults to the slug)."),
    password: str = typer.Option(
        "", "--password", envvar="WARDEN_OWNER_PASSWORD", help="Generated when omitted."
    ),
    if_missing: bool = typer.Option(False, "--if-missing", help="Do nothing if it exists."),
) -> None:
    """Create a tenant and its owner; prints the owner's credentials once."""
    from app.audit.service import SYSTEM
    from app.auth.service import create_tenant_with_owner
    from app.core.errors import AppError
    from app.tenants.service import get_by_slug

    chosen = password or secrets.token_urlsafe(18)

    async def work(session: AsyncSession, _settings: Settings) -> bool:
        if if_missing and await get_by_slug(session, slug) is not None:
            return False
        await create_tenant_with_owner(
            session,
            slug=slug,
            name=name or slug,
            owner_email=owner_email,
            owner_password=chosen,
            actor=SYSTEM,
        )
        return True

    try:
        created = _run_in_session(work)
    except AppError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    if not created:
        typer.echo(f"tenant {slug} already exists")
        return
    typer.echo(f"tenant:   {slug}\nemail:    {owner_email}\npassword: {chosen}")


@keys_cli.command("rotate")
def keys_rotate() -> None:
    """Add a new signing key; old public keys stay published until their tokens expire."""
    from app.audit.service import SYSTEM, record
    from app.credentials.signing import rotate_signing_key

    async def work(session: AsyncSession, settings: Settings) -> str:
        key = await rotate_signing_key(session, KeyRing.from_settings(settings.warden_master_key))
        await record(
            session,
            tenant_id=None,
            action="keys.rotated",
            actor=SYSTEM,
            target_type="signing_key",
            target_id=key.kid,
        )
        return key.kid

    typer.echo(f"new signing key: {_run_in_session(work)}")


@keys_cli.command("rotate-encryption")
def keys_rotate_encryption() -> None:
    """Re-encrypt stored credentials and signing keys under the first WARDEN_MASTER_KEY entry.

    Rotation without downtime: put the new key first in WARDEN_MASTER_KEY (keep the old one after
    it), roll the processes, run this command, then drop the old key from the list."""
    from app.audit.service import SYSTEM, record
    from app.credentials.signing import reencrypt_signing_keys
    from app.upstream_secrets.service import reencrypt_all

    async def work(session: AsyncSession, settings: Settings) -> tuple[int, int, str]:
        master = KeyRing.from_settings(settings.warden_master_key)
        credentials = await reencrypt_all(session, master)
        signing = await reencrypt_signing_keys(session, master)
        await record(
            session,
            tenant_id=None,
            action="keys.reencrypted",
            actor=SYSTEM,
            target_type="master_key",
            target_id=master.active_kid,
            details={"credentials": credentials, "signing_keys": signing},
        )
        return credentials, signing, master.active_kid

    credentials, signing, kid = _run_in_session(work)
    typer.echo(
        f"re-encrypted {credentials} credential(s) and {signing} signing key(s) under {kid}; "
        "older master keys can now be removed from WARDEN_MASTER_KEY"
    )


@audit_cli.command("verify")
def audit_verify(
    tenant: str | None = typer.Option(None, "--tenant", help="Tenant slug; all chains if omitted."),
) -> None:
    """Walk the audit hash chains; exit code 1 when any chain is broken."""
    from app.audit.service import UnknownTenant
    from app.audit.verify import verify_chains
    from app.tenants.service import slugs_by_id

    async def verify(maker: async_sessionmaker[AsyncSession], _settings: Settings) -> Any:
        return await verify_chains(maker, await slugs_by_id(maker), tenant)

    try:
        results = _run_with_sessionmaker(verify)
    except UnknownTenant as exc:
        typer.echo(f"error: no tenant {exc}", err=True)
        raise typer.Exit(2) from exc
    for result in results:
        report, where = result.report, ""
        if report.first_broken is not None:
            broken = report.first_broken
            where = f" at seq {broken.seq} ({broken.reason}, event {broken.id or '-'})"
        typer.echo(f"{result.name}: {report.status}{where}, {report.checked} event(s) checked")
    if any(r.report.status != "intact" for r in results):
        raise typer.Exit(1)


@audit_cli.command("prune")
def audit_prune(
    older_than: str | None = typer.Option(
        None, "--older-than", help="Age like 90d, 12h, 30m (default: AUDIT_RETENTION_DAYS days)."
    ),
    tenant: str | None = typer.Option(None, "--tenant", help="Tenant slug; all chains if omitted."),
) -> None:
    """Delete audit events older than the retention period; the chains keep verifying."""
    from app.audit.service import UnknownTenant, parse_age, prune_chains
    from app.tenants.service import slugs_by_id

    settings = get_settings()
    try:
        age = parse_age(older_than or f"{settings.audit_retention_days}d")
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:

        async def prune(maker: async_sessionmaker[AsyncSession], _settings: Settings) -> Any:
            return await prune_chains(maker, age, await slugs_by_id(maker), tenant)

        pruned = _run_with_sessionmaker(prune)
    except UnknownTenant as exc:
        typer.echo(f"error: no tenant {exc}", err=True)
        raise typer.Exit(2) from exc
    for result in pruned:
        outcome = f"refused: {result.refused}" if result.refused else f"{result.pruned} pruned"
        typer.echo(f"{result.name}: {outcome}")
    if any(result.refused for result in pruned):
        raise typer.Exit(1)


@keys_cli.command("generate-master")
def keys_generate_master() -> None:
    """Print a new random master key for WARDEN_MASTER_KEY."""
    typer.echo(generate_master_key())


@cli.command()
def serve(
    host: str = typer.Option(None, help="Bind address (default from settings)."),
    port: int = typer.Option(None, help="Port (default from settings)."),
    internal_host: str = typer.Option(
        None, help="Bind address of the internal app (default INTERNAL_HOST)."
    ),
    internal_port: int = typer.Option(
        None, help="Port of the internal app (default INTERNAL_PORT)."
    ),
) -> None:
    """Run the public API and the internal (east-west) API, in one process."""
    settings = get_settings()
    asyncio.run(
        serve_both(
            settings,
            host=host or settings.host,
            port=port or settings.port,
            internal_host=internal_host or settings.internal_host,
            internal_port=internal_port or settings.internal_port,
        )
    )


async def serve_both(
    settings: Settings, *, host: str, port: int, internal_host: str, internal_port: int
) -> None:
    """Two uvicorn servers on one loop sharing one runtime; a signal stops both."""
    import signal

    import uvicorn
    from fastapi import FastAPI

    from app.internal import create_internal_app
    from app.lifespan import settle_heap
    from app.main import create_app
    from app.web.state import Runtime

    class _Server(uvicorn.Server):
        # uvicorn would install process-wide signal handlers per server, each replacing the
        # other's; both are stopped by the one handler installed below instead.
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    def config(app: FastAPI, bind: str, bind_port: int) -> uvicorn.Config:
        return uvicorn.Config(
            app,
            host=bind,
            port=bind_port,
            log_config=None,
            access_log=False,  # Warden's middleware writes one JSON access line per request
            # Never uvicorn's proxy headers: they rewrite scope["client"] from X-Forwarded-For
            # (trusting loopback by default) before Warden sees the request. Warden's own
            # middleware reads X-Forwarded-For, and only when TRUST_FORWARDED_FOR is on.
            proxy_headers=False,
        )

    runtime = Runtime.build(settings)
    await runtime.start()
    servers = [
        _Server(config(create_app(settings, runtime), host, port)),
        _Server(config(create_internal_app(settings, runtime), internal_host, internal_port)),
    ]
    settle_heap()

    def stop() -> None:
        for server in servers:
            server.should_exit = True

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    try:
        tasks = [asyncio.create_task(server.serve()) for server in servers]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        stop()  # one listener ended (told to, or failed): never leave the other half running
        await asyncio.gather(*tasks)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await runtime.stop()


def _ensure_env_file(path: Path) -> None:
    if path.exists() and "WARDEN_MASTER_KEY=" in path.read_text():
        return
    lines = [
        "# Written by `warden dev` for local development; do not use these values in production.",
        f"WARDEN_MASTER_KEY={generate_master_key()}",
        "SESSION_COOKIE_SECURE=false",
    ]
    with path.open("a") as handle:
        handle.write("\n".join(lines) + "\n")


# Kept in the dev env file (Settings ignores it) so every `warden dev` can print working commands.
_DEMO_PASSWORD_KEY = "WARDEN_DEV_DEMO_PASSWORD"  # noqa: S105  (a variable name)


def _demo_password(path: Path) -> str:
    """The demo users' password: read from the dev env file, or made and stored there."""
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == _DEMO_PASSWORD_KEY and value.strip():
            return value.strip()
    password = secrets.token_urlsafe(18)
    with path.open("a") as handle:
        handle.write("# The demo users' password (warden dev prints it)\n")
        handle.write(f"{_DEMO_PASSWORD_KEY}={password}\n")
    return password


def _allow_loopback_upstreams() -> None:
    """The demo upstream listens on 127.0.0.1: let this process's outbound guard reach it."""
    import os

    hosts = get_settings().upstream_allowed_hosts
    if "127.0.0.1" not in hosts:
        os.environ["UPSTREAM_ALLOWED_HOSTS"] = ",".join([*hosts, "127.0.0.1"])
        get_settings.cache_clear()


class _DemoSetupError(Exception):
    """The demo endpoint could not be provisioned through the API."""


async def _provision_demo(
    base: str, *, tenant: str, owner: str, denied: str, password: str, upstream: str
) -> None:
    """Through the public API, as the demo owner: a member the access policy denies, the `echo`
    endpoint forwarding to `upstream` (its URL refreshed on every start) and its policies."""
    import httpx

    domain = owner.rpartition("@")[2]
    async with httpx.AsyncClient(base_url=base, timeout=30, trust_env=False) as http:
        login = await http.post(
            "/api/v1/auth/login", json={"email": owner, "password": password, "tenant": tenant}
        )
        if login.status_code != 200:
            raise _DemoSetupError(
                f"cannot log in as {owner} with the password in the dev env file "
                f"({login.status_code}); remove warden.db to recreate the demo tenant"
            )
        auth = {"Authorization": f"Bearer {login.json()['access_token']}"}

        async def call(
            method: str, url: str, ok: tuple[int, ...], **kwargs: object
        ) -> httpx.Response:
            r = await http.request(method, url, headers=auth, **kwargs)  # type: ignore[arg-type]
            if r.status_code not in ok:
                raise _DemoSetupError(f"{method} {url}: {r.status_code} {r.text}")
            return r

        await call(
            "POST",
            "/api/v1/users",
            (201, 409),
            json={"email": denied, "password": password, "role": "member"},
        )
        endpoint = await call("GET", "/api/v1/endpoints/echo", (200, 404))
        if endpoint.status_code == 404:
            body = {"name": "Echo", "slug": "echo", "upstream_url": upstream}
            body["description"] = "Demo: forwards queries to the echo upstream of warden dev."
            await call("POST", "/api/v1/endpoints", (201,), json=body)
        elif endpoint.json().get("upstream_url") != upstream:
            await call("PATCH", "/api/v1/endpoints/echo", (200,), json={"upstream_url": upstream})
        policies = await call("GET", "/api/v1/endpoints/echo/policies", (200,))
        if not policies.json()["items"]:
            for policy_type, configuration in (
                ("access", {"mode": "allow", "patterns": [f"*@{domain}"]}),
                ("access", {"mode": "deny", "patterns": [denied]}),
                (
                    "rate_limit",
                    {"requests_per_period": 30, "period_seconds": 60, "scope": "per_user"},
                ),
            ):
                await call(
                    "POST",
                    "/api/v1/endpoints/echo/policies",
                    (201,),
                    json={"policy_type": policy_type, "configuration": configuration},
                )


def demo_commands(base: str, *, tenant: str, owner: str, denied: str, password: str) -> str:
    """What `warden dev` prints: the console's URL with the demo sign-in, and the shell commands
    to log in, make a query allowed and a query denied."""
    import json
    import shlex

    def login(var: str, email: str) -> str:
        body = json.dumps({"email": email, "password": password, "tenant": tenant})
        extract = 'import json,sys; print(json.load(sys.stdin)["access_token"])'
        return (
            f"{var}=$(curl -s {base}/api/v1/auth/login -H 'content-type: application/json' "
            f"-d {shlex.quote(body)} | python3 -c {shlex.quote(extract)})"
        )

    def query(var: str) -> str:
        return (
            f"curl -s -w '\\n%{{http_code}}\\n' {base}/api/v1/endpoints/echo/query "
            f"-H \"Authorization: Bearer ${var}\" -H 'content-type: application/json' "
            f'-d \'{{"hello": "warden"}}\''
        )

    return "\n".join(
        [
            f"Console: {base}/console (sign in: tenant {tenant}, {owner}, password {password})",
            f"Try it (tenant {tenant}, password {password} for both users):",
            f"  # log in as {owner} (owner) and as {denied} (member)",
            f"  {login('TOKEN', owner)}",
            f"  {login('DENIED_TOKEN', denied)}",
            f"  # allowed by the access policy *@{owner.rpartition('@')[2]}: 200 and the echo",
            f"  {query('TOKEN')}",
            f"  # refused by the access policy denying {denied}: 403",
            f"  {query('DENIED_TOKEN')}",
        ]
    )


async def _serve_dev(
    settings: Settings,
    *,
    host: str,
    port: int,
    internal_host: str,
    internal_port: int,
    tenant: str,
    owner: str,
    password: str,
) -> None:
    """The echo upstream and Warden on one loop; once Warden is ready, the demo is provisioned
    through its API and the commands to try it are printed."""
    import socket

    import httpx
    import uvicorn

    from app.devserver import echo_app

    class _EchoServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # Warden's handler stops the loop's servers
            yield

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    upstream = f"http://127.0.0.1:{sock.getsockname()[1]}/echo"
    echo = _EchoServer(
        uvicorn.Config(echo_app(), log_config=None, access_log=False, lifespan="off")
    )
    echo_task = asyncio.create_task(echo.serve(sockets=[sock]))
    warden = asyncio.create_task(
        serve_both(
            settings, host=host, port=port, internal_host=internal_host, internal_port=internal_port
        )
    )
    local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104
    base = f"http://{local}:{port}"
    denied = f"denied@{owner.rpartition('@')[2]}"
    try:
        async with httpx.AsyncClient(timeout=2, trust_env=False) as http:
            while not warden.done():
                try:
                    if (await http.get(f"{base}/ready")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        if not warden.done():
            try:
                await _provision_demo(
                    base,
                    tenant=tenant,
                    owner=owner,
                    denied=denied,
                    password=password,
                    upstream=upstream,
                )
            except (_DemoSetupError, httpx.HTTPError) as exc:
                typer.echo(f"demo endpoint not set up: {exc}", err=True)
            else:
                typer.echo(
                    f"\nWarden: {base} (docs {base}/docs); demo endpoint `echo` -> {upstream}\n"
                    + demo_commands(
                        base, tenant=tenant, owner=owner, denied=denied, password=password
                    )
                    + "\n"
                )
        await warden
    finally:
        echo.should_exit = True
        await echo_task


@cli.command()
def dev(
    tenant: str = typer.Option("demo", help="Slug of the demo tenant."),
    email: str = typer.Option("admin@demo.example", help="Email of the demo owner."),
    host: str = typer.Option(None, help="Bind address (default from settings)."),
    port: int = typer.Option(None, help="Port (default from settings)."),
    internal_port: int = typer.Option(
        None, help="Port of the internal app (default INTERNAL_PORT)."
    ),
) -> None:
    """Local start: .env with a master key, migrations, a demo tenant with an `echo` endpoint
    (an echo upstream on 127.0.0.1 runs in this process) and its policies, then serve."""
    import os

    from app.core.config import ENV_FILE_VARIABLE

    env_file = os.environ.get(ENV_FILE_VARIABLE, ".env")
    if not env_file:
        typer.echo(
            f"error: warden dev keeps its keys in an env file; unset {ENV_FILE_VARIABLE}", err=True
        )
        raise typer.Exit(2)
    _ensure_env_file(Path(env_file))
    password = _demo_password(Path(env_file))
    get_settings.cache_clear()
    _allow_loopback_upstreams()
    run_migrations()
    tenant_create(tenant, owner_email=email, name="Demo", password=password, if_missing=True)
    settings = get_settings()
    host, port = host or settings.host, port or settings.port
    if "public_url" not in settings.model_fields_set:
        # The console's sign-in and forms are checked against the origin the browser uses.
        local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104
        settings = settings.model_copy(update={"public_url": f"http://{local}:{port}"})
    asyncio.run(
        _serve_dev(
            settings,
            host=host,
            port=port,
            internal_host=settings.internal_host,
            internal_port=internal_port or settings.internal_port,
            tenant=tenant,
            owner=email,
            password=password,
        )
    )


def main() -> None:
    """Console-script entry point."""
    from app.core.logging import configure_logging

    configure_logging("warning")  # commands print their results; `serve` reconfigures
    cli()


if __name__ == "__main__":
    main()
