"""
End-to-end: the real gateway's monitoring agent POSTs its health report to a local HTTPS
server, verifying that server's certificate against report_ca_file; a server whose
certificate does not verify gets nothing, and the gateway logs why.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from secmail.monitoring.agent import REPORT_FIELDS
from secmail.tls import ensure_self_signed
from tests.e2e.harness import LOOPBACK, Gateway, SmtpSink, make_message, poll, running

TOKEN = "report-token-5f2c"


class ReportServer:
    """An HTTPS server on 127.0.0.1 that keeps every POST it gets."""

    def __init__(self, directory: Path) -> None:
        self.cert = directory / "cert.pem"
        key = directory / "key.pem"
        ensure_self_signed(str(self.cert), str(key), "localhost")
        self.posts: list[tuple[dict[str, str], bytes]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(min(length, 1_000_000))
                server.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.cert), str(key))
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://{LOOPBACK}:{self.httpd.server_address[1]}/report"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ReportServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ReportServer]:
    directory = tmp_path / "report-server"
    directory.mkdir()
    with ReportServer(directory) as s:
        yield s


def test_reports_reach_the_service(
    tmp_path: Path, server: ReportServer, internet: SmtpSink, internal: SmtpSink
) -> None:
    settings = {
        "monitoring": {
            "report_url": server.url,
            "report_ca_file": str(server.cert),
            "report_interval": 1,
            "report_token": TOKEN,
        }
    }
    gw = Gateway(tmp_path / "gateway", internet, internal, settings)
    with running(gw):
        message = make_message(
            sender="alice@corp.example",
            to="agent@partner.example.s",
            subject="Quarterly figures",
            message_id="<agent@corp.example>",
        )
        assert gw.send("alice@corp.example", ["agent@partner.example.s"], message) == {}
        poll(lambda: len(server.posts) >= 3, 20, lambda: f"{len(server.posts)} reports")
    headers, body = server.posts[-1]
    assert headers["authorization"] == f"Bearer {TOKEN}"
    assert headers["content-type"] == "application/json"
    report = json.loads(body)
    assert tuple(report) == REPORT_FIELDS
    assert report["node"].startswith("gw.test.example/")
    assert set(report["checks"]) == {"database", "disk", "master_key", "queue"}
    assert set(report["queue"]) == {"waiting", "leased", "quarantined", "oldest_age_seconds"}
    for _, raw in server.posts:
        text = raw.decode()
        assert "@" not in text and "Quarterly" not in text and TOKEN not in text, text


def test_a_certificate_that_does_not_verify_gets_nothing(
    tmp_path: Path, server: ReportServer, internet: SmtpSink, internal: SmtpSink
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    ensure_self_signed(str(other / "cert.pem"), str(other / "key.pem"), "localhost")
    settings = {
        "monitoring": {
            "report_url": server.url,
            "report_ca_file": str(other / "cert.pem"),
            "report_interval": 1,
        }
    }
    gw = Gateway(tmp_path / "gateway", internet, internal, settings)
    with running(gw):
        poll(
            lambda: "Monitoring report to" in gw.log_text(),
            15,
            lambda: gw.tail(),
        )
    assert server.posts == []
    lines = [line for line in gw.log_text().splitlines() if "Monitoring report to" in line]
    assert len(lines) == 1, lines
    assert "failed" in lines[0] and server.url in lines[0]
