"""
Master key rotation on the real gateway: a letter sealed before `secmail keys rotate` opens in
the portal after the gateway re-wrapped it, and still after the old key left the ring.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from secmail.crypto import generate_key_file, rotate_key_file
from secmail.store.database import Database
from secmail.store.engines import SqliteEngine
from tests.e2e.harness import REPO_ROOT, Gateway, SmtpSink, make_message, poll, running

SENDER = "alice@corp.example"


@pytest.fixture
def gateway(tmp_path: Path, internet: SmtpSink, internal: SmtpSink) -> Iterator[Gateway]:
    with running(Gateway(tmp_path / "gw", internet, internal)) as gw:
        yield gw


def keys(gw: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603
        [sys.executable, "-m", "secmail.cli", "keys", *args, "--config", str(gw.config_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def send_letter(gw: Gateway, internet: SmtpSink, subject: str) -> str:
    """Send a secure letter; the token of its notification's link."""
    recipient = f"bob-{uuid.uuid4().hex[:8]}@partner.example"
    message = make_message(
        sender=SENDER, to=recipient, subject=subject, message_id=f"<{uuid.uuid4().hex}@corp>"
    )
    gw.send(SENDER, [recipient + ".s"], message)
    notification = internet.wait_for_message(
        lambda m: m.rcpt_tos == (recipient,), what=f"the notification to {recipient}"
    )
    pattern = re.compile(re.escape(gw.portal_url) + r"/m/([A-Za-z0-9_-]+)")
    for part in notification.parsed().walk():
        if part.get_content_maintype() == "text":
            found = pattern.search(str(part.get_content()))
            if found:
                return found.group(1)
    raise AssertionError("no link in the notification")


def read_letter(gw: Gateway, token: str) -> str:
    page = gw.portal_get(f"/m/{token}")
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.body.decode("utf-8"))
    assert csrf is not None, page.body[:500]
    opened = gw.portal_post(f"/m/{token}", {"csrf": csrf.group(1)})
    assert opened.status == 303, opened.body[:500]
    reading = gw.portal_get("/read", cookies=opened.cookies)
    assert reading.status == 200, reading.body[:500]
    return reading.body.decode("utf-8")


def message_count(gw: Gateway, key_id: str) -> int | None:
    """How many message keys C{key_id} still wraps, from `secmail keys status`."""
    for line in keys(gw, "status").stdout.splitlines():
        fields = line.split()
        if fields and fields[0] == key_id:
            return int(fields[2])
    return None


def test_letter_opens_across_rotation_and_retirement(gateway: Gateway, internet: SmtpSink) -> None:
    """Rotate, re-wrap, retire the old key: letters from before and after still open."""
    before = send_letter(gateway, internet, "Sealed before the rotation Quince41")
    rotated = keys(gateway, "rotate")
    assert rotated.returncode == 0, rotated.stderr
    ring = keys(gateway, "status").stdout.splitlines()
    new, old = ring[2].split()[0], ring[3].split()[0]
    assert message_count(gateway, old)

    gateway.restart()  # the first rotation run rereads the ring and re-wraps
    after = send_letter(gateway, internet, "Sealed after the rotation Medlar77")
    poll(lambda: message_count(gateway, old) == 0, 20, lambda: keys(gateway, "status").stdout)
    assert message_count(gateway, new)

    retired = keys(gateway, "retire", old)
    assert retired.returncode == 0, retired.stderr
    gateway.restart()  # now the gateway no longer knows the old key at all
    assert "Quince41" in read_letter(gateway, before)
    assert "Medlar77" in read_letter(gateway, after)
    assert message_count(gateway, old) is None


def test_sms_by_mail_from_cli_sealed_with_a_shared_key(tmp_path: Path) -> None:
    """`secmail sms test` seals its mail with a key every running node holds, not the newest."""
    data = tmp_path / "data"
    data.mkdir()
    key_file = str(data / "master.key")
    old = generate_key_file(key_file)
    new, _ = rotate_key_file(key_file)
    database = data / "secmail.sqlite"
    Database(SqliteEngine(str(database)), None).prepare_blocking()
    with contextlib.closing(sqlite3.connect(database)) as conn:
        conn.execute(
            "INSERT INTO key_ring_nodes (node, key_ids, sealing, seen) VALUES (?, ?, ?, ?)",
            ("gw/b", old.key_id, old.key_id, int(time.time())),
        )
        conn.commit()
    config = tmp_path / "secmail.toml"
    config.write_text(
        f'[gateway]\ndata_dir = "{data}"\n[store]\nmaster_key_file = "{key_file}"\n'
        '[sms]\norder = ["smtp"]\n[sms.smtp]\naddress = "{to}@sms.example"\n',
        encoding="utf-8",
    )
    done = subprocess.run(  # noqa: S603
        [
            sys.executable,
            "-m",
            "secmail.cli",
            "sms",
            "--config",
            str(config),
            "test",
            "+358401234567",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with contextlib.closing(sqlite3.connect(database)) as conn:
        key_ids = [r[0] for r in conn.execute("SELECT key_id FROM messages")]
    assert key_ids == [old.key_id], (key_ids, new.key_id)
