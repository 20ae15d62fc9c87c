"""
End-to-end: a cluster setting changed with `secmail settings set` while the real gateway
runs shows on the portal within 5 seconds, without a restart; a key the node's file sets
is refused with one line and changes nothing.
"""

from __future__ import annotations

import html
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.harness import REPO_ROOT, Gateway, SmtpSink, poll, run_env, running

PHRASE = "Blue heron at dawn"


def settings_command(gw: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603
        [sys.executable, "-m", "secmail.cli", "settings", *args, "--config", str(gw.config_path)],
        cwd=REPO_ROOT,
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def page_text(gw: Gateway) -> str:
    """The text of a portal page (the page-not-found page has the frame, phrase and all)."""
    return html.unescape(gw.portal_get("/no-such-page").body.decode("utf-8"))


def test_phrase_set_by_command_shows_on_the_portal_within_5_seconds(
    tmp_path: Path, internet: SmtpSink, internal: SmtpSink
) -> None:
    """`secmail settings set portal.verification_phrase ...` reaches the running portal."""
    gw = Gateway(tmp_path / "gateway", internet, internal, {"portal": {"brand_name": "File Ltd"}})
    with running(gw):
        assert PHRASE not in page_text(gw)
        pid = gw.process.pid if gw.process else None

        done = settings_command(gw, "set", "portal.verification_phrase", PHRASE)
        assert done.returncode == 0, done.stderr
        assert done.stdout == f'portal.verification_phrase = "{PHRASE}"  # database\n'
        changed = time.monotonic()
        poll(lambda: PHRASE in page_text(gw), 5.0, lambda: "the phrase is not on the page")
        assert time.monotonic() - changed < 5.0
        assert gw.process is not None and gw.process.pid == pid and gw.running

        # A key the file sets is fixed there: refused with one line, the page unchanged.
        refused = settings_command(gw, "set", "portal.brand_name", "Database Ltd")
        assert refused.returncode == 1
        assert refused.stderr == (
            f"secmail: portal.brand_name: fixed by {gw.config_path}; "
            "remove it there to change it as a cluster setting\n"
        )
        shown = settings_command(gw, "show", "portal.brand_name")
        assert shown.stdout == (
            f'portal.brand_name = "File Ltd"  # file: fixed ({gw.config_path})\n'
        )

        # Back to the default: the phrase goes from the page.
        assert settings_command(gw, "unset", "portal.verification_phrase").returncode == 0
        poll(lambda: PHRASE not in page_text(gw), 5.0, lambda: "the phrase is still shown")
        assert "File Ltd" in page_text(gw)
    assert "Cluster settings version 2 applied" in gw.log_text(), gw.tail()
