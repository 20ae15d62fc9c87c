"""
What the admin console's end-to-end tests share: the `secmail admin` command against a gateway,
the JSON API over HTTPS with a Bearer token, a TOTP code not used before, screenshots.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyotp
from playwright.sync_api import Page

from tests.e2e.harness import LOOPBACK, REPO_ROOT, Gateway, run_env, unverified_tls


def secmail_admin(gw: Gateway, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """`secmail admin ARGS --config` of the gateway, with C{stdin} (a password line)."""
    return subprocess.run(  # noqa: S603
        [sys.executable, "-m", "secmail.cli", "admin", *args, "--config", str(gw.config_path)],
        cwd=REPO_ROOT,
        env=run_env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def api_call(
    port: int, method: str, path: str, token: str | None, body: Any = None
) -> tuple[int, Any]:
    """One HTTPS request with a Bearer token and a JSON body: the status and the answer
    (its JSON, or its bytes when it is none)."""
    conn = http.client.HTTPSConnection(LOOPBACK, port, timeout=15, context=unverified_tls())
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw
    finally:
        conn.close()


def fresh_code(secret: str) -> str:
    """A code not used before: wait for the next 30-second step when this one is near its end."""
    totp = pyotp.TOTP(secret)
    if totp.interval - time.time() % totp.interval < 3:
        time.sleep(totp.interval - time.time() % totp.interval + 0.2)
    return totp.now()  # type: ignore[no-any-return]


def shooter(directory: Path) -> Callable[[Page, str], None]:
    """A function that saves a full-page screenshot of a page under C{directory}."""

    def shoot(page: Page, name: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(directory / f"{name}.png"), full_page=True)

    return shoot
