"""
The notification mail a secure recipient gets instead of the message.

It carries the portal link and what the recipient has to do, and never any of
the message's content: the notification travels in the clear. Only the subject
may be shown, and only when the administrator turns that on.

What it says, and its HTML layout, are in L{secmail.notify_body}; with a logo the HTML
part and the logo (base64, encoded once per logo) form a C{multipart/related}.
Assembled directly as 7-bit MIME (quoted-printable UTF-8 parts, RFC 2047 words in
headers): building it with L{email.message.EmailMessage} cost more than everything
else on the accept path. Text from the original message is cleaned of control and
formatting characters and shortened before use, and a header value with a line
break is refused, so a hostile display name or subject cannot add headers.
"""

from __future__ import annotations

import binascii
import hashlib
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email import quoprimime
from email.errors import HeaderParseError
from email.header import Header
from email.headerregistry import Address
from email.utils import format_datetime, formataddr
from email.utils import make_msgid as email_make_msgid
from functools import lru_cache

from secmail.address import Level, Recipient
from secmail.config import GatewayIdentity, NotificationTexts
from secmail.notify_body import (
    DEFAULT_BRAND,
    Facts,
    html_lines,
    inline_logo,
    readable_until,
    text_body,
)

MAX_NAME_CHARS = 78
MAX_SUBJECT_CHARS = 200
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
# A dot-atom local part at a plain domain name: what nearly every sender is. Such an address
# is its own addr-spec; anything else goes through the email package's full parser.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_ADDRESS = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")


@dataclass(frozen=True)
class Notification:
    """A notification ready for the outbound queue: envelope and the mail itself."""

    sender: str
    recipient: str
    content: bytes


def build_notification(
    *,
    texts: NotificationTexts,
    recipient: Recipient,
    original_sender: str,
    original_from_display: str | None,
    original_subject: str | None,
    token: str,
    message_id_domain: str,
    date: datetime,
    make_msgid: Callable[[], str] | None = None,
    arrived: datetime | None = None,
) -> Notification:
    """
    Build the notification for one secure recipient.

    The envelope sender is the gateway's bounce address, so a notification that
    cannot be delivered comes back to us (and is reported to the sender) rather
    than to a third party. C{token} is the link token, URL-safe base64.
    """
    if recipient.level is Level.PLAIN:
        raise ValueError(f"{recipient.address} is a plain recipient and gets no notification")
    if not _TOKEN.fullmatch(token):
        raise ValueError("the link token must be URL-safe base64 (A-Z, a-z, 0-9, - and _)")
    sender = _null_to_empty(original_sender)
    who = clean_text(original_from_display or "", MAX_NAME_CHARS) or clean_text(
        sender, MAX_NAME_CHARS
    )
    link = f"{texts.branding.portal_url}/m/{token}"

    subject = (
        f"Secure message from {who} is waiting for you"
        if who
        else "A secure message is waiting for you"
    )
    if texts.shows_subject and original_subject:
        shown = clean_text(original_subject, MAX_SUBJECT_CHARS)
        if shown:
            subject = f"{subject}: {shown}"

    reply_to = _reply_to(sender)
    message_id = (
        make_msgid() if make_msgid is not None else email_make_msgid(domain=message_id_domain)
    )
    headers = [
        (
            "From",
            formataddr(
                (
                    f"{who} via {texts.branding.name}" if who else texts.branding.name,
                    texts.identity.notification_from,
                ),
                charset="utf-8",
            ),
        ),
        ("To", recipient.address),
        *([("Reply-To", reply_to)] if reply_to is not None else []),
        ("Subject", _header_text(subject)),
        ("Date", format_datetime(date)),
        ("Message-ID", message_id),
        ("Auto-Submitted", "auto-generated"),
        # Outlook/Exchange: no out-of-office replies to a notification.
        ("X-Auto-Response-Suppress", "All"),
        ("MIME-Version", "1.0"),
    ]
    for name, value in headers:
        unfolded = value.replace("\r\n ", "")
        if "\r" in unfolded or "\n" in unfolded:
            raise ValueError(f"header {name} would contain a line break")

    branding = texts.branding
    facts = Facts(
        brand=branding.name,
        organisation=(
            branding.name if branding.name != DEFAULT_BRAND else "the sender's organisation"
        ),
        sent_by=f"{who} has sent you" if who else "You have been sent",
        link=link,
        instructions=_instructions(recipient),
        # Retention counts from the letter's arrival (a resend is dated later).
        until=readable_until(arrived or date, texts.retention_days),
        phrase=branding.verification_phrase,
        hostname=texts.identity.hostname,
    )
    logo = (
        inline_logo(branding.logo, branding.logo_type, texts.identity.hostname)
        if branding.logo
        else None
    )
    text = text_body(facts)
    page_lines = html_lines(facts, branding.colour, logo)
    page = "\n".join(lines for lines, _ in page_lines)
    # Quoted-printable never holds "=_", nor base64 "_", so these boundaries cannot occur
    # in a part (and neither is the start of the other); deriving them from the content
    # keeps the output a function of the input.
    digest = hashlib.sha256((text + page).encode()).hexdigest()[:32]
    boundary = "=_" + digest
    # Most of the page is the same in every notification: those lines are encoded once.
    encoded = "\n".join(_qp_kept(lines) if kept else _qp(lines) for lines, kept in page_lines)
    html_part = _qp_part("html", page, encoded)
    if logo is not None:
        related = "=_R" + digest
        html_part = (
            f'Content-Type: multipart/related;\r\n boundary="{related}"; type="text/html"\r\n'
            f"\r\n--{related}\r\n{html_part}--{related}\r\n{logo.part}--{related}--\r\n"
        )
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    content = (
        f'{head}Content-Type: multipart/alternative;\r\n boundary="{boundary}"\r\n\r\n'
        f"--{boundary}\r\n{_qp_part('plain', text)}"
        f"--{boundary}\r\n{html_part}"
        f"--{boundary}--\r\n"
    )
    return Notification(
        sender=texts.identity.bounce_address,
        recipient=recipient.address,
        content=content.encode("ascii"),
    )


def _header_text(value: str) -> str:
    """A header value as 7-bit text: ASCII as it is, anything else as RFC 2047 words."""
    if value.isascii():
        return value
    return Header(value, "utf-8", header_name="Subject").encode(linesep="\r\n")


def _qp(lines: str) -> str:
    """LF-separated lines quoted-printable, by binascii's encoder (C)."""
    return binascii.b2a_qp(lines.encode("utf-8"), istext=True).decode("ascii")


#: The runs of lines every notification of an organisation has; never a letter's own.
_qp_kept = lru_cache(maxsize=64)(_qp)


def _qp_part(subtype: str, text: str, encoded: str | None = None) -> str:
    """
    One UTF-8 text part, quoted-printable, CRLF line ends, lines of at most 76.
    C{encoded}: the LF-only C{text} already encoded in runs of lines (a line break ends a
    quoted-printable line, so runs of lines encode on their own).
    """
    # binascii's encoder (C) on LF-only text: every LF in its output is then a line end.
    lf_only = text.replace("\r\n", "\n").replace("\r", "\n")
    if encoded is None:
        encoded = _qp(lf_only)
    if max(map(len, encoded.split("\n"))) > 76:
        # b2a_qp writes 77 when a line's last space falls at column 75 or 76: the email
        # package's (slower, pure Python) encoder keeps to 76.
        latin = lf_only.encode("utf-8").decode("latin-1")  # one char per byte, as it wants
        encoded = quoprimime.body_encode(latin, maxlinelen=76, eol="\n")
    body = encoded.replace("\n", "\r\n")
    if not body.endswith("\r\n"):
        body += "\r\n"
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n" + body
    )


def clean_text(text: str, limit: int) -> str:
    """
    Make untrusted text fit for one header line: no control or formatting
    characters (CR, LF, bidi overrides), single spaces, at most C{limit} characters.
    """
    chars = [" " if unicodedata.category(c)[0] in "CZ" else c for c in text]
    cleaned = " ".join("".join(chars).split())
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 1].rstrip() + "…"
    return cleaned


def _instructions(recipient: Recipient) -> str:
    if recipient.level is Level.REGISTERED:
        where = (
            f"your phone number ending in {recipient.phone[-2:]}"
            if recipient.phone
            else "the phone number registered for you"
        )
        return (
            f"When you open the link, a PIN code is sent by text message (SMS) to {where}. "
            "Enter the PIN on the page to read the message."
        )
    return (
        "Open the link to read the message. The first time you open it, the message is "
        "tied to that browser; to read it later in another browser or on another device, "
        "you will be asked for a code that is sent to this e-mail address."
    )


def _null_to_empty(address: str) -> str:
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1].strip()
    return address


def _reply_to(address: str) -> str | None:
    """The sender as a Reply-To address; None for the null sender or anything unparseable."""
    if not address:
        return None
    if _SIMPLE_ADDRESS.fullmatch(address):
        return address
    try:
        return Address(addr_spec=address).addr_spec
    except (ValueError, HeaderParseError):
        return None


def code_mail(
    *,
    identity: GatewayIdentity,
    recipient: str,
    code: str,
    minutes: int,
    message_id_domain: str,
    date: datetime,
    purpose: str = "opening the secure message",
    without_it: str = "nobody can open the message without it",
    subject: str = "Your code for the secure message",
) -> Notification:
    """
    A one-time code mail: by default the one that lets a recipient open a letter in another
    browser; D-Compose passes its own C{purpose}, C{without_it} and C{subject}.
    """
    if not re.fullmatch(r"\d{6}", code):
        raise ValueError("the code must be 6 digits")
    text = "\n".join(
        [
            "Hello,",
            "",
            f"Your code for {purpose} is: {code}",
            "",
            f"It works once, for {minutes} minutes. Type it on the page where you asked for it.",
            f"If you did not ask for a code, you can ignore this e-mail: {without_it}.",
            "",
            "-- ",
            f"The secure e-mail gateway {identity.hostname}.",
            "",
        ]
    )
    return gateway_mail(
        identity=identity,
        recipient=recipient,
        subject=subject,
        text=text,
        message_id_domain=message_id_domain,
        date=date,
    )


def gateway_mail(
    *,
    identity: GatewayIdentity,
    recipient: str,
    subject: str,
    text: str,
    message_id_domain: str,
    date: datetime,
) -> Notification:
    """
    A plain-text mail from the gateway (a code, a notice to a sender). Its envelope sender
    is the bounce address, so a failure comes back to the gateway, not to a person.
    """
    headers = [
        ("From", formataddr(("Secure mail", identity.notification_from))),
        ("To", recipient),
        ("Subject", _header_text(subject)),
        ("Date", format_datetime(date)),
        ("Message-ID", email_make_msgid(domain=message_id_domain)),
        ("Auto-Submitted", "auto-generated"),
        ("X-Auto-Response-Suppress", "All"),
        ("MIME-Version", "1.0"),
    ]
    for name, value in headers:
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {name} would contain a line break")
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return Notification(
        sender=identity.bounce_address,
        recipient=recipient,
        content=(head + _qp_part("plain", text)).encode("ascii"),
    )


def sender_notice(
    *,
    identity: GatewayIdentity,
    sender: str,
    subject: str,
    paragraphs: list[str],
    message_id_domain: str,
    date: datetime,
) -> Notification:
    """A notice to the internal sender of a secure message about what happened to it."""
    text = "\n\n".join(
        ["Hello,", *paragraphs, f"-- \nThe secure e-mail gateway {identity.hostname}.\n"]
    )
    return gateway_mail(
        identity=identity,
        recipient=sender,
        subject=subject,
        text=text,
        message_id_domain=message_id_domain,
        date=date,
    )
