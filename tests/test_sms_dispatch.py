"""The SMS dispatcher: backends in order, failover, events without the text, the e-mail backend."""

from __future__ import annotations

from collections.abc import Coroutine
from email import message_from_bytes
from email.policy import default
from typing import Any, TypeVar

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from secmail.masking import mask_number
from secmail.sms.at import ModemError, ModemGone, ModemTimeout
from secmail.sms.dispatch import EmailSmsBackend, SmsDispatcher
from secmail.sms.errors import SmsPermanentError, SmsTemporaryError, classify

T = TypeVar("T")
NUMBER = "+358401234567"
MASKED = mask_number(NUMBER)
TEXT = "Your PIN is 482913"


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that finishes at once (the fakes never wait)."""
    results: list[Any] = []
    Deferred.fromCoroutine(coroutine).addBoth(results.append)
    assert results, "the coroutine is still waiting"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]  # type: ignore[no-any-return]


class FakeBackend:
    def __init__(self, name: str, outcome: str | BaseException) -> None:
        self.name = name
        self.outcome = outcome
        self.calls: list[tuple[str, str]] = []

    async def send(self, number: str, text: str) -> str:
        self.calls.append((number, text))
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


class Events:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    async def __call__(self, about: str, kind: str, detail: str) -> None:
        self.events.append((about, kind, detail))


def dispatch(*backends: FakeBackend) -> tuple[SmsDispatcher, Events]:
    events = Events()
    return SmsDispatcher(backends, events), events


def test_first_backend_that_works_sends() -> None:
    """The first backend is tried first; when it sends, the later ones are not touched."""
    modem, http = FakeBackend("modem", "ref-1"), FakeBackend("http", "ref-2")
    dispatcher, events = dispatch(modem, http)
    assert run(dispatcher.send(NUMBER, TEXT, about="m1")) == ("modem", "ref-1")
    assert modem.calls == [(NUMBER, TEXT)] and http.calls == []
    assert events.events == [("m1", "sms sent", f"modem to {MASKED}: ref-1")]


@pytest.mark.parametrize(
    "error",
    [
        SmsTemporaryError("gateway busy"),
        SmsPermanentError("gateway refused the message"),
        ModemError(500, "unknown error", source="CMS", temporary=True),
        ModemError(38, "network out of order", source="CMS", temporary=False),
        ModemTimeout("AT+CMGS", 30),
    ],
)
def test_failover_to_next_backend(error: Exception) -> None:
    """A temporary or permanent failure of one backend moves the SMS on to the next."""
    modem, http = FakeBackend("modem", error), FakeBackend("http", "0: Accepted")
    dispatcher, events = dispatch(modem, http)
    assert run(dispatcher.send(NUMBER, TEXT, about="m1")) == ("http", "0: Accepted")
    assert [kind for _, kind, _ in events.events] == ["sms failed", "sms sent"]
    assert events.events[0][2].startswith(f"modem to {MASKED}: ")
    assert str(error) in events.events[0][2]


def test_all_fail_temporarily_if_any_was_temporary() -> None:
    """When every backend fails and one may work later, the error is temporary and names each."""
    dispatcher, _ = dispatch(
        FakeBackend("modem", ModemError(21, "short message transfer rejected", source="CMS")),
        FakeBackend("http", SmsTemporaryError("no answer from the gateway within 30 s")),
    )
    with pytest.raises(SmsTemporaryError) as e:
        run(dispatcher.send(NUMBER, TEXT, about="m1"))
    assert str(e.value) == (
        f"SMS to {MASKED} not sent: modem: +CMS ERROR 21: short message transfer rejected;"
        " http: no answer from the gateway within 30 s"
    )


def test_all_fail_permanently() -> None:
    """When every backend refuses for good, the error is permanent and names each backend."""
    dispatcher, events = dispatch(
        FakeBackend("http", SmsPermanentError("gateway refused the message (HTTP 403)")),
        FakeBackend("smtp", SmsPermanentError("relay said no")),
    )
    with pytest.raises(SmsPermanentError) as e:
        run(dispatcher.send(NUMBER, TEXT, about="m1"))
    assert not isinstance(e.value, SmsTemporaryError)
    assert "http: gateway refused the message (HTTP 403); smtp: relay said no" in str(e.value)
    assert [kind for _, kind, _ in events.events] == ["sms failed", "sms failed"]
    assert "(permanent)" in events.events[0][2]


def test_events_and_errors_never_hold_text_or_number() -> None:
    """Events and errors carry the masked number, never the full number or the SMS text."""
    dispatcher, events = dispatch(
        FakeBackend("modem", SmsTemporaryError(f"echoed {TEXT} back")),
        FakeBackend("http", UnicodeEncodeError("ascii", TEXT, 0, 1, "nope")),
        FakeBackend("smtp", SmsPermanentError(f"no: {TEXT}")),
    )
    with pytest.raises(SmsTemporaryError) as e:
        run(dispatcher.send(NUMBER, TEXT, about="m1"))
    texts = [detail for _, _, detail in events.events] + [str(e.value)]
    assert len(events.events) == 3
    for line in texts:
        assert TEXT not in line and NUMBER not in line and "482913" not in line
        assert MASKED in line
    assert "http: UnicodeEncodeError" in str(e.value)  # an unexpected error by its type only


def test_reference_echoing_text_is_scrubbed() -> None:
    """A backend reference that echoes the SMS text is recorded and returned without it."""
    dispatcher, events = dispatch(FakeBackend("http", f"queued: {TEXT}"))
    assert run(dispatcher.send(NUMBER, TEXT, about="m1")) == ("http", "queued: [message]")
    assert TEXT not in events.events[0][2]


@pytest.mark.parametrize("echo", [NUMBER, NUMBER[1:]])
def test_reference_echoing_number_is_masked(echo: str) -> None:
    """A gateway's answer that repeats the number is recorded with the number masked."""
    dispatcher, events = dispatch(FakeBackend("http", f"OK to={echo} id=7"))
    assert run(dispatcher.send(NUMBER, TEXT, about="m1")) == ("http", f"OK to={MASKED} id=7")
    assert "401234567" not in events.events[0][2]


def test_bad_number_tries_no_backend() -> None:
    """A number not in international form fails for good before any backend is tried."""
    modem = FakeBackend("modem", "ref")
    dispatcher, events = dispatch(modem)
    with pytest.raises(SmsPermanentError, match="not an international number"):
        run(dispatcher.send("0401234567", TEXT, about="m1"))
    assert modem.calls == []
    assert [(about, kind) for about, kind, _ in events.events] == [("m1", "sms failed")]
    assert "0401234567" not in events.events[0][2]


def test_no_backends_is_permanent() -> None:
    """A dispatcher without backends fails permanently instead of pretending to send."""
    with pytest.raises(SmsPermanentError, match="no SMS backend"):
        run(SmsDispatcher([]).send(NUMBER, TEXT, about="m1"))


def test_failing_record_does_not_stop_sending() -> None:
    """An event that cannot be recorded neither stops failover nor fails a sent SMS."""

    async def broken(about: str, kind: str, detail: str) -> None:
        raise RuntimeError("database down")

    http = FakeBackend("http", "ok")
    dispatcher = SmsDispatcher([FakeBackend("modem", ModemGone()), http], broken)
    assert run(dispatcher.send(NUMBER, TEXT, about="m1")) == ("http", "ok")
    assert http.calls == [(NUMBER, TEXT)]


def test_cancellation_is_not_failover() -> None:
    """A cancelled send stops there: the caller gave up, the next backend is not tried."""
    http = FakeBackend("http", "ok")
    dispatcher, events = dispatch(FakeBackend("modem", CancelledError()), http)
    with pytest.raises(CancelledError):
        run(dispatcher.send(NUMBER, TEXT, about="m1"))
    assert http.calls == [] and events.events == []


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (ModemError(500, "unknown", source="CMS", temporary=True), SmsTemporaryError),
        (ModemError(21, "rejected", source="CMS", temporary=False), SmsPermanentError),
        (ModemTimeout("AT+CMGS", 30), SmsTemporaryError),
        (ModemGone(), SmsTemporaryError),
        (SmsTemporaryError("x"), SmsTemporaryError),
        (SmsPermanentError("x"), SmsPermanentError),
        (OSError("serial port vanished"), SmsTemporaryError),
    ],
)
def test_classify(error: BaseException, kind: type) -> None:
    """Modem errors follow their flag; timeouts, a lost link and surprises are temporary."""
    assert classify(error) is kind


def test_http_module_reexports_shared_errors() -> None:
    """The HTTP gateway raises the same error classes the dispatcher classifies."""
    from secmail.sms import http

    assert http.SmsTemporaryError is SmsTemporaryError
    assert http.SmsPermanentError is SmsPermanentError


def test_email_backend_address_and_content() -> None:
    """The e-mail backend mails the text in plain 7-bit text to the template's address."""
    sent: list[tuple[str, bytes]] = []

    async def send_mail(address: str, content: bytes) -> None:
        sent.append((address, content))

    backend = EmailSmsBackend("{to}@sms.example.net", send_mail, from_address="secmail@gw.example")
    reference = run(backend.send(NUMBER, "PIN 482913 – käytä heti"))
    assert backend.name == "smtp"
    assert NUMBER[1:] not in reference
    [(address, content)] = sent
    assert address == "358401234567@sms.example.net"
    assert content.isascii() and b"\r\n" in content and b"\n" not in content.replace(b"\r\n", b"")
    mail = message_from_bytes(content, policy=default)
    assert mail["To"] == address and mail["From"] == "secmail@gw.example"
    assert mail.get_content_type() == "text/plain"
    assert mail.get_content().strip() == "PIN 482913 – käytä heti"


def test_email_backend_refuses_bad_number() -> None:
    """The e-mail backend sends nothing for a number not in international form."""
    sent: list[str] = []

    async def send_mail(address: str, content: bytes) -> None:
        sent.append(address)

    with pytest.raises(SmsPermanentError):
        run(EmailSmsBackend("{to}@sms.example.net", send_mail).send("040 123", TEXT))
    assert sent == []
