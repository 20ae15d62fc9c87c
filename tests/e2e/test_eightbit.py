"""
End-to-end: 8-bit mail relayed to a server that does not offer 8BITMIME (RFC 6152). The
gateway converts it to 7-bit on the way (same content), or bounces it with the reason
when it cannot; to a server that offers 8BITMIME it goes as it is, with BODY=8BITMIME.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.e2e.harness import Gateway, SmtpSink, make_message, running

SENDER = "alice@corp.example"


@pytest.fixture(scope="module")
def old_internet() -> Iterator[SmtpSink]:
    """The Internet's side as an old server: EHLO without 8BITMIME."""
    sink = SmtpSink("internet sink without 8BITMIME", eight_bit_mime=False)
    try:
        yield sink.start()
    finally:
        sink.stop()


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, old_internet: SmtpSink, internal: SmtpSink
) -> Iterator[Gateway]:
    settings = {"secure": {"mode": "all"}, "queue": {"retry_initial": 1, "retry_max": 2}}
    gw = Gateway(tmp_path_factory.mktemp("eightbit"), old_internet, internal, settings)
    with running(gw) as started:
        yield started


def msgid(prefix: str) -> str:
    return f"<{prefix}-{secrets.token_hex(6)}@corp.example>"


def test_converted_to_7bit(gateway: Gateway, old_internet: SmtpSink) -> None:
    """8-bit mail to a server without 8BITMIME arrives 7-bit, without BODY=, same text."""
    mid = msgid("eightbit")
    body = "Hyvää päivää, Grüße, Ελληνικά, 日本語 ✓\r\n.A line starting with a dot\r\n"
    message = make_message(
        sender=SENDER,
        to="dave@partner.example",
        subject="Grüße aus Köln",
        message_id=mid,
        body=body,
    )
    with gateway.smtp() as client:
        client.ehlo()
        assert client.has_extn("8bitmime")
        refused = client.sendmail(SENDER, ["dave@partner.example"], message, ["BODY=8BITMIME"])
    assert refused == {}
    got = old_internet.wait_for_message(lambda m: m.message_id == mid, what=f"the relayed {mid}")
    assert got.data.isascii(), "8-bit bytes reached a server without 8BITMIME"
    assert got.mail_options == ()
    parsed = got.parsed()
    assert parsed["Subject"] == "Grüße aus Köln"
    assert parsed["Content-Transfer-Encoding"] == "quoted-printable"
    assert parsed.get_content() == body


def test_not_convertible_bounces(gateway: Gateway, internal: SmtpSink) -> None:
    """8-bit mail that cannot be made 7-bit (a UTF-8 address in From) bounces, saying why."""
    mid = msgid("utf8-from")
    message = make_message(
        sender=SENDER, to="dave@partner.example", subject="x", message_id=mid, body="ä"
    ).replace(b"From: Alice Sender <alice@corp.example>", "From: jörg@corp.example".encode())
    gateway.send(SENDER, ["dave@partner.example"], message)
    dsn = internal.wait_for_message(
        lambda m: m.mail_from == "" and mid.encode() in m.data,
        timeout=20,
        what=f"the bounce of {mid}",
    )
    unfolded = dsn.data.replace(b"\r\n ", b" ").replace(b"\r\n\t", b" ")
    assert b"does not accept 8-bit mail (no 8BITMIME)" in unfolded, dsn.data[:3000]
    assert b"SMTPUTF8" in unfolded


def test_body_8bitmime_where_offered(gateway: Gateway, internal: SmtpSink) -> None:
    """To a server that offers 8BITMIME (the internal one) 8-bit mail goes as it is."""
    mid = msgid("inside")
    message = make_message(
        sender=SENDER, to="erin@corp.example", subject="Grüße", message_id=mid, body="Grüße"
    )
    gateway.send(SENDER, ["erin@corp.example"], message)
    got = internal.wait_for_message(lambda m: m.message_id == mid, what=f"the relayed {mid}")
    assert got.mail_options == ("BODY=8BITMIME",)
    assert got.data.endswith(message)
