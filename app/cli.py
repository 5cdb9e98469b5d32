"""The `warden` command line: migrate, create tenants, rotate keys, serve."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

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
    from app.core.errors import AppError
    from app.tenants.service import create_tenant_with_owner, get_by_slug

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
    from app.auth.keys import rotate_signing_key

    async def work(session: AsyncSession, settings: Settings) -> str:
        key = await rotate_signing_key(session, KeyRing.from_settings(settings.warden_master_key))
        return key.kid

    typer.echo(f"new signing key: {_run_in_session(work)}")


@keys_cli.command("rotate-encryption")
def keys_rotate_encryption() -> None:
    """Re-encrypt stored credentials and signing keys under the first WARDEN_MASTER_KEY entry.

    Rotation without downtime: put the new key first in WARDEN_MASTER_KEY (keep the old one after
    it), roll the processes, run this command, then drop the old key from the list."""
    from app.auth.keys import reencrypt_signing_keys
    from app.secrets.service import reencrypt_all

    async def work(session: AsyncSession, settings: Settings) -> tuple[int, int, str]:
        master = KeyRing.from_settings(settings.warden_master_key)
        credentials = await reencrypt_all(session, master)
        signing = await reencrypt_signing_keys(session, master)
        return credentials, signing, master.active_kid

    credentials, signing, kid = _run_in_session(work)
    typer.echo(
        f"re-encrypted {credentials} credential(s) and {signing} signing key(s) under {kid}; "
        "older master keys can now be removed from WARDEN_MASTER_KEY"
    )


@keys_cli.command("generate-master")
def keys_generate_master() -> None:
    """Print a new random master key for WARDEN_MASTER_KEY."""
    typer.echo(generate_master_key())


@cli.command()
def serve(
    host: str = typer.Option(None, help="Bind address (default from settings)."),
    port: int = typer.Option(None, help="Port (default from settings)."),
) -> None:
    """Run the API server."""
    import uvicorn

    settings = get_settings()
    uvicorn.run(
        "app.main:app",
        host=host or settings.host,
        port=port or settings.port,
        log_config=None,
        access_log=False,  # Warden's middleware writes one JSON access line per request
        proxy_headers=settings.trust_forwarded_for,
    )


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


@cli.command()
def dev(
    tenant: str = typer.Option("demo", help="Slug of the demo tenant."),
    email: str = typer.Option("admin@demo.example", help="Email of the demo owner."),
) -> None:
    """Local start: .env with a master key, migrations, a demo tenant, then serve."""
    _ensure_env_file(Path(".env"))
    get_settings.cache_clear()
    run_migrations()
    tenant_create(tenant, owner_email=email, name="Demo", password="", if_missing=True)
    serve(host=None, port=None)  # type: ignore[arg-type]


def main() -> None:
    """Console-script entry point."""
    from app.core.logging import configure_logging

    configure_logging("warning")  # commands print their results; `serve` reconfigures
    cli()


if __name__ == "__main__":
    main()
