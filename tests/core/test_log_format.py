"""Log lines: JSON for machines (stdout a pipe or a file), readable lines for a person at a
terminal; LOG_FORMAT overrides the choice."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

SCRIPT = """
import structlog
from app.core.logging import configure_logging
configure_logging("info")
structlog.get_logger("warden.test").info("hello_there", user_email="alice@company.com", n=1)
"""


def _run(*, tty: bool, log_format: str | None = None) -> str:
    env = {**os.environ}
    if log_format is not None:
        env["LOG_FORMAT"] = log_format
    if not tty:
        result = subprocess.run(
            [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True
        )
        return result.stdout
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-c", SCRIPT], env=env, stdout=follower)
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(timeout=30) == 0
    finally:
        os.close(leader)
    return b"".join(chunks).decode()


def test_json_when_stdout_is_not_a_terminal():
    line = json.loads(_run(tty=False).strip().splitlines()[-1])
    assert line["event"] == "hello_there"
    assert line["level"] == "info"
    assert line["user_email"] == "a***@company.com"
    assert line["n"] == 1
    assert line["timestamp"].endswith("Z")


def test_readable_lines_at_a_terminal():
    out = _run(tty=True)
    assert "hello_there" in out
    assert "a***@company.com" in out
    assert "alice@" not in out
    assert not out.strip().startswith("{")


def test_log_format_overrides_the_choice():
    assert json.loads(_run(tty=True, log_format="json").strip().splitlines()[-1])["n"] == 1
    out = _run(tty=False, log_format="console")
    assert "hello_there" in out
    assert not out.strip().startswith("{")
