"""The suite's results depend on the code alone: not on a `.env` in the working directory nor on
the environment of whoever runs it (only the documented WARDEN_TEST_* variables choose a stack).

`warden dev` writes a `.env` (SESSION_COOKIE_SECURE=false among others); running the suite
afterwards must not see it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# A sample of the suite that reads most of what a hostile environment would change: cookie
# flags, sign-up, login rate limits, CORS/CSRF origins, the public URL and token audience.
SAMPLE = [
    "tests/sessions/test_router.py::TestCookieFlags",
    "tests/auth/test_router.py",
    "tests/core/test_http.py",
]

HOSTILE = {
    "SESSION_COOKIE_SECURE": "false",
    "ALLOW_SIGNUP": "false",
    "LOGIN_RATE_LIMIT": "1/hour",
    "GLOBAL_RATE_LIMIT": "1/hour",
    "PUBLIC_URL": "http://elsewhere.example",
    "JWT_AUDIENCE": "someone-else",
    "JWT_ISSUER": "http://elsewhere.example",
    "CORS_ORIGINS": "http://evil.example",
    "ACCESS_TOKEN_TTL_SECONDS": "60",
    "LOG_LEVEL": "error",
    "REDIS_URL": "redis://127.0.0.1:1/0",
    "WARDEN_MASTER_KEY": "not-a-key",
}


def _run_sample(cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *(str(ROOT / t) for t in SAMPLE)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _summary(result: subprocess.CompletedProcess[str]) -> str:
    found = re.findall(r"^=*\s*(\d+ passed.*?)(?: in [\d.]+s)?\s*=*$", result.stdout, re.M)
    return (
        found[-1] if found else f"no summary (exit {result.returncode}):\n{result.stdout[-3000:]}"
    )


def test_a_hostile_dotenv_and_environment_change_nothing(tmp_path):
    # The baseline: a clean working directory and only what the machine needs to run Python.
    # Both runs use SQLite: on the production stack the inner suite would flush the Redis
    # database the outer suite is using.
    keep = {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT"}
    clean_env = {k: v for k, v in os.environ.items() if k in keep}
    clean_dir = tmp_path / "clean"
    clean_dir.mkdir()
    baseline = _run_sample(clean_dir, clean_env)
    assert baseline.returncode == 0, baseline.stdout[-3000:] + baseline.stderr[-2000:]

    # The same sample from a directory holding a `.env` like the one `warden dev` writes (and
    # worse), with hostile variables exported too, in upper and lower case, and an env file
    # named explicitly.
    hostile_dir = tmp_path / "hostile"
    hostile_dir.mkdir()
    dotenv = "".join(f"{k}={v}\n" for k, v in HOSTILE.items())
    (hostile_dir / ".env").write_text(dotenv)
    (hostile_dir / "other.env").write_text(dotenv)
    hostile_env = {
        **clean_env,
        **HOSTILE,
        **{k.lower(): v for k, v in list(HOSTILE.items())[:3]},
        "WARDEN_ENV_FILE": str(hostile_dir / "other.env"),
        "HTTP_PROXY": "http://127.0.0.1:9",
        "ALL_PROXY": "http://127.0.0.1:9",
    }
    hostile = _run_sample(hostile_dir, hostile_env)
    assert hostile.returncode == 0, hostile.stdout[-3000:] + hostile.stderr[-2000:]
    assert _summary(hostile) == _summary(baseline)


def test_every_setting_is_dropped_and_the_env_file_is_chosen_by_warden_env_file(
    tmp_path, monkeypatch
):
    from app.core.config import ENV_FILE_VARIABLE, Settings
    from tests.conftest import TEST_SETTINGS
    from tests.support.environment import settings_env_names

    names, _ = settings_env_names()
    assert {f.upper() for f in Settings.model_fields} <= names
    assert names & {k.upper() for k in os.environ} == set(TEST_SETTINGS)
    assert os.environ[ENV_FILE_VARIABLE] == ""

    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("SESSION_COOKIE_SECURE=false\n")
    assert Settings().session_cookie_secure is True  # suite: no dotenv file at all
    (tmp_path / "chosen.env").write_text("SESSION_COOKIE_SECURE=false\n")
    monkeypatch.setenv(ENV_FILE_VARIABLE, str(tmp_path / "chosen.env"))
    assert Settings().session_cookie_secure is False
    monkeypatch.delenv(ENV_FILE_VARIABLE)
    assert Settings().session_cookie_secure is False  # unset: `.env` in the working directory
