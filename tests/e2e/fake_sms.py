"""
A local HTTP server playing an SMS gateway, for the end-to-end tests: it records each
request (GET query or POST body) and answers with scripted statuses.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.e2e.harness import LOOPBACK, poll

#: How long a wait for a request lasts by default, in seconds.
SMS_WAIT = 20.0


@dataclass(frozen=True)
class SmsRequest:
    """One request the fake HTTP SMS gateway got, and the status it answered."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    body: bytes
    content_type: str
    status: int

    @property
    def accepted(self) -> bool:
        return 200 <= self.status <= 299

    @property
    def to(self) -> str:
        return self._fields()[0]

    @property
    def text(self) -> str:
        return self._fields()[1]

    def _fields(self) -> tuple[str, str]:
        """(to, text), from the query of a GET or from the JSON or form body of a POST."""
        if self.method == "GET":
            values: Mapping[str, Any] = {k: v[0] for k, v in self.query.items() if len(v) == 1}
        elif self.content_type == "application/json":
            values = json.loads(self.body)
        else:
            form = urllib.parse.parse_qs(self.body.decode("ascii"), strict_parsing=True)
            values = {k: v[0] for k, v in form.items() if len(v) == 1}
        return str(values["to"]), str(values["text"])


class _SmsHttpServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: FakeSmsGateway


class _SmsHandler(BaseHTTPRequestHandler):
    server: _SmsHttpServer
    timeout = 10  # a client that stalls does not keep a thread for ever

    def do_GET(self) -> None:
        self.server.owner._handle(self, b"")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.server.owner._handle(self, self.rfile.read(min(length, 65536)))

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the test reads the recorded requests, not stderr


class FakeSmsGateway:
    """
    A real HTTP server on 127.0.0.1 playing an SMS gateway (Kannel-like answers): it
    records every request and answers C{default_status}, or the statuses queued with
    L{answer_next} first. Thread-safe; L{stop} shuts it down and joins its thread.
    """

    def __init__(self, default_status: int = 200) -> None:
        self.default_status = default_status
        self._lock = threading.Lock()
        self._requests: list[SmsRequest] = []
        self._script: deque[int] = deque()
        self._server: _SmsHttpServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def start(self) -> FakeSmsGateway:
        server = _SmsHttpServer((LOOPBACK, 0), _SmsHandler)
        server.owner = self
        self._server = server
        self.port = int(server.server_address[1])
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="FakeSmsGateway"
        )
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        thread, self._thread = self._thread, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(5)
            assert not thread.is_alive(), "the fake SMS gateway's thread did not end"

    def __enter__(self) -> FakeSmsGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, path_and_query: str) -> str:
        return f"http://{LOOPBACK}:{self.port}{path_and_query}"

    # scripting

    def answer_next(self, *statuses: int) -> None:
        with self._lock:
            self._script.extend(statuses)

    def set_default(self, status: int) -> None:
        with self._lock:
            self.default_status = status

    def _handle(self, handler: _SmsHandler, body: bytes) -> None:
        with self._lock:
            status = self._script.popleft() if self._script else self.default_status
            split = urllib.parse.urlsplit(handler.path)
            query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
            content_type = (handler.headers.get("Content-Type") or "").split(";")[0].strip()
            self._requests.append(
                SmsRequest(handler.command, handler.path, query, body, content_type, status)
            )
        answer = b"0: Accepted for delivery\n" if 200 <= status <= 299 else b"Try later\n"
        handler.send_response(status)
        handler.send_header("Content-Type", "text/plain")
        handler.send_header("Content-Length", str(len(answer)))
        handler.end_headers()
        handler.wfile.write(answer)

    # what arrived

    def requests(self) -> list[SmsRequest]:
        with self._lock:
            return list(self._requests)

    def accepted(self) -> list[SmsRequest]:
        return [r for r in self.requests() if r.accepted]

    def describe(self) -> str:
        seen = self.requests()
        if not seen:
            return "the fake SMS gateway got no request"
        return "the fake SMS gateway got: " + "; ".join(
            f"{r.method} {r.path} -> {r.status}" for r in seen
        )

    def wait_for_requests(self, count: int, timeout: float = SMS_WAIT) -> list[SmsRequest]:
        """Every request so far, once there are at least C{count}."""
        return self._wait(self.requests, count, timeout, "request(s)")

    def wait_for_accepted(self, count: int, timeout: float = SMS_WAIT) -> list[SmsRequest]:
        """Every accepted (2xx) request so far, once there are at least C{count}."""
        return self._wait(self.accepted, count, timeout, "accepted SMS")

    def _wait(
        self, seen: Callable[[], list[SmsRequest]], count: int, timeout: float, what: str
    ) -> list[SmsRequest]:
        def enough() -> list[SmsRequest]:
            got = seen()
            return got if len(got) >= count else []

        return poll(enough, timeout, lambda: f"waiting for {count} {what}; {self.describe()}")


def http_sms_settings(server: FakeSmsGateway) -> dict[str, Any]:
    """[sms.http] with the number and text in the query (Kannel's sendsms style)."""
    return {"url": server.url("/send?to={to}&text={text}")}


# --- a gateway whose clock the test moves -----------------------------------------------
