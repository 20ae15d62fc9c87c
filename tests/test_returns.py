"""Returned notifications: VERP addresses and reading delivery reports."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from secmail.dsn import FailedRecipient, build_dsn
from secmail.letters import verp_address
from secmail.returns import failed_recipients, notice_for_sender, returned_envelope

BOUNCE = "secmail-bounces@gw.example"
ENVELOPE = "0123456789abcdef0123456789abcdef"
WHEN = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def test_verp_round_trip() -> None:
    """A notification's envelope sender names its envelope, and is read back as such."""
    address = verp_address(BOUNCE, ENVELOPE)
    assert address == f"secmail-bounces+{ENVELOPE}@gw.example"
    assert returned_envelope(address, BOUNCE) == ENVELOPE
    assert returned_envelope(address.upper(), BOUNCE) == ENVELOPE


def test_plain_bounce_address() -> None:
    """The bounce address without a tag is ours but names no envelope."""
    assert returned_envelope(BOUNCE, BOUNCE) == ""


@given(st.text(max_size=40))
def test_other_addresses_are_not_ours(tag: str) -> None:
    """Only a 32-hex-digit tag on our bounce address counts; anything else is ordinary mail."""
    address = f"secmail-bounces+{tag}@gw.example"
    result = returned_envelope(address, BOUNCE)
    assert result is None or (len(result) == 32 and result == tag.lower())
    assert returned_envelope(f"someone+{ENVELOPE}@gw.example", BOUNCE) is None
    assert returned_envelope(f"secmail-bounces+{ENVELOPE}@other.example", BOUNCE) is None


def test_reads_a_report() -> None:
    """The failed recipients, status and diagnostic are read from an RFC 3464 report."""
    report = build_dsn(
        reporting_mta="mx.partner.example",
        original_sender=verp_address(BOUNCE, ENVELOPE),
        original_envelope_id=None,
        failed=[FailedRecipient("bob@partner.example", "5.1.1", "550 5.1.1 no such user")],
        original_headers=b"Subject: x\r\n",
        arrival_date=WHEN,
        date=WHEN,
        from_address="MAILER-DAEMON@mx.partner.example",
        reason="failed",
    )
    assert report is not None
    [failed] = failed_recipients(report) or []
    assert failed.address == "bob@partner.example"
    assert failed.status == "5.1.1"
    assert "no such user" in failed.diagnostic


def test_not_a_report() -> None:
    """An auto-reply or any other mail is not a delivery report."""
    assert failed_recipients(b"Subject: Out of office\r\n\r\nI am away.\r\n") is None


def test_delayed_is_not_failed() -> None:
    """A report of a delay only lists nothing as failed."""
    raw = (
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\ndelayed\r\n"
        b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\n"
        b"Final-Recipient: rfc822; bob@partner.example\r\nAction: delayed\r\nStatus: 4.4.1\r\n"
        b"--b--\r\n"
    )
    assert failed_recipients(raw) == []


def test_notice_names_recipient() -> None:
    """The sender's notice names the recipient who was not notified and the remote reason."""
    notice = notice_for_sender(
        hostname="gw.example",
        original_sender="alice@corp.example",
        recipient="bob@partner.example",
        report=FailedRecipient("bob@partner.example", "5.2.2", "552 mailbox full"),
        arrival=WHEN,
        now=WHEN,
    )
    assert notice is not None
    assert b"bob@partner.example" in notice
    assert b"5.2.2" in notice
    assert b"mailbox full" in notice


def test_deeply_nested_mail_is_no_report() -> None:
    """Mail nested deeper than the parser's limit (a RecursionError before) is no report."""
    inner = b"Content-Type: text/plain\r\n\r\nx\r\n"
    for _ in range(2000):
        inner = b"Content-Type: message/rfc822\r\n\r\n" + inner
    raw = (
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n"
        b"--B\r\n" + inner + b"--B--\r\n"
    )
    assert failed_recipients(raw) is None
