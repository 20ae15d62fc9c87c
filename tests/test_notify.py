"""Tests for secmail.notify: the notification mail sent instead of a secure message."""

from __future__ import annotations

import email
import email.message
import quopri
from datetime import UTC, datetime
from email import policy
from email.headerregistry import Address
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from secmail import notify
from secmail.address import Level, Recipient, parse_recipient
from secmail.config import Settings, from_mapping
from secmail.notify import Notification, build_notification, clean_text, code_mail

TOKEN = "Zm9vYmFyYmF6cXV4LXRva2VuLTI1Ni1iaXRzLWxvbmctZW5vdWdo"
LINK = f"https://secure.corp.example/m/{TOKEN}"
SECRET_BODY = "The merger closes on Friday"


def make_settings(**secure: Any) -> Settings:
    return from_mapping(
        {
            "gateway": {
                "hostname": "gw.corp.example",
                "bounce_address": "bounces@gw.corp.example",
                "notification_from": "secmail@corp.example",
            },
            "portal": {"url": "https://secure.corp.example/"},
            "secure": secure,
        }
    )


SETTINGS = make_settings()
LETTER = parse_recipient("bob@partner.example.s", ".s", "358")
REGISTERED = parse_recipient("bob@partner.example.0401234567.s", ".s", "358")


def build(**overrides: Any) -> Notification:
    kwargs: dict[str, Any] = {
        "texts": SETTINGS.notification_texts,
        "recipient": LETTER,
        "original_sender": "alice@corp.example",
        "original_from_display": "Alice Example",
        "original_subject": "Merger plans",
        "token": TOKEN,
        "message_id_domain": "gw.corp.example",
        "date": datetime(2024, 5, 17, 12, 30, tzinfo=UTC),
        "make_msgid": lambda: "<n1@gw.corp.example>",
    }
    kwargs.update(overrides)
    return build_notification(**kwargs)


def parsed(n: Notification) -> email.message.EmailMessage:
    msg = email.message_from_bytes(n.content, policy=policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def bodies(n: Notification) -> tuple[str, str]:
    msg = parsed(n)
    text = msg.get_body(("plain",))
    page = msg.get_body(("html",))
    assert text is not None and page is not None
    return text.get_content(), page.get_content()


def test_envelope() -> None:
    """The envelope goes from the gateway's bounce address to the real recipient address."""
    n = build()
    assert (n.sender, n.recipient) == ("bounces@gw.corp.example", "bob@partner.example")


def test_headers() -> None:
    """Headers name the sender via secmail, the real recipient, and mark the mail automatic."""
    msg = parsed(build())
    (sender,) = msg["From"].addresses
    assert (sender.display_name, sender.addr_spec) == (
        "Alice Example via secmail",
        "secmail@corp.example",
    )
    assert msg["To"] == "bob@partner.example"
    assert msg["Reply-To"] == "alice@corp.example"
    assert msg["Subject"] == "Secure message from Alice Example is waiting for you"
    assert msg["Date"] == "Fri, 17 May 2024 12:30:00 +0000"
    assert msg["Message-ID"] == "<n1@gw.corp.example>"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["MIME-Version"] == "1.0"
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    for part in msg.iter_parts():
        assert part.get_content_charset() == "utf-8"
        assert part["Content-Transfer-Encoding"] in ("quoted-printable", "base64")


def test_sender_address_used_without_display_name() -> None:
    """Without a From display name the sender's address names who sent the message."""
    msg = parsed(build(original_from_display=None))
    assert msg["Subject"] == "Secure message from alice@corp.example is waiting for you"
    assert msg["From"].addresses[0].display_name == "alice@corp.example via secmail"


def test_default_message_id_uses_domain() -> None:
    """Without an injected generator the Message-ID is made in the given domain."""
    msg = parsed(build(make_msgid=None))
    assert msg["Message-ID"].endswith("@gw.corp.example>")


@pytest.mark.parametrize("sender", ["", "<>", " "])
def test_null_sender_has_no_reply_to(sender: str) -> None:
    """A null envelope sender gives no Reply-To and still a readable subject."""
    msg = parsed(build(original_sender=sender, original_from_display=None))
    assert "Reply-To" not in msg
    assert msg["Subject"] == "A secure message is waiting for you"


def test_unparseable_sender_has_no_reply_to() -> None:
    """A sender that is no single address cannot smuggle extra Reply-To addresses."""
    msg = parsed(build(original_sender="a@x.example, evil@y.example"))
    assert "Reply-To" not in msg


def test_link_in_both_parts() -> None:
    """Both the text and the HTML part carry the portal link."""
    text, page = bodies(build())
    assert LINK in text
    assert f'href="{LINK}"' in page


def test_no_message_content() -> None:
    """Neither the subject (by default) nor anything else of the message appears."""
    n = build(original_subject=SECRET_BODY)
    text, page = bodies(n)
    assert SECRET_BODY not in text and SECRET_BODY not in page
    assert SECRET_BODY not in str(parsed(n)["Subject"])
    assert b"merger" not in n.content.lower()


def test_subject_shown_when_configured() -> None:
    """notification_shows_subject appends the original subject to the notification's."""
    msg = parsed(build(texts=make_settings(notification_shows_subject=True).notification_texts))
    assert msg["Subject"] == "Secure message from Alice Example is waiting for you: Merger plans"


def test_letter_instructions() -> None:
    """A letter's recipient is told to open the link and about the e-mail code elsewhere."""
    text, page = bodies(build())
    assert "Open the link" in text and "code that is sent to this e-mail address" in text
    assert "PIN" not in text and "PIN" not in page


def test_registered_instructions() -> None:
    """A registered letter's recipient is told a PIN comes by SMS to the number ending 67."""
    text, page = bodies(build(recipient=REGISTERED))
    assert "PIN" in text and "ending in 67" in text
    assert "PIN" in page and "ending in 67" in page
    assert "0401234567" not in text and "+358401234567" not in text


def test_registered_without_number() -> None:
    """A registered recipient without a number is pointed at the stored number."""
    recipient = Recipient("bob@partner.example", Level.REGISTERED, None, "bob@partner.example.s")
    text, _ = bodies(build(recipient=recipient))
    assert "the phone number registered for you" in text


def test_gateway_hostname_and_retention() -> None:
    """The mail names the gateway host and how long the message is kept."""
    text, page = bodies(build())
    assert "gw.corp.example" in text and "gw.corp.example" in page
    assert "30 days" in text


def test_plain_recipient_is_refused() -> None:
    """Plain recipients get the message itself, never a notification."""
    plain = parse_recipient("bob@partner.example", ".s", "358")
    with pytest.raises(ValueError):
        build(recipient=plain)


@pytest.mark.parametrize("token", ["", "abc/def", 'a"onclick="x', "a b"])
def test_bad_token_is_refused(token: str) -> None:
    """Only URL-safe tokens go into the link, so the link cannot be bent into markup."""
    with pytest.raises(ValueError):
        build(token=token)


def test_script_display_name_is_escaped_in_html() -> None:
    """A display name with markup appears escaped in the HTML part."""
    _, page = bodies(build(original_from_display="<script>alert(1)</script>"))
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


@pytest.mark.parametrize("field", ["original_from_display", "original_subject", "original_sender"])
def test_header_injection_is_neutralised(field: str) -> None:
    """CR/LF in the sender's name, subject or address cannot add a header."""
    settings = make_settings(notification_shows_subject=True)
    evil = "Mallory\r\nBcc: victim@evil.example\r\nX-Injected: 1"
    if field == "original_sender":
        evil = "m@x.example\r\nBcc: victim@evil.example"
    msg = parsed(build(texts=settings.notification_texts, **{field: evil}))
    assert "Bcc" not in msg and "X-Injected" not in msg
    assert msg.defects == []


def test_crlf_only_and_short_lines() -> None:
    """Every line ends in CRLF and none is longer than 998 octets."""
    n = build(
        original_from_display="x" * 2000,
        original_subject="y" * 5000,
        texts=make_settings(notification_shows_subject=True).notification_texts,
    )
    assert b"\r\n" in n.content
    assert b"\n" not in n.content.replace(b"\r\n", b"")
    assert b"\r" not in n.content.replace(b"\r\n", b"")
    assert max(len(line) for line in n.content.split(b"\r\n")) <= 998


def test_output_is_deterministic() -> None:
    """The same inputs give the same bytes, so the builder is a pure function."""
    assert build().content == build().content


def test_clean_text() -> None:
    """Untrusted text loses control and bidi characters, runs of spaces, and excess length."""
    assert clean_text("a\r\nb\t c\u202ed\x00", 100) == "a b c d"
    assert clean_text("abcdef", 4) == "abc…"


@given(
    st.text(max_size=300),
    st.one_of(st.none(), st.text(max_size=300)),
    st.sampled_from([LETTER, REGISTERED]),
)
def test_any_name_and_subject_give_a_clean_mail(
    name: str, subject: str | None, recipient: Recipient
) -> None:
    """Whatever the sender's name and subject, the mail parses cleanly, CRLF, and keeps the link."""
    n = build(
        original_from_display=name,
        original_subject=subject,
        recipient=recipient,
        texts=make_settings(notification_shows_subject=True).notification_texts,
    )
    assert b"\n" not in n.content.replace(b"\r\n", b"")
    assert max(len(line) for line in n.content.split(b"\r\n")) <= 998
    assert all(b in (9, 10, 13) or 32 <= b < 127 for b in n.content)
    msg = parsed(n)
    assert list(msg.keys()).count("Subject") == 1
    assert "Bcc" not in msg
    text, page = bodies(n)
    assert LINK in text and LINK in page


def test_code_mail() -> None:
    """The code mail carries the code and its lifetime, goes to the recipient, CRLF only."""
    mail = code_mail(
        identity=SETTINGS.identity,
        recipient="bob@partner.example",
        code="012345",
        minutes=10,
        message_id_domain="gw.example",
        date=datetime(2026, 11, 30, tzinfo=UTC),
    )
    assert mail.recipient == "bob@partner.example"
    assert mail.sender == SETTINGS.gateway.bounce_address
    assert b"\n" not in mail.content.replace(b"\r\n", b"")
    parsed = email.message_from_bytes(mail.content, policy=policy.default)
    assert parsed["To"] == "bob@partner.example"
    assert "012345" in parsed.get_content()
    assert "10 minutes" in parsed.get_content()


def test_code_mail_refuses_bad_code() -> None:
    """Only a 6-digit code goes into a code mail."""
    with pytest.raises(ValueError):
        code_mail(
            identity=SETTINGS.identity,
            recipient="bob@partner.example",
            code="12\r\nX: y",
            minutes=10,
            message_id_domain="gw.example",
            date=datetime(2026, 11, 30, tzinfo=UTC),
        )


def test_verification_phrase_in_both_parts() -> None:
    """The organisation's phrase, which the portal shows too, is in the text and HTML parts."""
    settings = from_mapping(
        {
            "gateway": {"hostname": "gw.corp.example"},
            "portal": {"url": "https://secure.corp.example", "verification_phrase": "blue <heron>"},
        }
    )
    text, page = bodies(build(texts=settings.notification_texts))
    assert "Your organisation's verification phrase: «blue <heron>»" in text
    assert "Your organisation&#x27;s verification phrase: «blue &lt;heron&gt;»" in page


def test_no_phrase_when_not_set() -> None:
    """Without a phrase configured, the notification says nothing about one."""
    text, page = bodies(build())
    assert "verification phrase" not in text and "verification phrase" not in page


@given(st.from_regex(notify._SIMPLE_ADDRESS, fullmatch=True))
def test_simple_sender_is_its_own_reply_to(address: str) -> None:
    """The fast path for plain addresses gives what the email package's parser gives."""
    assert notify._reply_to(address) == Address(addr_spec=address).addr_spec


@given(st.text(max_size=400))
@example("x" * 74 + " \n")  # binascii.b2a_qp makes this line 77 long
@example("x" * 75 + "\t\nnext")
def test_qp_part_round_trips(text: str) -> None:
    """A text part decodes to the text (line ends as CRLF), in lines of at most 76."""
    part = notify._qp_part("plain", text)
    head, _, body = part.partition("\r\n\r\n")
    assert b"\n" not in body.encode().replace(b"\r\n", b"")
    assert all(len(line) <= 76 for line in body.split("\r\n"))
    expected = text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n")
    assert quopri.decodestring(body.encode()).decode("utf-8").rstrip("\r\n") == expected.rstrip(
        "\r\n"
    )
