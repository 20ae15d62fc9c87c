"""
C{secmail sms test NUMBER} as an admin runs it: each configured backend on its own, real
peers on loopback (a pty playing the GSM modem, a local HTTP server playing the gateway).
"""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.e2e.fake_modem import FakeModem

ROOT = Path(__file__).resolve().parents[2]


class SmsGateway(http.server.ThreadingHTTPServer):
    """Records each request's query; answers with C{status}."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.status = 200
        self.queries: list[dict[str, list[str]]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/send?to={{to}}&text={{text}}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: SmsGateway

    def do_GET(self) -> None:
        self.server.queries.append(parse_qs(urlsplit(self.path).query))
        body = b"accepted id=77\n" if self.server.status == 200 else b"try later\n"
        self.send_response(self.server.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def gateway() -> Iterator[SmsGateway]:
    server = SmsGateway()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def modem(tmp_path: Path) -> Iterator[FakeModem]:
    with FakeModem(tmp_path, sim_pin="4321") as fake:
        yield fake


def sms_test(tmp_path: Path, modem: FakeModem, gateway: SmsGateway, *args: str):
    config = tmp_path / "secmail.toml"
    config.write_text(
        f'[gateway]\ndata_dir = "{tmp_path / "data"}"\n'
        '[secure]\ndefault_country_code = "358"\n'
        '[sms]\norder = ["modem", "http"]\n'
        f'[sms.modem]\ndevice = "{modem.path}"\nsim_pin = "4321"\n'
        f'[sms.http]\nurl = "{gateway.url}"\n',
        encoding="utf-8",
    )
    return subprocess.run(
        [sys.executable, "-m", "secmail.cli", "sms", "--config", str(config), "test", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_each_backend_is_tried_and_reported(
    tmp_path: Path, modem: FakeModem, gateway: SmsGateway
) -> None:
    done = sms_test(tmp_path, modem, gateway, "040 123 4567", "--text", "Testi: äöå ÄÖÅ")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "modem: sending to +358 40 *** **67 ..." in lines
    assert any(line.startswith("modem: OK (") for line in lines), lines
    assert "http: OK (accepted id=77)" in lines
    assert modem.wait_for_sms(1, timeout=5) == [("+358401234567", "Testi: äöå ÄÖÅ")]
    assert gateway.queries == [{"to": ["+358401234567"], "text": ["Testi: äöå ÄÖÅ"]}]


def test_failures_are_reported_per_backend(
    tmp_path: Path, modem: FakeModem, gateway: SmsGateway
) -> None:
    modem.fail_next(1, "+CMS ERROR: 38")
    gateway.status = 503
    done = sms_test(tmp_path, modem, gateway, "+358401234567")
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("modem: FAILED (") and "+CMS ERROR 38" in line for line in lines), (
        lines
    )
    assert "http: FAILED (temporary): gateway busy or failing (HTTP 503: try later)" in lines
    assert "Test message" not in done.stdout + done.stderr  # the text is never printed


def test_a_bad_number_is_named(tmp_path: Path, modem: FakeModem, gateway: SmsGateway) -> None:
    done = sms_test(tmp_path, modem, gateway, "12345")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("secmail: '12345': write the number with its country code")
    assert modem.commands == [] or all("CMGS" not in c for c in modem.commands)
    assert gateway.queries == []
