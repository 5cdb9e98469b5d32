"""Debian's Chromium for the browser tests (driven by Playwright, never `playwright install`):
where it is and how it is started on this closed network."""

from __future__ import annotations

import shutil

CHROMIUM = shutil.which("chromium")
# Without the background-networking flags Chromium keeps dialling Google's hosts, which this
# machine's closed network refuses many at a time.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
