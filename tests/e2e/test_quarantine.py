"""
End-to-end: a queue row whose message cannot be read (its key sealed under another master
key, as on a cluster node with the wrong key file) is quarantined by the running gateway;
the healthy rows of the same route are delivered and the sender gets a bounce.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.e2e.harness import (
    REPO_ROOT,
    Gateway,
    SmtpSink,
    free_port,
    make_message,
    poll,
    running,
    toml_text,
)

SENDER = "alice@corp.example"


def queue_rows(gw: Gateway, *columns: str) -> list[tuple[Any, ...]]:
    """(id, message id, recipients, *columns) of every queue row."""
    conn = sqlite3.connect(str(gw.data_dir / "secmail.sqlite"), timeout=10)
    try:
        rows = conn.execute(
            f"SELECT {', '.join(['id', 'message_id', 'recipients', *columns])} FROM queue"
        ).fetchall()
    finally:
        conn.close()
    return [(r[0], r[1], json.loads(r[2]), *r[3:]) for r in rows]


def test_damaged_row_is_quarantined_and_the_others_arrive(
    tmp_path: Path, internet: SmtpSink, internal: SmtpSink
) -> None:
    """Three relayed rows, one with a key that does not unwrap: two arrive, one is set aside."""
    gw = Gateway(
        tmp_path / "gateway",
        internet,
        internal,
        {"secure": {"mode": "all"}, "queue": {"retry_initial": 1, "retry_max": 2}},
    )
    # First the Internet is unreachable, so that the three rows wait in the queue.
    gw.config["routes"]["outgoing"] = f"smtp://127.0.0.1:{free_port()}"
    gw.config_path.write_text(toml_text(gw.config), encoding="utf-8")
    people = ["ann", "ben", "cat"]
    with running(gw):
        for name in people:
            to = f"{name}-q@partner.example"
            message = make_message(
                sender=SENDER, to=to, subject=f"Figures {name}", message_id=f"<q-{name}@corp>"
            )
            gw.send(SENDER, [to], message)
        poll(lambda: len(queue_rows(gw)) == 3, 20, lambda: f"queue: {queue_rows(gw)}")

    # Ben's message key now looks as if another node had sealed it; all rows are due.
    [(_, damaged_message, _)] = [r for r in queue_rows(gw) if r[2] == ["ben-q@partner.example"]]
    conn = sqlite3.connect(str(gw.data_dir / "secmail.sqlite"), timeout=10)
    try:
        with conn:
            conn.execute(
                "UPDATE messages SET wrapped_key = ? WHERE id = ?",
                (os.urandom(60), damaged_message),
            )
            # Rows keep the route they were queued on: now the Internet answers, all are due.
            conn.execute("UPDATE queue SET next_attempt = 0, route = ?", (internet.url,))
    finally:
        conn.close()
    gw.config["routes"]["outgoing"] = internet.url
    gw.config_path.write_text(toml_text(gw.config), encoding="utf-8")

    with running(gw):
        for name in ("ann", "cat"):
            internet.wait_for_message(
                lambda m, name=name: m.message_id == f"<q-{name}@corp>", 20, f"{name}'s mail"
            )
        dsn = internal.wait_for_message(
            lambda m: m.mail_from == "" and b"ben-q@partner.example" in m.data,
            20,
            "the bounce for ben's damaged mail",
        )
        assert dsn.rcpt_tos == (SENDER,)
        assert b"Status: 5.3.0" in dsn.data
        assert b"Figures ben" not in dsn.data  # nothing of the unreadable message is quoted
        [row] = queue_rows(gw, "quarantined", "last_error")
        assert row[1] == damaged_message and row[3] is not None, row
        assert "does not unwrap" in row[4], row
        log = gw.log_text()
        # The warning starts with the message's short id, as its other log lines do.
        assert f"{damaged_message[:10]}: queue row {row[0]}: quarantined (relay)" in log, log
        # The healthy rows went out in their session: none was put off by the damaged one.
        assert "not tried" not in log

        listing = subprocess.run(
            [sys.executable, "-m", "secmail.cli", "queue", "--config", str(gw.config_path), "list"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listing.returncode == 0, listing.stderr
        assert "quarantined" in listing.stdout and "Quarantined: 1 row." in listing.stdout
    assert not [m for m in internet.messages() if m.message_id == "<q-ben@corp>"]
