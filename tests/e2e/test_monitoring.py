"""
End-to-end: the real gateway's monitoring listener: /livez, /readyz (ready, then not ready
without its master key file, then ready again), /metrics in Prometheus' text format, checked
by promtool when it is installed (CI installs Debian's prometheus package).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import (
    LOOPBACK,
    Gateway,
    SmtpSink,
    make_message,
    poll,
    run_env,
    running,
)


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, internet: SmtpSink, internal: SmtpSink
) -> Iterator[Gateway]:
    gw = Gateway(tmp_path_factory.mktemp("monitoring"), internet, internal)
    with running(gw) as started:
        yield started


def get(gw: Gateway, path: str) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection(LOOPBACK, gw.metrics_port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("content-type") or "", response.read()
    finally:
        conn.close()


def ready(gw: Gateway) -> tuple[int, dict[str, Any]]:
    status, kind, body = get(gw, "/readyz")
    assert kind == "application/json"
    return status, json.loads(body)


def test_live_and_ready(gateway: Gateway) -> None:
    status, kind, body = get(gateway, "/livez")
    assert (status, kind) == (200, "application/json")
    assert json.loads(body)["status"] == "live"
    # The queue's first scan may still be under way just after start.
    status, answer = poll(
        lambda: (lambda r: r if r[0] == 200 else None)(ready(gateway)),
        10,
        lambda: repr(ready(gateway)),
    )
    assert answer["status"] == "ready"
    assert {name: check["ok"] for name, check in answer["checks"].items()} == {
        "database": True,
        "disk": True,
        "master_key": True,
        "queue": True,
    }
    assert get(gateway, "/nothing")[0] == 404


def test_not_ready_without_the_master_key_file(gateway: Gateway) -> None:
    key = gateway.data_dir / "master.key"
    moved = Path(str(key) + ".away")
    os.rename(key, moved)
    try:
        status, answer = ready(gateway)
        assert status == 503 and answer["status"] == "not ready"
        assert answer["checks"]["master_key"]["ok"] is False
        assert "master.key" in answer["checks"]["master_key"]["detail"]
        assert answer["checks"]["database"]["ok"] is True
    finally:
        os.rename(moved, key)
    assert ready(gateway)[0] == 200


def sample(text: str, series: str) -> float:
    """The value of one series (name and labels as written) in an exposition."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def test_metrics_exposition(gateway: Gateway, internet: SmtpSink) -> None:
    before = get(gateway, "/metrics")[2].decode()
    message = make_message(
        sender="alice@corp.example",
        to="mon@partner.example.s",
        subject="metrics",
        message_id="<metrics@corp.example>",
    )
    assert gateway.send("alice@corp.example", ["mon@partner.example.s"], message) == {}
    internet.wait_for_message(
        lambda m: m.rcpt_tos == ("mon@partner.example",), what="the notification"
    )
    status, kind, body = get(gateway, "/metrics")
    assert status == 200 and kind.startswith("text/plain")
    text = body.decode()
    assert 'secmail_build_info{python="' in text
    assert "secmail_db_commit_seconds_count" in text
    assert "process_resident_memory_bytes" in text
    assert "mon@partner.example" not in text and "alice" not in text
    # The counters moved with the letter: taken in, its notification sent, an SMTP session.
    for series in (
        'secmail_smtp_messages_total{kind="letter"}',
        'secmail_deliveries_total{kind="notification",result="sent"}',
        "secmail_smtp_sessions_total",
    ):
        assert sample(text, series) >= sample(before, series) + 1, series
    promtool = shutil.which("promtool")
    if promtool:
        result = subprocess.run(
            [promtool, "check", "metrics"], input=body, capture_output=True, timeout=30
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout + result.stderr == b"", result.stdout + result.stderr


def test_daily_statistics_survive_the_stop(
    tmp_path: Path, internet: SmtpSink, internal: SmtpSink
) -> None:
    """What a gateway counted is in the database after it stops: secmail stats shows it."""
    gw = Gateway(tmp_path / "stats", internet, internal)
    with running(gw):
        for n in range(2):
            to = f"stats{n}@partner.example.s"
            message = make_message(
                sender="alice@corp.example", to=to, subject="s", message_id=f"<stats{n}@corp>"
            )
            assert gw.send("alice@corp.example", [to], message) == {}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "secmail.cli",
            "--config",
            str(gw.config_path),
            "stats",
            "--days",
            "1",
        ],
        capture_output=True,
        text=True,
        env=run_env(),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rows = {r.rsplit(None, 2)[0].strip(): r.split()[-1] for r in result.stdout.splitlines()[2:]}
    assert rows["Received"] == "2" and rows["secure letters"] == "2", result.stdout
