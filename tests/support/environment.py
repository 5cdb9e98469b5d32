"""A hermetic environment for the suite: what the person running it has exported, or left in a
`.env`, must not change a result. Only the documented WARDEN_TEST_* variables (the stack to run
on) and CI (missing gateways fail instead of skipping) pass through."""

from __future__ import annotations

import os
from collections.abc import Iterator

from pydantic import AliasChoices, AliasPath

# Variables outside Settings that still steer what the tests do: Warden's own namespace (CLI
# options such as WARDEN_OWNER_PASSWORD, WARDEN_ENV_FILE) and the proxies httpx clients follow.
_WARDEN_PREFIX = "WARDEN_"
_KEPT_PREFIX = "WARDEN_TEST_"
_PROXIES = frozenset({"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"})


def _aliases(alias: object) -> Iterator[str]:
    if isinstance(alias, str):
        yield alias
    elif isinstance(alias, AliasChoices):
        for choice in alias.choices:
            yield from _aliases(choice)
    elif isinstance(alias, AliasPath) and alias.path and isinstance(alias.path[0], str):
        yield alias.path[0]


def settings_env_names() -> tuple[set[str], str | None]:
    """The environment names `Settings` reads (upper-cased; it is case-insensitive), derived from
    its fields, prefix and aliases so a new setting is covered without editing this file; and
    its nested delimiter, if any (`NAME<delim>…` is read too)."""
    from app.core.config import Settings  # the class only: no settings are read here

    config = Settings.model_config
    prefix = config.get("env_prefix") or ""
    names: set[str] = set()
    for name, info in Settings.model_fields.items():
        names.add(f"{prefix}{name}".upper())
        for alias in (info.alias, info.validation_alias):
            names.update(a.upper() for a in _aliases(alias))
    return names, config.get("env_nested_delimiter") or None


def _steers_the_suite(key: str, settings_names: set[str], delimiter: str | None) -> bool:
    upper = key.upper()
    if upper.startswith(_KEPT_PREFIX):
        return False
    if upper in settings_names or upper.startswith(_WARDEN_PREFIX) or upper in _PROXIES:
        return True
    return bool(delimiter) and any(
        upper.startswith(f"{n}{delimiter}".upper()) for n in settings_names
    )


def make_hermetic() -> list[str]:
    """Drop every variable that would steer Warden or the tests, and make every `Settings` (in
    this process and in every child it starts) read no dotenv file. Returns the dropped names."""
    from app.core.config import ENV_FILE_VARIABLE

    names, delimiter = settings_env_names()
    dropped = [key for key in os.environ if _steers_the_suite(key, names, delimiter)]
    for key in dropped:
        del os.environ[key]
    os.environ[ENV_FILE_VARIABLE] = ""
    return dropped
