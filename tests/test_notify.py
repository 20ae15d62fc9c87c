"""Tests for secmail.notify: the notification mail sent instead of a secure message."""

from __future__ import annotations

import email
import email.message
import quopri
import re
import struct
import zlib
from datetime import UTC, datetime, timedelta, timezone
from email import policy
from email.headerregistry import Address
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from secmail import notify
from secmail.address import Level, Recipient, parse_recipient
from secmail.config import Settings, from_mapping
from secmail.notify import Notification, build_notification, clean_text, code_mail
from secmail.notify_body import image_size, readable_until, shown_size

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


class _Text(HTMLParser):
    """The text a reader sees of an HTML page: no tags, entities resolved, one space."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.hidden += tag in ("title", "style", "script")
        if tag in ("br", "p", "td", "tr", "table"):
            self.chunks.append(" ")

    def handle_endtag(self, tag: str) -> None:
        self.hidden -= tag in ("title", "style", "script")
        if tag in ("p", "td"):
            self.chunks.append(" ")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.chunks.append(data)


def visible_text(page: str) -> str:
    parser = _Text()
    parser.feed(page)
    parser.close()
    return " ".join("".join(parser.chunks).split())


def test_envelope() -> None:
    """The envelope goes from the gateway's bounce address to the real recipient address."""
    n = build()
    assert (n.sender, n.recipient) == ("bounces@gw.corp.example", "bob@partner.example")


def test_headers() -> None:
    """Headers name the sender via the brand, the real recipient, and mark the mail automatic."""
    msg = parsed(build())
    (sender,) = msg["From"].addresses
    assert (sender.display_name, sender.addr_spec) == (
        "Alice Example via Secure mail",
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
    assert msg["From"].addresses[0].display_name == "alice@corp.example via Secure mail"


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
    assert msg["From"].addresses[0].display_name == "Secure mail"


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


def test_gateway_hostname() -> None:
    """The mail names the gateway host in both parts."""
    text, page = bodies(build())
    assert "gw.corp.example" in text and "gw.corp.example" in page


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
    """The phrase, which the portal shows too, is the sender's: worded for an outsider."""
    settings = from_mapping(
        {
            "gateway": {"hostname": "gw.corp.example"},
            "portal": {
                "url": "https://secure.corp.example",
                "verification_phrase": "blue <heron>",
                "brand_name": "Corp Oy",
            },
        }
    )
    text, page = bodies(build(texts=settings.notification_texts))
    assert "The sender's verification phrase: «blue <heron>»" in text
    vouch = "A genuine message from Corp Oy shows this phrase, here and on the secure web page."
    assert vouch in text
    assert "<strong>«blue &lt;heron&gt;»</strong>" in page
    shown = visible_text(page)
    assert "The sender's verification phrase: «blue <heron>»" in shown
    assert vouch in shown
    for part in (text, shown):
        assert "organisation's verification" not in part and "Your organisation" not in part
        assert "We never ask for your password." in part


def test_phrase_with_default_brand_names_the_senders_organisation() -> None:
    """Without a brand name of its own the phrase is vouched for by "the sender's organisation"."""
    settings = from_mapping(
        {"portal": {"url": "https://secure.corp.example", "verification_phrase": "heron"}}
    )
    text, page = bodies(build(texts=settings.notification_texts))
    assert "A genuine message from the sender's organisation shows this phrase" in text
    assert "A genuine message from the sender's organisation shows this phrase" in visible_text(
        page
    )


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


# --- branding, logo, expiry: what the recipient sees --------------------------------------

URL = re.compile(r"""(?i)\b(?:https?:)?//[^\s"'<>)]+""")


def tiny_png(width: int, height: int) -> bytes:
    """A valid one-colour RGB PNG, built by hand."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + kind + data + crc

    rows = b"".join(b"\x00" + b"\x0b\x5d\x3b" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def branded(tmp_path: Path, logo: bytes | None = None, **portal: Any) -> Settings:
    """Settings with a brand, a phrase and (unless None) the logo C{logo} in a file."""
    values: dict[str, Any] = {
        "url": "https://secure.corp.example",
        "brand_name": "Corp Oy",
        "brand_colour": "#0b5d3b",
        "verification_phrase": "blue heron",
        **portal,
    }
    if logo is not None:
        path = tmp_path / "logo.png"
        path.write_bytes(logo)
        values["logo_file"] = str(path)
    return from_mapping({"gateway": {"hostname": "gw.corp.example"}, "portal": values})


def test_logo_is_an_inline_part_the_html_refers_to(tmp_path: Path) -> None:
    """The logo travels in a multipart/related with the HTML, which shows it by its Content-ID."""
    logo = tiny_png(120, 60)
    msg = parsed(build(texts=branded(tmp_path, logo).notification_texts))
    assert msg.defects == []
    plain, related = msg.iter_parts()
    assert (plain.get_content_type(), related.get_content_type()) == (
        "text/plain",
        "multipart/related",
    )
    page, image = related.iter_parts()
    assert page.get_content_type() == "text/html"
    assert image.get_content_type() == "image/png"
    assert image["Content-Transfer-Encoding"] == "base64"
    assert image.get_content_disposition() == "inline"
    assert image.get_content() == logo
    cid = image["Content-ID"]
    assert re.fullmatch(r"<[^<>@\s]+@gw\.corp\.example>", cid)
    html_text = page.get_content()
    (src,) = re.findall(r'<img src="([^"]*)"', html_text)
    assert src == "cid:" + cid[1:-1]
    # 120x60 shown 40 pixels high keeps its proportions.
    assert 'width="80" height="40"' in html_text


def test_logo_bytes_read_once_at_load_time(tmp_path: Path) -> None:
    """The logo file is read when the configuration is loaded, not for each mail."""
    logo = tiny_png(40, 40)
    settings = branded(tmp_path, logo)
    (tmp_path / "logo.png").unlink()
    first = parsed(build(texts=settings.notification_texts))
    assert [p.get_content() for p in first.walk() if p.get_content_type() == "image/png"] == [logo]
    assert (
        build(texts=settings.notification_texts).content
        == build(texts=settings.notification_texts).content
    )


def test_no_logo_no_related_part(tmp_path: Path) -> None:
    """Without a logo the HTML is a plain alternative and has no image at all."""
    msg = parsed(build(texts=branded(tmp_path).notification_texts))
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    _, page = bodies(build(texts=branded(tmp_path).notification_texts))
    assert "<img" not in page


def test_no_url_but_the_portal_link(tmp_path: Path) -> None:
    """Nothing remote: the only address in either part is the letter's link."""
    n = build(texts=branded(tmp_path, tiny_png(10, 10)).notification_texts, recipient=REGISTERED)
    text, page = bodies(n)
    assert set(URL.findall(text)) == {LINK}
    assert set(URL.findall(page)) == {LINK}
    assert re.findall(r'href="([^"]*)"', page) == [LINK]
    assert all(src.startswith("cid:") for src in re.findall(r'src="([^"]*)"', page))
    for construct in ("url(", "<link", "<script", "@import", "background="):
        assert construct not in page.lower()


def test_branded_like_the_portal(tmp_path: Path) -> None:
    """The brand's name opens both parts; its colour is the header bar and the button."""
    n = build(texts=branded(tmp_path).notification_texts)
    text, page = bodies(n)
    assert text.splitlines()[:3] == ["Corp Oy", "", "Hello,"]
    assert visible_text(page).startswith("Corp Oy Hello,")
    assert page.count('bgcolor="#0b5d3b"') == 2  # the header bar and the button
    assert re.search(r'<a href="[^"]*"\s+style="[^"]*color: #ffffff;[^"]*">Open the secure', page)
    assert 'style="width: 100%; max-width: 600px;' in page
    assert parsed(n)["From"].addresses[0].display_name == "Alice Example via Corp Oy"


def test_light_brand_colour_gets_dark_text(tmp_path: Path) -> None:
    """On a light brand colour the header and the button are written in dark text."""
    _, page = bodies(build(texts=branded(tmp_path, brand_colour="#f5c400").notification_texts))
    assert '#ffffff;">Open' not in page
    assert re.search(r'color: #1d2330;[^"]*">Open the secure message', page)
    assert re.search(r'bgcolor="#f5c400" style="[^"]*color: #1d2330;">', page)


def test_expiry_date_in_both_parts() -> None:
    """Both parts say until when the message can be read: the date plus retention_days, UTC."""
    text, page = bodies(build())  # 17 May 2024 12:30 UTC, kept 30 days
    sentence = "You can read the message until 16 June 2024, 12:30 UTC."
    assert sentence in text and sentence in visible_text(page)
    short = make_settings(retention_days=1).notification_texts
    text, page = bodies(build(texts=short))
    assert "until 18 May 2024, 12:30 UTC" in text
    assert "until 18 May 2024, 12:30 UTC" in visible_text(page)
    assert "18\u00a0May\u00a02024, 12:30\u00a0UTC" in page  # not broken within date or time


def test_readable_until_is_in_utc() -> None:
    """A date in another zone gives the same moment in UTC, across a month and a year end."""
    helsinki = timezone(timedelta(hours=2))
    # A day after 31 December 01:05 in Helsinki is 1 January there, 31 December in UTC.
    assert readable_until(datetime(2026, 12, 31, 1, 5, tzinfo=helsinki), 1) == (
        "31 December 2026, 23:05 UTC"
    )
    assert readable_until(datetime(2026, 12, 8, 2, 45, tzinfo=UTC), 30) == (
        "7 January 2027, 02:45 UTC"
    )


@pytest.mark.parametrize("recipient", [LETTER, REGISTERED])
def test_text_and_html_tell_the_same_in_the_same_order(
    tmp_path: Path, recipient: Recipient
) -> None:
    """Every sentence of the text part is in the HTML part, in the same order."""
    texts = branded(tmp_path, tiny_png(8, 8)).notification_texts
    text, page = bodies(build(texts=texts, recipient=recipient))
    shown = visible_text(page)
    sentences = [s for s in re.split(r"(?<=[.:,])\s+|\n", text) if s.strip() not in ("", "--")]
    sentences = [" ".join(s.split()) for s in sentences if s.strip() != LINK]
    assert len(sentences) > 10
    at = 0
    for sentence in sentences:
        found = shown.find(sentence, at)
        assert found >= 0, f"{sentence!r} is not in the HTML part after position {at}: {shown}"
        at = found + len(sentence)
    assert LINK in text and LINK in shown
    for fact in ("Corp Oy", "Alice Example has sent you", "16 June 2024", "blue heron"):
        assert text.index(fact) >= 0 and shown.index(fact) >= 0


def test_hostile_brand_name_is_escaped(tmp_path: Path) -> None:
    """A brand name with markup is text in the HTML part, and one display name in From."""
    evil = '<img src=x onerror=alert(1)> & "Co"'
    n = build(texts=branded(tmp_path, brand_name=evil).notification_texts)
    text, page = bodies(n)
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt; &amp; " in page
    assert text.splitlines()[0] == evil
    msg = parsed(n)
    assert msg.defects == []
    (sender,) = msg["From"].addresses
    assert (sender.display_name, sender.addr_spec) == (
        f"Alice Example via {evil}",
        "secmail@gw.corp.example",
    )


def test_hostile_subject_stays_out_of_the_parts(tmp_path: Path) -> None:
    """A shown subject with markup goes into the Subject header only, never into the HTML."""
    settings = make_settings(notification_shows_subject=True)
    n = build(texts=settings.notification_texts, original_subject='<b onclick="x">Hi</b>')
    text, page = bodies(n)
    assert "onclick" not in page and "onclick" not in text
    assert parsed(n)["Subject"].endswith(': <b onclick="x">Hi</b>')


@pytest.mark.parametrize(
    ("data", "size"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x2c\x00\x00\x00\x64", (300, 100)),
        # SOI, an APP0 segment of 16 bytes, then a baseline frame of 200 x 50.
        (
            b"\xff\xd8\xff\xe0\x00\x10" + b"\x00" * 14 + b"\xff\xc0\x00\x11\x08\x00\x32\x00\xc8",
            (200, 50),
        ),
        (
            b"\xff\xd8\xff\xe0\x00\x10" + b"\x00" * 14 + b"\xff\xc2\x00\x11\x08\x00\x10\x00\x20",
            (32, 16),
        ),
        (b"\xff\xd8\xff\xe0\x00\x10", None),
        (b"\xff\xd8\x00\x00\x00\x00\x00\x00\x00\x00", None),
        (b"GIF89a", None),
    ],
)
def test_image_size(data: bytes, size: tuple[int, int] | None) -> None:
    """The logo's size comes from the PNG or JPEG header; anything else has none."""
    assert image_size(data) == size


@pytest.mark.parametrize(
    ("size", "shown"),
    [((120, 60), (80, 40)), ((40, 40), (40, 40)), ((1000, 50), (200, 10)), (None, (40, 40))],
)
def test_logo_shown_size(size: tuple[int, int] | None, shown: tuple[int, int]) -> None:
    """The logo is shown 40 pixels high and at most 200 wide, in its own proportions."""
    assert shown_size(size) == shown


@pytest.mark.parametrize("brand", ["Yritys Öy – Turvaposti", "x" * 60, "Å" * 60])
def test_non_ascii_and_long_brand_names(tmp_path: Path, brand: str) -> None:
    """Any brand the configuration accepts gives a 7-bit mail that parses without defects."""
    n = build(texts=branded(tmp_path, tiny_png(8, 8), brand_name=brand).notification_texts)
    assert all(b in (9, 10, 13) or 32 <= b < 127 for b in n.content)
    assert max(len(line) for line in n.content.split(b"\r\n")) <= 998
    msg = parsed(n)
    assert msg.defects == [] and all(not p.defects for p in msg.walk())
    assert msg["From"].addresses[0].display_name == f"Alice Example via {brand}"
    text, page = bodies(n)
    assert text.splitlines()[0] == brand and visible_text(page).startswith(brand)


@given(
    st.lists(
        st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=200)
    )
)
@example(["x" * 74 + " ", "next"])
def test_qp_part_from_runs_of_lines_round_trips(lines: list[str]) -> None:
    """Lines encoded one run at a time (as the HTML part's are) decode to the same text.
    (No lone surrogates: the notification's texts have every C* character made a space.)"""
    text = "\n".join(lines)
    part = notify._qp_part("html", text, "\n".join(notify._qp(line) for line in lines))
    _, _, body = part.partition("\r\n\r\n")
    assert all(len(line) <= 76 for line in body.split("\r\n"))
    decoded = quopri.decodestring(body.encode()).decode("utf-8").rstrip("\r\n")
    assert decoded == text.replace("\n", "\r\n").rstrip("\r\n")
