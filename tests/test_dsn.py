"""Tests for secmail.dsn: RFC 3464 bounces."""

from __future__ import annotations

import email
import email.message
from datetime import UTC, datetime
from email import policy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secmail.dsn import (
    MAX_ORIGINAL_HEADER_BYTES,
    FailedRecipient,
    build_dsn,
    original_header_block,
)

HEADERS = (
    b"Received: from mail.corp.example by gw.corp.example\r\n"
    b"From: Alice <alice@corp.example>\r\n"
    b"To: bob@x.example\r\n"
    b"Subject: Quarterly numbers\r\n"
    b"Message-ID: <orig1@corp.example>\r\n"
)
BODY = b"SECRET BODY TEXT: the numbers are 42\r\n"
BOB = FailedRecipient("bob@x.example", "5.1.1", "550 5.1.1 <bob@x.example>: User unknown")
CAROL = FailedRecipient(
    "carol@y.example", "4.4.1", "connect to mx.y.example[192.0.2.1]:25: Connection timed out"
)


def build(**overrides: Any) -> bytes:
    kwargs: dict[str, Any] = {
        "reporting_mta": "gw.corp.example",
        "original_sender": "alice@corp.example",
        "original_envelope_id": "env-1",
        "failed": [BOB],
        "original_headers": HEADERS + b"\r\n" + BODY,
        "arrival_date": datetime(2024, 5, 17, 12, 0, tzinfo=UTC),
        "date": datetime(2024, 5, 22, 12, 0, tzinfo=UTC),
        "from_address": "MAILER-DAEMON@gw.corp.example",
        "reason": "The recipient's server refused the message.",
        "make_msgid": lambda: "<dsn1@gw.corp.example>",
    }
    kwargs.update(overrides)
    result = build_dsn(**kwargs)
    assert result is not None
    return result


def parts(dsn: bytes) -> list[email.message.EmailMessage]:
    msg = email.message_from_bytes(dsn, policy=policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return list(msg.iter_parts())  # type: ignore[arg-type]


def status_blocks(dsn: bytes) -> list[email.message.Message]:
    blocks = parts(dsn)[1].get_payload()
    assert isinstance(blocks, list)
    return [b for b in blocks if isinstance(b, email.message.Message)]


def test_structure() -> None:
    """A bounce is multipart/report with text, delivery-status and headers parts."""
    dsn = build()
    msg = email.message_from_bytes(dsn, policy=policy.default)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in parts(dsn)] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@gw.corp.example>"
    assert msg["To"] == "alice@corp.example"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Message-ID"] == "<dsn1@gw.corp.example>"
    assert msg["Date"] == "Wed, 22 May 2024 12:00:00 +0000"
    assert msg["MIME-Version"] == "1.0"
    assert not msg.defects


def test_per_message_fields() -> None:
    """The report names the reporting MTA, the envelope id and the arrival date."""
    first = status_blocks(build())[0]
    assert first["Reporting-MTA"] == "dns; gw.corp.example"
    assert first["Original-Envelope-Id"] == "env-1"
    assert first["Arrival-Date"] == "Fri, 17 May 2024 12:00:00 +0000"


def test_no_envelope_id_field_without_one() -> None:
    """Original-Envelope-Id is left out when the sender gave none."""
    assert "Original-Envelope-Id" not in status_blocks(build(original_envelope_id=None))[0]


def test_status_per_recipient() -> None:
    """Each recipient gets its own block with its own status, action and diagnostic."""
    blocks = status_blocks(build(failed=[BOB, CAROL]))
    assert len(blocks) == 3
    bob, carol = blocks[1], blocks[2]
    assert bob["Final-Recipient"] == "rfc822; bob@x.example"
    assert bob["Action"] == "failed"
    assert bob["Status"] == "5.1.1"
    assert bob["Diagnostic-Code"] == "smtp; 550 5.1.1 <bob@x.example>: User unknown"
    assert carol["Final-Recipient"] == "rfc822; carol@y.example"
    assert carol["Status"] == "4.4.1"
    # Folded fields unfold with their leading space; the value is the same.
    assert carol["Diagnostic-Code"].strip().startswith("X-Secmail; connect to mx.y.example")


def test_human_part_names_recipients_and_reason() -> None:
    """The readable part says what failed, why and for whom."""
    text = parts(build(failed=[BOB, CAROL]))[0].get_content()
    assert "could not be delivered" in text
    assert "The recipient's server refused the message." in text
    assert "<bob@x.example>: failed (status 5.1.1)" in text
    assert "User unknown" in text
    assert "<carol@y.example>: failed (status 4.4.1)" in text


@pytest.mark.parametrize("sender", ["", "<>", "  "])
def test_null_sender_is_never_bounced(sender: str) -> None:
    """A bounce is never sent for a message from the null sender."""
    result = build_dsn(
        reporting_mta="gw.corp.example",
        original_sender=sender,
        original_envelope_id=None,
        failed=[BOB],
        original_headers=HEADERS,
        arrival_date=datetime(2024, 5, 17, tzinfo=UTC),
        date=datetime(2024, 5, 22, tzinfo=UTC),
        from_address="MAILER-DAEMON@gw.corp.example",
        reason="",
    )
    assert result is None


def test_only_headers_of_original() -> None:
    """The original's body never appears, even when the caller passes the whole message."""
    dsn = build()
    assert b"SECRET BODY" not in dsn
    original = parts(dsn)[2].get_content()
    assert "Subject: Quarterly numbers" in original
    assert "Message-ID: <orig1@corp.example>" in original


@pytest.mark.parametrize("sep", [b"\n", b"\r"])
def test_body_cut_with_other_line_ends(sep: bytes) -> None:
    """A bare-LF or bare-CR message still has its body cut at the first empty line."""
    message = HEADERS.replace(b"\r\n", sep) + sep + BODY.replace(b"\r\n", sep)
    dsn = build(original_headers=message)
    assert b"SECRET BODY" not in dsn
    assert "Subject: Quarterly numbers" in parts(dsn)[2].get_content()


def test_headers_bounded() -> None:
    """At most 50,000 bytes of the original headers are quoted, cut at a line end."""
    many = b"".join(b"X-Filler-%05d: %s\r\n" % (i, b"z" * 60) for i in range(2000))
    dsn = build(original_headers=HEADERS + many + b"\r\n" + BODY)
    quoted = parts(dsn)[2].get_content().encode()
    assert len(quoted) <= MAX_ORIGINAL_HEADER_BYTES
    assert quoted.endswith(b"\n")
    assert len(quoted) > MAX_ORIGINAL_HEADER_BYTES - 100
    assert "cut short" in parts(dsn)[0].get_content()
    assert len(dsn) < MAX_ORIGINAL_HEADER_BYTES + 10_000


def test_original_header_block() -> None:
    """The header block is taken up to the empty line and given CRLF line ends."""
    assert original_header_block(b"A: 1\nB: 2\n\nbody") == (b"A: 1\r\nB: 2\r\n", False)
    assert original_header_block(b"\r\nbody only") == (b"", False)
    block, cut = original_header_block(b"A: " + b"x" * MAX_ORIGINAL_HEADER_BYTES + b"\r\n")
    assert (block, cut) == (b"", True)


def test_crlf_and_line_length() -> None:
    """All lines end in CRLF and stay within 998 octets, even with very long originals."""
    long_header = b"X-Long: " + b"q" * 3000 + b"\r\n"
    dsn = build(
        original_headers=HEADERS + long_header,
        failed=[FailedRecipient("bob@x.example", "5.0.0", "550 " + "w" * 5000)],
    )
    assert b"\n" not in dsn.replace(b"\r\n", b"")
    assert b"\r" not in dsn.replace(b"\r\n", b"")
    assert max(len(line) for line in dsn.split(b"\r\n")) <= 998


def test_non_ascii_original_headers() -> None:
    """8-bit header bytes are carried in an encoding that survives 7-bit transport."""
    dsn = build(original_headers="Subject: Hyvää päivää\r\n".encode() + b"X-Bad: \xff\r\n")
    assert max(dsn) < 128
    assert "Hyvää päivää" in parts(dsn)[2].get_content()


def test_control_characters_in_original_headers_are_encoded() -> None:
    """NUL and other control bytes in the original never go out raw in a 7bit part."""
    dsn = build(original_headers=b"X-Nul: a\x00b\x0bc\r\n")
    assert b"\x00" not in dsn and b"\x0b" not in dsn
    assert "a\x00b" in parts(dsn)[2].get_content()


def test_injection_in_diagnostic_is_flattened() -> None:
    """CR/LF in a remote reply cannot add fields or headers to the report."""
    evil = FailedRecipient("bob@x.example", "5.1.1", "550 no\r\nAction: delivered\r\nX-Evil: 1")
    blocks = status_blocks(build(failed=[evil]))
    assert blocks[1]["Action"] == "failed"
    assert "X-Evil" not in blocks[1]
    assert len(blocks) == 2


@pytest.mark.parametrize(
    "bad",
    [
        FailedRecipient("bob@x.example", "550", "x"),
        FailedRecipient("bob@x.example", "5.1.1", "x", action="bounced"),
        FailedRecipient("bob@x.example\r\nX: y", "5.1.1", "x"),
    ],
)
def test_invalid_recipient_entries_raise(bad: FailedRecipient) -> None:
    """Malformed statuses, actions or addresses are programming errors, not silent junk."""
    with pytest.raises(ValueError):
        build(failed=[bad])


def test_unread_message_quotes_nothing() -> None:
    """A bounce for a message that cannot be read has no headers part and says so."""
    dsn = build(original_headers=None)
    assert [p.get_content_type() for p in parts(dsn)] == ["text/plain", "message/delivery-status"]
    text = parts(dsn)[0].get_content()
    assert "could not be read, so nothing of it is included" in text
    assert "headers of your message are attached" not in text


def test_no_recipients_raises() -> None:
    """A report about nobody is a programming error."""
    with pytest.raises(ValueError):
        build(failed=[])


def test_delayed_report_is_not_called_undelivered() -> None:
    """A report with only delayed recipients does not claim the mail was returned."""
    dsn = build(failed=[FailedRecipient("bob@x.example", "4.4.1", "timeout", action="delayed")])
    msg = email.message_from_bytes(dsn, policy=policy.default)
    assert msg["Subject"] == "Delivery status notification"
    assert status_blocks(dsn)[1]["Action"] == "delayed"


def test_output_is_deterministic() -> None:
    """The same inputs give the same bytes, so the builder is a pure function."""
    assert build() == build()


@given(
    st.binary(max_size=2000),
    st.text(max_size=200),
    st.sampled_from(["5.1.1", "4.4.7", "5.7.1"]),
)
def test_any_input_gives_a_parseable_report(headers: bytes, diagnostic: str, status: str) -> None:
    """Whatever the original headers and remote reply, the report is 7-bit and has three parts."""
    dsn = build(
        original_headers=headers,
        failed=[FailedRecipient("bob@x.example", status, diagnostic)],
    )
    assert b"\n" not in dsn.replace(b"\r\n", b"")
    assert max(len(line) for line in dsn.split(b"\r\n")) <= 998
    assert all(b in (9, 10, 13) or 32 <= b < 127 for b in dsn)
    found = parts(dsn)
    assert [p.get_content_type() for p in found] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    blocks = status_blocks(dsn)
    assert len(blocks) == 2
    assert blocks[1]["Status"] == status
