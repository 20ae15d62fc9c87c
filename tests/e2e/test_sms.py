"""
End-to-end tests of registered letters' PINs by SMS: the real C{twistd -n secmail} process
(see L{tests.e2e.harness}) sends the PIN through real peers, and the test reads it there and
types it on the HTTPS portal, as a recipient would.

The peers: the pty GSM modem simulator (L{tests.e2e.fake_modem}), a tiny HTTP server on
127.0.0.1 playing an HTTP SMS gateway (L{FakeSmsGateway}), and the Internet SMTP sink for
the e-mail-to-SMS gateway. Each scenario has its own gateway process (the modem scenarios
share one); every process, server and modem is stopped by its fixture or a finally, and
every wait is bounded.

The lock test needs four PINs, and the portal sends at most one a minute: instead of
sleeping three minutes it runs its gateway with a wall clock the test moves forward (see
L{ClockShiftedGateway}).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.fake_modem import FakeModem
from tests.e2e.fake_sms import SMS_WAIT, FakeSmsGateway, http_sms_settings
from tests.e2e.harness import (
    Gateway,
    HttpResponse,
    SinkMessage,
    SmtpSink,
    assert_clean_log,
    poll,
    running,
)
from tests.e2e.mails import text_parts
from tests.e2e.registered import (
    MASKED,
    NATIONAL,
    NUMBER,
    RegisteredLetter,
    pin_of,
    send_registered,
    wrong,
)

SENDER = "alice@corp.example"
SIM_PIN = "4931"
SESSION_COOKIE = "__Host-secmail-session"
LOCKED_SUBJECT = "Secure message locked after too many wrong PINs"
#: Bounded waits, in seconds.
RETRY_WAIT = 35.0  # the outbox's first retry comes 10 s after a failure


CLOCK_ENV = "SECMAIL_E2E_CLOCK_OFFSET_FILE"
#: Loaded by the gateway's Python at start-up (its directory is put first on PYTHONPATH):
#: time.time() then reads the real clock plus the seconds in the offset file, re-read
#: whenever the file is replaced. Twisted's reactor.seconds() is time.time, bound when
#: Twisted is imported, after this has run.
SITECUSTOMIZE = """\
import os
import sys
import time

_path = os.environ.get("CLOCK_ENV")
if _path:
    _real_time = time.time
    _seen = [None, 0.0]

    def _shifted_time():
        try:
            st = os.stat(_path)
            stamp = (st.st_ino, st.st_mtime_ns)
            if stamp != _seen[0]:
                with open(_path, encoding="ascii") as f:
                    _seen[1] = float(f.read())
                _seen[0] = stamp
        except (OSError, ValueError):
            pass
        return _real_time() + _seen[1]

    time.time = _shifted_time
    print("secmail e2e: clock offset read from " + _path, file=sys.stderr, flush=True)
""".replace("CLOCK_ENV", CLOCK_ENV)


class ClockShiftedGateway(Gateway):
    """
    A gateway process whose wall clock (C{time.time}, and so the reactor's) runs
    L{offset} seconds ahead; L{advance} moves it on while it runs. Nothing else about
    the process, its configuration or its database is changed.
    """

    def __init__(
        self,
        directory: Path,
        internet: SmtpSink,
        internal: SmtpSink,
        settings: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(directory, internet, internal, settings)
        self.site_dir = self.dir / "clock-site"
        self.site_dir.mkdir(exist_ok=True)
        (self.site_dir / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="ascii")
        self.offset_path = self.dir / "clock-offset"
        self.offset = 0.0
        self._write_offset()

    def _write_offset(self) -> None:
        fresh = self.offset_path.with_suffix(".new")
        fresh.write_text(repr(self.offset), encoding="ascii")
        os.replace(fresh, self.offset_path)  # a new inode: the process re-reads it at once

    def advance(self, seconds: float) -> None:
        self.offset += seconds
        self._write_offset()

    def env(self) -> dict[str, str]:
        env = super().env()
        env["PYTHONPATH"] = os.pathsep.join([str(self.site_dir), env["PYTHONPATH"]])
        env[CLOCK_ENV] = str(self.offset_path)
        return env

    def start(self) -> Gateway:
        super().start()
        assert "secmail e2e: clock offset read from" in self.log_text(), self.tail()
        return self


# --- letters and the portal -------------------------------------------------------------


class Reader:
    """The recipient on the portal: the harness's HTTPS requests, with cookies kept."""

    def __init__(self, gw: Gateway, letter: RegisteredLetter) -> None:
        self.gw = gw
        self.letter = letter
        self.cookies: dict[str, str] = {}
        self.csrf = ""

    @property
    def link(self) -> str:
        return f"/m/{self.letter.token}"

    def _keep(self, response: HttpResponse) -> HttpResponse:
        for name, value in response.cookies.items():
            if value:
                self.cookies[name] = value
            else:
                self.cookies.pop(name, None)
        return response

    def get(self, path: str) -> HttpResponse:
        return self._keep(self.gw.portal_get(path, cookies=dict(self.cookies)))

    def post(self, path: str, form: dict[str, str]) -> HttpResponse:
        return self._keep(self.gw.portal_post(path, form, cookies=dict(self.cookies)))

    def landing(self) -> HttpResponse:
        page = self.get(self.link)
        assert page.status == 200, page.body[:2000]
        found = re.search(r'name="csrf" value="([0-9a-f]+)"', html(page))
        assert found is not None, html(page)
        self.csrf = found.group(1)
        return page

    def open(self) -> HttpResponse:
        """The landing page, then "Open message": the PIN page (a PIN is ordered)."""
        self.landing()
        return self.post(self.link, {"csrf": self.csrf})

    def order(self) -> HttpResponse:
        return self.post(f"{self.link}/pin", {"csrf": self.csrf})

    def verify(self, pin: str) -> HttpResponse:
        return self.post(f"{self.link}/pin/verify", {"csrf": self.csrf, "pin": pin})


def html(response: HttpResponse) -> str:
    return response.body.decode("utf-8", "replace")


def assert_pin_page(response: HttpResponse, letter: RegisteredLetter, note: str = "") -> None:
    """The PIN page: the masked number, a PIN field, nothing of the letter, no session."""
    text = html(response)
    assert response.status == 200, text
    assert "Type the PIN" in text, text
    assert MASKED in text, text
    assert NATIONAL[1:] not in text and NUMBER not in text, "the whole number is shown"
    assert 'name="pin"' in text and f'action="/m/{letter.token}/pin/verify"' in text
    assert letter.subject not in text and letter.body not in text, "content before the PIN"
    assert SESSION_COOKIE not in response.cookies
    if note:
        assert note in text, text


def open_to_pin_page(gw: Gateway, letter: RegisteredLetter) -> Reader:
    """The recipient opens the link and clicks Open: the PIN page, a PIN on its way."""
    reader = Reader(gw, letter)
    landing = reader.landing()
    assert "Registered letter (PIN by text message)" in html(landing)
    assert letter.subject not in html(landing) and letter.body not in html(landing)
    page = reader.post(reader.link, {"csrf": reader.csrf})
    assert_pin_page(page, letter, "A new PIN is on its way.")
    return reader


def assert_opens_with(reader: Reader, pin: str) -> None:
    """A wrong PIN is refused (no content, no session); the right one signs in to /read."""
    letter = reader.letter
    refused = reader.verify(wrong(pin))
    assert_pin_page(refused, letter, "That PIN is not right. Please try again.")
    assert reader.get("/read").status == 401
    signed = reader.verify(pin)
    assert signed.status == 303, html(signed)
    assert signed.headers.get("location") == "/read"
    assert SESSION_COOKIE in signed.cookies
    reading = reader.get("/read")
    assert reading.status == 200, html(reading)
    assert letter.subject in html(reading)
    assert letter.body in html(reading)


def assert_not_logged(gw: Gateway, pin: str) -> None:
    """The PIN (it travels only in the SMS) is in no log line of the gateway."""
    assert not re.search(rf"(?<![\w-]){pin}(?![\w-])", gw.log_text()), "the PIN was logged"


def sms_events(gw: Gateway) -> list[tuple[str, str]]:
    """The gateway's "sms ..." events (kind, detail), oldest first (read-only SQLite)."""
    db = gw.data_dir / "secmail.sqlite"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute(
            "SELECT kind, detail FROM events WHERE kind LIKE 'sms %' ORDER BY id"
        ).fetchall()
    finally:
        conn.close()
    return [(str(kind), str(detail)) for kind, detail in rows]


def outbox_rows(gw: Gateway) -> int:
    db = gw.data_dir / "secmail.sqlite"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM sms_outbox").fetchone()[0])
    finally:
        conn.close()


def log_count(gw: Gateway, text: str) -> int:
    return gw.log_text().count(text)


# --- a. the GSM modem -------------------------------------------------------------------


@pytest.fixture(scope="module")
def modem(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeModem]:
    with FakeModem(tmp_path_factory.mktemp("modem"), sim_pin=SIM_PIN) as fake:
        yield fake


@pytest.fixture(scope="module")
def modem_gateway(
    tmp_path_factory: pytest.TempPathFactory,
    internet: SmtpSink,
    internal: SmtpSink,
    modem: FakeModem,
) -> Iterator[Gateway]:
    gw = Gateway(
        tmp_path_factory.mktemp("modem-gateway"),
        internet,
        internal,
        {
            "sms": {"order": ["modem"]},
            "sms.modem": {"device": modem.path, "sim_pin": SIM_PIN},
        },
    )
    with running(gw) as started:
        wait_modem_ready(started)
        yield started


def wait_modem_ready(gw: Gateway) -> None:
    poll(
        lambda: "GSM modem ready" in gw.log_text(),
        15,
        lambda: "the modem link to become ready\n" + gw.tail(),
    )


def next_sms(modem: FakeModem, before: int, timeout: float = SMS_WAIT) -> tuple[str, str]:
    """The first SMS the modem sent after the first C{before}."""
    return modem.wait_for_sms(before + 1, timeout=timeout)[before]


def test_modem_pin_opens_registered_letter(
    modem_gateway: Gateway, internet: SmtpSink, modem: FakeModem
) -> None:
    """Open sends the PIN through the modem (SIM PIN entered); only that PIN opens the letter."""
    # The SIM asked for its PIN and got it from [sms.modem] sim_pin, in text mode.
    assert modem.commands.count(f'AT+CPIN="{SIM_PIN}"') == 1, modem.commands
    assert "AT+CMGF=1" in modem.commands
    letter = send_registered(modem_gateway, internet)
    before = len(modem.sms)
    reader = open_to_pin_page(modem_gateway, letter)

    number, text = next_sms(modem, before)
    assert number == NUMBER
    pin = pin_of(text)
    assert_opens_with(reader, pin)
    assert len(modem.sms) == before + 1, "more than one SMS for one Open"
    assert_not_logged(modem_gateway, pin)
    assert f'AT+CPIN="{SIM_PIN}"' not in modem_gateway.log_text()


# --- b. modem errors, delays, URCs and an unplug ----------------------------------------


def test_modem_error_is_retried_by_the_outbox(
    modem_gateway: Gateway, internet: SmtpSink, modem: FakeModem
) -> None:
    """+CMS ERROR 500 on the first try: the outbox tries the same PIN again ~10 s later."""
    letter = send_registered(modem_gateway, internet)
    before_sms, before_tries = len(modem.sms), len(modem.submissions)
    modem.fail_next(1, "+CMS ERROR: 500")
    retries = log_count(modem_gateway, "will be tried again in 10 s")
    started = time.monotonic()
    reader = open_to_pin_page(modem_gateway, letter)

    failed = modem.wait_until(
        lambda: modem.submissions[before_tries:], 10, "the first (refused) submission"
    )[0]
    assert failed.result == "+CMS ERROR: 500" and not failed.sent
    poll(
        lambda: log_count(modem_gateway, "will be tried again in 10 s") > retries,
        10,
        lambda: "the outbox's retry line\n" + modem_gateway.tail(),
    )
    # Meanwhile the reader who orders again is told it is taking longer (and gets no new PIN).
    page = reader.order()
    assert_pin_page(page, letter, "Sending the text message is taking longer than usual.")

    number, text = next_sms(modem, before_sms, timeout=RETRY_WAIT)
    elapsed = time.monotonic() - started
    assert number == NUMBER
    assert text == failed.text, "the retry sent another text than the first try"
    assert 8.0 <= elapsed <= 30.0, f"the retry came after {elapsed:.1f} s, not about 10 s"
    assert_opens_with(reader, pin_of(text))
    assert len(modem.sms) == before_sms + 1


def test_modem_slow_send_still_delivers(
    modem_gateway: Gateway, internet: SmtpSink, modem: FakeModem
) -> None:
    """A modem that takes 4 s to answer AT+CMGS still sends the PIN, at the first try."""
    letter = send_registered(modem_gateway, internet)
    before_sms, before_tries = len(modem.sms), len(modem.submissions)
    log_start = len(modem_gateway.log_text())
    modem.send_delay = 4.0
    try:
        started = time.monotonic()
        reader = open_to_pin_page(modem_gateway, letter)
        number, text = next_sms(modem, before_sms)
        elapsed = time.monotonic() - started
    finally:
        modem.send_delay = 0.0
    assert number == NUMBER
    assert elapsed >= 3.5, f"the SMS was recorded {elapsed:.1f} s after Open"
    assert len(modem.submissions) == before_tries + 1, modem.submissions[before_tries:]
    assert "not sent by modem" not in modem_gateway.log_text()[log_start:]
    assert_opens_with(reader, pin_of(text))


def test_modem_urc_during_send(
    modem_gateway: Gateway, internet: SmtpSink, modem: FakeModem
) -> None:
    """Unsolicited result codes (idle, and between the text and +CMGS) do not break a send."""
    letter = send_registered(modem_gateway, internet)
    before_sms, before_tries = len(modem.sms), len(modem.submissions)
    log_start = len(modem_gateway.log_text())
    modem.unsolicited("RING")
    modem.urc_during_send = '+CMTI: "SM",3'
    try:
        reader = open_to_pin_page(modem_gateway, letter)
        number, text = next_sms(modem, before_sms)
    finally:
        modem.urc_during_send = False
    assert number == NUMBER
    assert len(modem.submissions) == before_tries + 1
    assert modem.submissions[-1].sent
    assert "not sent by modem" not in modem_gateway.log_text()[log_start:]
    assert_opens_with(reader, pin_of(text))


def test_modem_unplugged_then_back(
    modem_gateway: Gateway, internet: SmtpSink, modem: FakeModem
) -> None:
    """A PIN ordered while the modem is unplugged goes out once it is back (SIM PIN again)."""
    letter = send_registered(modem_gateway, internet)
    before_sms = len(modem.sms)
    openings = modem.openings
    pin_entries = modem.commands.count(f'AT+CPIN="{SIM_PIN}"')
    lost = log_count(modem_gateway, "GSM modem connection lost")
    ready = log_count(modem_gateway, "GSM modem ready")

    modem.disconnect(down_for=3)
    unplugged = time.monotonic()
    poll(
        lambda: log_count(modem_gateway, "GSM modem connection lost") > lost,
        10,
        lambda: "the gateway to notice the unplug\n" + modem_gateway.tail(),
    )
    reader = open_to_pin_page(modem_gateway, letter)
    # The PIN was ordered while the modem was still unplugged (it is down for 3 s).
    assert not modem.connected, "the modem came back before the PIN was ordered"
    assert len(modem.sms) == before_sms

    number, text = next_sms(modem, before_sms, timeout=30)
    elapsed = time.monotonic() - unplugged
    assert number == NUMBER
    assert modem.openings == openings + 1, "the SMS did not go out on the new opening"
    print(f"the PIN went out {elapsed:.1f} s after the unplug (down for 3 s)")
    assert modem.commands.count(f'AT+CPIN="{SIM_PIN}"') == pin_entries + 1
    assert log_count(modem_gateway, "GSM modem ready") == ready + 1
    assert_opens_with(reader, pin_of(text))


@pytest.fixture(scope="module")
def failover(
    tmp_path_factory: pytest.TempPathFactory, internet: SmtpSink, internal: SmtpSink
) -> Iterator[tuple[Gateway, FakeModem, FakeSmsGateway]]:
    directory = tmp_path_factory.mktemp("failover")
    with FakeModem(directory) as fake, FakeSmsGateway() as server:
        gw = Gateway(
            directory / "gateway",
            internet,
            internal,
            {
                "sms": {"order": ["modem", "http"]},
                "sms.modem": {"device": fake.path},
                "sms.http": http_sms_settings(server),
            },
        )
        with running(gw) as started:
            wait_modem_ready(started)
            yield started, fake, server


def test_modem_error_fails_over_to_http(
    failover: tuple[Gateway, FakeModem, FakeSmsGateway], internet: SmtpSink
) -> None:
    """order = ["modem", "http"]: the modem's +CMS ERROR sends the same PIN by HTTP at once."""
    gw, fake, server = failover
    letter = send_registered(gw, internet)
    fake.fail_next(1, "+CMS ERROR: 500")
    started = time.monotonic()
    reader = open_to_pin_page(gw, letter)

    [request] = server.wait_for_accepted(1, timeout=10)
    elapsed = time.monotonic() - started
    assert elapsed < 8.0, f"the HTTP gateway got the SMS only after {elapsed:.1f} s"
    [refused] = fake.submissions
    assert refused.result == "+CMS ERROR: 500"
    assert fake.sms == []
    assert request.method == "GET" and request.to == NUMBER
    assert request.text == refused.text
    kinds = sms_events(gw)
    assert [k for k, _ in kinds] == ["sms failed", "sms sent"], kinds
    assert kinds[0][1].startswith(f"modem to {MASKED}: +CMS ERROR 500"), kinds
    assert kinds[1][1].startswith(f"http to {MASKED}: 0: Accepted for delivery"), kinds
    assert_opens_with(reader, pin_of(request.text))
    assert len(server.requests()) == 1


# --- c. an HTTP SMS gateway ---------------------------------------------------------------


def test_http_gateway_get(
    http_gateway: Gateway, internet: SmtpSink, http_sms: FakeSmsGateway
) -> None:
    """A GET with the number and the text percent-encoded in the query; both arrive exactly."""
    letter = send_registered(http_gateway, internet)
    before = len(http_sms.requests())
    reader = open_to_pin_page(http_gateway, letter)

    request = http_sms.wait_for_requests(before + 1)[before]
    assert request.method == "GET"
    path, _, raw_query = request.path.partition("?")
    assert path == "/send"
    assert " " not in raw_query and "+" not in raw_query, raw_query  # %20 and %2B
    assert set(request.query) == {"to", "text"}, request.query
    assert request.query["to"] == [NUMBER]
    [text] = request.query["text"]
    pin = pin_of(text)  # the whole text, exactly
    assert_opens_with(reader, pin)
    assert len(http_sms.requests()) == before + 1
    assert_not_logged(http_gateway, pin)


#: A PIN text with characters that JSON must escape and that are not ASCII.
JSON_PIN_TEXT = 'Code "{pin}" & more = 100% \\ ä€ #1'


def test_http_gateway_json_post(tmp_path: Path, internet: SmtpSink, internal: SmtpSink) -> None:
    """method = "POST" with a JSON body: the number and an awkward pin_text arrive exactly."""
    with FakeSmsGateway() as server:
        gw = Gateway(
            tmp_path / "gateway",
            internet,
            internal,
            {
                "sms": {"order": ["http"], "pin_text": {"en": JSON_PIN_TEXT}},
                "sms.http": {
                    "url": server.url("/api/sms"),
                    "method": "POST",
                    "body": '{"to": "{to}", "text": "{text}"}',
                },
            },
        )
        with running(gw) as started:
            letter = send_registered(started, internet)
            reader = open_to_pin_page(started, letter)
            [request] = server.wait_for_requests(1)
            assert (request.method, request.path) == ("POST", "/api/sms")
            assert request.content_type == "application/json"
            sent = json.loads(request.body)
            assert set(sent) == {"to", "text"}
            assert sent["to"] == NUMBER
            found = re.fullmatch(r'Code "(\d{6})" & more = 100% \\ ä€ #1', sent["text"])
            assert found is not None, sent
            assert_opens_with(reader, found.group(1))


# --- d. the outbox survives a restart -----------------------------------------------------


def test_outbox_survives_a_restart(tmp_path: Path, internet: SmtpSink, internal: SmtpSink) -> None:
    """A PIN the HTTP gateway refuses (503) waits in the outbox across a restart, then opens."""
    with FakeSmsGateway(default_status=503) as server:
        gw = Gateway(
            tmp_path / "gateway",
            internet,
            internal,
            {"sms": {"order": ["http"]}, "sms.http": http_sms_settings(server)},
        )
        try:
            gw.start()
            letter = send_registered(gw, internet)
            opened = time.monotonic()
            reader = open_to_pin_page(gw, letter)
            [first] = server.wait_for_requests(1)
            assert first.status == 503
            pin = pin_of(first.text)
            poll(
                lambda: "will be tried again in 10 s" in gw.log_text(),
                10,
                lambda: "the outbox's retry line\n" + gw.tail(),
            )

            gw.stop()
            assert outbox_rows(gw) == 1, "the refused SMS is not in the outbox"
            assert server.accepted() == []
            server.set_default(200)
            gw.start()

            accepted = server.wait_for_accepted(1, timeout=RETRY_WAIT)
            elapsed = time.monotonic() - opened
            assert elapsed < 600, "the SMS came after the PIN's 10 minutes"
            assert accepted[0].to == NUMBER
            assert accepted[0].text == first.text, "another PIN was sent after the restart"
            poll(lambda: outbox_rows(gw) == 0, 10, lambda: "the outbox to empty\n" + gw.tail())
            # The same reader (the same link and form) opens the letter with it.
            assert_opens_with(reader, pin)
            assert len(server.accepted()) == 1
            print(f"the PIN refused before the restart arrived {elapsed:.1f} s after Open")
        finally:
            gw.stop()
        assert_clean_log(gw)


# --- e. wrong PINs lock the letter --------------------------------------------------------


def test_twenty_wrong_pins_lock_and_tell_the_sender(
    tmp_path: Path, internet: SmtpSink, internal: SmtpSink
) -> None:
    """
    20 wrong PINs (5 on each of 4 PINs) lock the letter: 403, the sender is told by mail.

    A PIN allows 5 tries, so 20 wrong ones need 4 PINs, and the portal sends at most one
    PIN a minute. Instead of sleeping 3 x 61 s, this gateway's wall clock is moved 61 s
    forward before each new order (L{ClockShiftedGateway}); that ordering is refused
    without it is checked first.
    """
    with FakeSmsGateway() as server:
        gw = ClockShiftedGateway(
            tmp_path / "gateway",
            internet,
            internal,
            {"sms": {"order": ["http"]}, "sms.http": http_sms_settings(server)},
        )
        try:
            gw.start()
            letter = send_registered(gw, internet)
            reader = open_to_pin_page(gw, letter)
            response: HttpResponse | None = None
            for n in range(4):
                if n:
                    # After 5 wrong tries the PIN is dead, and a new one only comes a minute
                    # after the last: refused now, sent once the clock has moved on.
                    too_soon = reader.order()
                    assert_pin_page(too_soon, letter, "A PIN was sent less than a minute ago.")
                    assert len(server.requests()) == n
                    gw.advance(61)
                    assert_pin_page(reader.order(), letter, "A new PIN is on its way.")
                pin = pin_of(server.wait_for_accepted(n + 1)[n].text)
                for attempt in range(5):
                    response = reader.verify(wrong(pin))
                    if n == 3 and attempt == 4:
                        break  # the 20th
                    if attempt < 4:
                        expected = "That PIN is not right. Please try again."
                    else:
                        expected = "That PIN no longer works (too many tries"
                    assert_pin_page(response, letter, expected)
                    assert not [m for m in internal.messages() if is_notice(m)]
            assert response is not None
            assert response.status == 403, html(response)
            assert "This message is locked" in html(response)

            notice = internal.wait_for_message(is_notice, what="the notice of the lock")
            assert notice.rcpt_tos == (SENDER,)
            text = " ".join("\n".join(text_parts(notice)).split())
            assert f"Your registered letter to {letter.recipient}" in text, text
            assert "a wrong PIN was typed 20 times" in text, text
            for secret in (letter.subject, letter.body):
                assert secret.encode() not in notice.data

            # Locked for good: the last PIN, a new order and a new Open all answer 403,
            # and no SMS goes out, even a minute later.
            gw.advance(61)
            for answer in (reader.verify(pin), reader.order(), reader.open()):
                assert answer.status == 403, html(answer)
                assert "This message is locked" in html(answer)
            assert reader.get("/read").status == 401
            time.sleep(1.0)
            assert len(server.requests()) == 4, server.describe()
            assert len([m for m in internal.messages() if is_notice(m)]) == 1
            assert "locked after too many wrong PINs" in gw.log_text()
        finally:
            gw.stop()
        assert_clean_log(gw)


def is_notice(m: SinkMessage) -> bool:
    return m.header("subject") == LOCKED_SUBJECT


# --- f. an e-mail-to-SMS gateway ----------------------------------------------------------


def is_sms_mail(m: SinkMessage) -> bool:
    return m.rcpt_tos == (NUMBER[1:] + "@sms.example",)


def test_email_to_sms_gateway(tmp_path: Path, internet: SmtpSink, internal: SmtpSink) -> None:
    """order = ["smtp"]: the PIN goes as a plain mail to 358401234567@sms.example."""
    gw = Gateway(
        tmp_path / "gateway",
        internet,
        internal,
        {"sms": {"order": ["smtp"]}, "sms.smtp": {"address": "{to}@sms.example"}},
    )
    with running(gw) as started:
        letter = send_registered(started, internet)
        reader = open_to_pin_page(started, letter)
        mail = internet.wait_for_message(is_sms_mail, what="the mail to the SMS gateway")
        assert mail.header("to") == "358401234567@sms.example"
        [text] = text_parts(mail)
        pin = pin_of(text.strip())
        for secret in (letter.subject, letter.body):
            assert secret.encode() not in mail.data
        assert_opens_with(reader, pin)
        assert len([m for m in internet.messages() if is_sms_mail(m)]) == 1
        assert [k for k, _ in sms_events(started)] == ["sms sent"]
