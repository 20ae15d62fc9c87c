"""
Debian's Chromium for the browser tests, driven by Playwright (which never downloads a browser
here): where it is, the flags it runs with, and the mark that skips a module without it.
"""

from __future__ import annotations

import os

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
#: Playwright's timeout for one step, in milliseconds.
TIMEOUT_MS = 15_000

# tests/run installs Debian's chromium when it runs as root (CI does); elsewhere these skip.
needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing (apt-get install chromium)"
)
