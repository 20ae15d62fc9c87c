"""
The end-to-end harness: the real gateway process between two real SMTP servers.

L{SmtpSink} is an SMTP server (aiosmtpd) standing in for the Internet or for the
organisation's internal mail server: it records every message it is given and can be
told to refuse a recipient or a message. L{Gateway} writes a configuration, runs
C{twistd -n secmail} as a separate process on loopback ports and stops, kills or
restarts it. Everything here is plain blocking code: the gateway is another process.

Every wait is a bounded polling loop; every process and server is stopped by the
caller's cleanup (see the fixtures in C{test_gateway.py}).
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.parser
import email.policy
import http.client
import json
import os
import re
import shutil
import signal
import smtplib
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

from aiosmtpd.controller import Controller

REPO_ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
POLL_STEP = 0.05
T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def poll(
    check: Callable[[], T], timeout: float, describe: Callable[[], str], step: float = POLL_STEP
) -> T:
    """Call C{check} until it returns something true, at most C{timeout} seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s: {describe()}")
        time.sleep(step)


# --- the SMTP sink ------------------------------------------------------------------------


@dataclass(frozen=True)
class SinkMessage:
    """One message a sink accepted: the envelope and the bytes exactly as received.

    C{mail_from} is "" for the null sender C{<>}.
    """

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    mail_options: tuple[str, ...] = ()
    """The MAIL FROM parameters, e.g. C{("BODY=8BITMIME",)}."""

    def header(self, name: str) -> str | None:
        """The first header field C{name} (unfolded), or None."""
        head = self.data.split(b"\r\n\r\n", 1)[0]
        parsed = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(head)
        value = parsed.get(name)
        return None if value is None else str(value)

    @property
    def message_id(self) -> str | None:
        """The Message-ID (with its angle brackets), read with a cheap regex."""
        head = self.data.split(b"\r\n\r\n", 1)[0]
        m = re.search(rb"(?im)^message-id:[ \t]*(<[^>\r\n]*>)", head)
        return m.group(1).decode("ascii", "replace") if m else None

    def parsed(self) -> EmailMessage:
        msg = email.parser.BytesParser(policy=email.policy.default).parsebytes(self.data)
        assert isinstance(msg, EmailMessage)
        return msg

    def summary(self) -> str:
        return (
            f"<{self.mail_from}> -> {list(self.rcpt_tos)} "
            f"id={self.message_id} subject={self.header('subject')!r} ({len(self.data)} bytes)"
        )


@dataclass
class _DataFailure:
    reply: str
    remaining: int
    rcpt: str | None


class _SinkHandler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.sink.eight_bit_mime:
            return responses
        return [r for r in responses if r[4:].upper() != "8BITMIME"]

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        reply = self.sink._rcpt_reply(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        # aiosmtpd gives the null sender as "<>"; we record it as "" (as RFC 5321 paths go).
        mail_from = "" if envelope.mail_from in ("<>", None) else envelope.mail_from
        return self.sink._data(
            SinkMessage(
                mail_from=mail_from,
                rcpt_tos=tuple(envelope.rcpt_tos),
                data=bytes(envelope.original_content),
                mail_options=tuple(envelope.mail_options or ()),
            )
        )


class SmtpSink:
    """
    A real SMTP server on 127.0.0.1 recording every message (thread-safe).

    Scripting: L{refuse_rcpt} answers RCPT TO for one address with a given reply;
    L{fail_data} answers the final dot with a 4xx/5xx reply a number of times,
    for every message or only for those with a given recipient. With
    C{eight_bit_mime=False} its EHLO does not offer 8BITMIME (an old server).
    """

    def __init__(self, name: str = "sink", *, eight_bit_mime: bool = True) -> None:
        self.name = name
        self.eight_bit_mime = eight_bit_mime
        self.port = 0
        self._lock = threading.Lock()
        self._messages: list[SinkMessage] = []
        self._refused: list[tuple[tuple[str, ...], str]] = []
        self._rcpt_replies: dict[str, str] = {}
        self._data_failures: list[_DataFailure] = []
        self._controller: Controller | None = None

    # life

    def start(self) -> SmtpSink:
        self.port = free_port()
        self._controller = Controller(
            _SinkHandler(self), hostname=LOOPBACK, port=self.port, ready_timeout=10
        )
        self._controller.start()
        return self

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    @property
    def url(self) -> str:
        return f"smtp://{LOOPBACK}:{self.port}"

    # scripting

    def refuse_rcpt(self, address: str, reply: str = "550 5.1.1 No such user here") -> None:
        with self._lock:
            self._rcpt_replies[address.lower()] = reply

    def fail_data(
        self, reply: str = "451 4.3.0 Try again later", times: int = 1, rcpt: str | None = None
    ) -> None:
        with self._lock:
            self._data_failures.append(
                _DataFailure(reply, times, rcpt.lower() if rcpt is not None else None)
            )

    def _rcpt_reply(self, address: str) -> str | None:
        with self._lock:
            return self._rcpt_replies.get(address.lower())

    def _data(self, message: SinkMessage) -> str:
        rcpts = {r.lower() for r in message.rcpt_tos}
        with self._lock:
            for failure in self._data_failures:
                if failure.remaining > 0 and (failure.rcpt is None or failure.rcpt in rcpts):
                    failure.remaining -= 1
                    self._refused.append((message.rcpt_tos, failure.reply))
                    return failure.reply
            self._messages.append(message)
        return "250 2.0.0 OK queued"

    # what arrived

    def messages(self) -> list[SinkMessage]:
        with self._lock:
            return list(self._messages)

    def refused(self) -> list[tuple[tuple[str, ...], str]]:
        """Every message answered with a scripted failure: (recipients, reply)."""
        with self._lock:
            return list(self._refused)

    def describe(self, limit: int = 20) -> str:
        messages = self.messages()
        if not messages:
            return f"{self.name} received nothing"
        lines = [f"{self.name} received {len(messages)} message(s):"]
        lines += ["  " + m.summary() for m in messages[-limit:]]
        if len(messages) > limit:
            lines.insert(1, f"  (last {limit} shown)")
        return "\n".join(lines)

    def wait_for(
        self,
        predicate: Callable[[list[SinkMessage]], T],
        timeout: float = 15.0,
        what: str = "the expected mail",
    ) -> T:
        """Poll until C{predicate(messages)} is true and return its value; fail listing arrivals."""
        return poll(
            lambda: predicate(self.messages()),
            timeout,
            lambda: f"{self.name}: waiting for {what}\n{self.describe()}",
        )

    def wait_for_message(
        self, match: Callable[[SinkMessage], bool], timeout: float = 15.0, what: str = "a message"
    ) -> SinkMessage:
        def first(messages: list[SinkMessage]) -> SinkMessage | None:
            return next((m for m in messages if match(m)), None)

        found = self.wait_for(first, timeout, what)
        assert found is not None
        return found


# --- the gateway process ------------------------------------------------------------------


class GatewayError(AssertionError):
    """The gateway did not start (the text holds the end of its log)."""


def twistd_path() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("twistd")
    if found is None:
        raise GatewayError("twistd not found next to the Python interpreter or on PATH")
    return found


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return (
            "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
        )
    raise TypeError(f"cannot write {value!r} as TOML")


def toml_text(config: Mapping[str, Mapping[str, Any]]) -> str:
    """A TOML document of sections holding plain values (nested tables inline)."""
    lines = []
    for section, content in config.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in content.items()]
        lines.append("")
    return "\n".join(lines)


def run_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.pop("PYTHONSTARTUP", None)
    return env


def unverified_tls() -> ssl.SSLContext:
    """The portal's certificate is self-signed: don't verify it in tests."""
    return ssl._create_unverified_context()  # noqa: S323


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    cookies: dict[str, str] = dataclasses.field(default_factory=dict)


class Gateway:
    """
    One C{twistd -n secmail} process with its own directory, configuration and data.

    C{settings} is merged over the harness defaults, section by section.
    """

    HOSTNAME = "gw.test.example"
    START_TIMEOUT = 20.0
    STOP_TIMEOUT = 10.0

    def __init__(
        self,
        directory: Path,
        internet: SmtpSink,
        internal: SmtpSink,
        settings: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.smtp_port = free_port()
        self.portal_port = free_port()
        self.metrics_port = free_port()
        self.admin_port = free_port()
        self.data_dir = self.dir / "secmail-data"
        self.config_path = self.dir / "secmail.toml"
        self.log_path = self.dir / "gw.log"
        self.out_path = self.dir / "gw.out"
        config: dict[str, dict[str, Any]] = {
            "gateway": {"hostname": self.HOSTNAME, "data_dir": str(self.data_dir)},
            "smtp": {
                "listen": [f"tcp:{self.smtp_port}:interface={LOOPBACK}"],
                "accepted_networks": [f"{LOOPBACK}/32"],
            },
            "routes": {
                "outgoing": internet.url,
                "incoming": internal.url,
                "incoming_domains": ["corp.example"],
            },
            "portal": {
                "listen": [f"ssl:{self.portal_port}:interface={LOOPBACK}"],
                "url": self.portal_url,
            },
            "queue": {"poll_interval": 0.5},
            "metrics": {"listen": [f"tcp:{self.metrics_port}:interface={LOOPBACK}"]},
            # Its own port, so that gateways run side by side (the default is 9443).
            "admin": {"listen": [f"ssl:{self.admin_port}:interface={LOOPBACK}"]},
        }
        for section, values in (settings or {}).items():
            config.setdefault(section, {}).update(values)
        self.config = config
        self.config_path.write_text(toml_text(config), encoding="utf-8")
        self.process: subprocess.Popen[bytes] | None = None
        self._out: Any = None

    @property
    def portal_url(self) -> str:
        return f"https://{LOOPBACK}:{self.portal_port}"

    @property
    def admin_url(self) -> str:
        return f"https://{LOOPBACK}:{self.admin_port}"

    @property
    def hostname(self) -> str:
        return str(self.config["gateway"]["hostname"])

    # life

    def env(self) -> dict[str, str]:
        """The gateway process's environment."""
        return run_env()

    def start(self) -> Gateway:
        if self.running:
            raise GatewayError("the gateway is already running")
        self._out = open(self.out_path, "ab")  # noqa: SIM115 - closed in _reap
        self.process = subprocess.Popen(  # noqa: S603
            [
                twistd_path(),
                "-n",
                "--pidfile=",
                f"--logfile={self.log_path}",
                "secmail",
                "--config",
                str(self.config_path),
            ],
            cwd=self.dir,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.START_TIMEOUT
        while True:
            assert self.process is not None
            code = self.process.poll()
            if code is not None:
                raise GatewayError(f"the gateway exited with status {code}:\n{self.tail()}")
            if self._smtp_ready() and self._portal_ready():
                return
            if time.monotonic() >= deadline:
                raise GatewayError(
                    f"the gateway was not ready within {self.START_TIMEOUT:g} s:\n{self.tail()}"
                )
            time.sleep(0.1)

    def _smtp_ready(self) -> bool:
        try:
            with socket.create_connection((LOOPBACK, self.smtp_port), timeout=2) as s:
                line = b""
                while b"\r\n" not in line and len(line) < 1024:
                    chunk = s.recv(1024)
                    if not chunk:
                        break
                    line += chunk
                if line.startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return True
                return False
        except OSError:
            return False

    def _portal_ready(self) -> bool:
        try:
            with socket.create_connection((LOOPBACK, self.portal_port), timeout=2) as s:
                with unverified_tls().wrap_socket(s, server_hostname=LOOPBACK):
                    return True
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not stopped within STOP_TIMEOUT seconds."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(self.STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(self.STOP_TIMEOUT)
        self._reap()

    def kill(self) -> None:
        """SIGKILL: the crash."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(self.STOP_TIMEOUT)
        self._reap()

    def restart(self) -> Gateway:
        self.stop()
        return self.start()

    def _reap(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    # looking in

    def log_text(self) -> str:
        texts = []
        for path in sorted(self.dir.glob("gw.log*")) + [self.out_path]:
            if path.exists():
                texts.append(path.read_text("utf-8", "replace"))
        return "\n".join(texts)

    def tail(self, lines: int = 40) -> str:
        parts = []
        for path in (self.log_path, self.out_path):
            if path.exists():
                text = path.read_text("utf-8", "replace").splitlines()[-lines:]
                parts.append(f"--- {path.name} ---\n" + "\n".join(text))
        return "\n".join(parts) or "(no log output)"

    def received_count(self) -> int:
        """How many messages the intake has committed (their 'received' events)."""
        db = self.data_dir / "secmail.sqlite"
        if not db.exists():
            return 0
        conn = sqlite3.connect(str(db), timeout=10)
        try:
            row = conn.execute("SELECT COUNT(*) FROM events WHERE kind = 'received'").fetchone()
            return int(row[0])
        finally:
            conn.close()

    def smtp(self, **kwargs: Any) -> smtplib.SMTP:
        """A client session with the gateway's ESMTP server."""
        return smtplib.SMTP(LOOPBACK, self.smtp_port, timeout=30, **kwargs)

    def send(self, sender: str, recipients: list[str], message: bytes) -> dict[str, Any]:
        with self.smtp() as client:
            return client.sendmail(sender, recipients, message)

    def portal_get(self, path: str, cookies: dict[str, str] | None = None) -> HttpResponse:
        return self.portal_request("GET", path, cookies=cookies)

    def portal_post(
        self, path: str, form: dict[str, str], cookies: dict[str, str] | None = None
    ) -> HttpResponse:
        return self.portal_request("POST", path, form=form, cookies=cookies)

    def portal_request(
        self,
        method: str,
        path: str,
        form: dict[str, str] | None = None,
        cookies: dict[str, str] | None = None,
    ) -> HttpResponse:
        """One HTTPS request to the portal; Set-Cookie headers are collected by name."""
        conn = http.client.HTTPSConnection(
            LOOPBACK, self.portal_port, timeout=15, context=unverified_tls()
        )
        headers = {}
        if cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            got = {}
            for name, value in response.getheaders():
                if name.lower() == "set-cookie":
                    key, _, rest = value.partition("=")
                    got[key.strip()] = rest.split(";", 1)[0]
            flat = {k.lower(): v for k, v in response.getheaders()}
            return HttpResponse(response.status, flat, data, got)
        finally:
            conn.close()


def make_message(
    *,
    sender: str,
    to: str,
    subject: str,
    message_id: str,
    body: str = "Hello.\r\n",
    extra_headers: str = "",
) -> bytes:
    """A small RFC 5322 message with CRLF line ends, UTF-8 text body."""
    head = (
        f"From: Alice Sender <{sender}>\r\n"
        f"To: {to}\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: {message_id}\r\n"
        "Date: Mon, 02 Mar 2026 10:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        f"{extra_headers}"
        "\r\n"
    )
    if not body.endswith("\r\n"):
        body += "\r\n"
    return (head + body).encode("utf-8")


@contextlib.contextmanager
def running(gw: Gateway) -> Iterator[Gateway]:
    """The gateway started, and stopped at the end whatever happens."""
    try:
        yield gw.start()
    finally:
        gw.stop()
    assert_clean_log(gw)


def assert_clean_log(gw: Gateway) -> None:
    """Nothing unhandled or crashed in the gateway's log."""
    log = gw.log_text()
    assert "Traceback" not in log and "Unhandled" not in log, gw.tail()
