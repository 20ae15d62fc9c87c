"""
Reply, reply all and forward from the reading page: what the reader's form becomes.

A reply is ordinary mail to the organisation. It goes through the incoming route to the
original sender (for "reply all", also to the organisation's other addresses on the
original), quotes the original and carries C{In-Reply-To}/C{References}, so it threads in
the sender's mailbox. Outsiders on the original never get it in the clear: together they
become the recipients of a new secure letter, stored and notified as the intake stores
and notifies one. A forward goes only to addresses in the organisation, with the original
attached.

The reply's headers are written by C{EmailMessage} under C{email.policy.SMTP}, which
refuses a line break in a header value; besides, every value taken from the original or
from the form is cleaned of control characters first, and every address must pass the
same checks as C{RCPT TO}. So no form field and no header of the original can add a header.

Nothing here does I/O: L{build_reply} is a pure function. L{secmail.web.reply_letters} seals the
mail and draws the secure letter's link tokens.
"""

from __future__ import annotations

import email.policy
import html
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.utils import format_datetime, getaddresses
from email.utils import make_msgid as email_make_msgid

import nh3

from secmail import mime
from secmail.address import (
    AddressError,
    DestinationError,
    Level,
    Recipient,
    parse_recipient,
    portal_destination,
)
from secmail.config import GatewayIdentity, RouteSettings, SecureSettings
from secmail.notify import clean_text
from secmail.web import render
from secmail.web.forms import Upload
from secmail.web.safe_text import BIDI, safe_filename, unsurrogate

__all__ = [
    "MODES",
    "Audience",
    "ReplyError",
    "ReplyMail",
    "attachment_filename",
    "build_reply",
    "forward_audience",
    "organisation",
    "reply_audience",
    "reply_choices",
]

MODES = ("reply", "reply-all", "forward")
MAX_FORWARD_ADDRESSES = 20
MAX_QUOTED_CHARS = 100_000
MAX_SUBJECT_CHARS = 500
MAX_NAME_CHARS = 78
MAX_REFERENCES = 20

_SMTP = email.policy.SMTP
_MESSAGE_ID = re.compile(r"<[^<>\s@]{1,200}@[^<>\s@]{1,200}>")
_CONTENT_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}")
_REPLY_PREFIX = re.compile(r"re(\[\d+\])?\s*:", re.IGNORECASE)
_FORWARD_PREFIX = re.compile(r"(fwd?|fw)\s*:", re.IGNORECASE)


class ReplyError(ValueError):
    """Something the reader has to change before the mail can go; the text says what."""


@dataclass(frozen=True)
class Audience:
    """Who a reply or forward goes to, and how.

    C{to}/C{cc} are the reply's header fields as (display name, address) pairs; an
    outsider appears there in marked form, so that the organisation's own "reply all"
    to this mail stays secure. C{internal} get the mail through the incoming route;
    C{secure} get a secure letter instead.
    """

    to: tuple[tuple[str, str], ...]
    cc: tuple[tuple[str, str], ...]
    internal: tuple[str, ...]
    secure: tuple[Recipient, ...]


@dataclass(frozen=True)
class ReplyMail:
    mode: str
    content: bytes
    subject: str
    audience: Audience
    attachments: tuple[str, ...]  # the file names as written into the mail
    reader_name: str  # the reader's name as the original gave it, or ""

    @property
    def summary(self) -> str:
        """What was sent to whom, in words: for the audit trail and the reader's page."""
        what = "Forwarded" if self.mode == "forward" else "Reply sent"
        lines = [f"{what} by e-mail to {', '.join(self.audience.internal)}."]
        if self.audience.secure:
            outside = ", ".join(r.address for r in self.audience.secure)
            lines.append(f"Sent as a secure message to {outside}.")
        if self.attachments:
            lines.append(f"Attached: {', '.join(self.attachments)}.")
        return " ".join(lines)


# --- addresses ---------------------------------------------------------------------------


def organisation(routes: RouteSettings) -> str:
    """The organisation's mail domains, for messages that say where mail may go."""
    domains = sorted({*routes.incoming_domains, *routes.domains})
    return ", ".join(domains) or "(none configured)"


def _recipient(address: str, secure: SecureSettings) -> Recipient | None:
    """The address understood as at C{RCPT TO} (marking read), or None if it is not usable."""
    try:
        return parse_recipient(address.strip(), secure.extension, secure.default_country_code)
    except AddressError:
        return None


def _is_internal(recipient: Recipient, routes: RouteSettings) -> bool:
    return routes.is_incoming(recipient.domain)


def _plain(recipient: Recipient, routes: RouteSettings) -> None:
    """
    Refuse source-route forms (C{%}, C{!}, ...) that the mail server behind could send
    elsewhere: L{portal_destination} on the unmarked address; a L{ReplyError} names it.
    """
    internal = _is_internal(recipient, routes)
    try:
        portal_destination(recipient.address, routes.is_incoming if internal else None)
    except DestinationError as e:
        raise ReplyError(str(e)) from None


def _marked(recipient: Recipient, secure: SecureSettings) -> str:
    """The address as an internal sender writes it to reach this person securely."""
    if recipient.level is not Level.PLAIN:
        return recipient.original
    return f"{recipient.address}{secure.extension}"


def _gateway_addresses(identity: GatewayIdentity) -> set[str]:
    return {identity.bounce_address.lower(), identity.notification_from.lower()}


def _parse(raw: bytes) -> Message:
    """The original's header fields (all a reply needs of it), read within the parser's
    limits and honouring only text charsets (L{secmail.mime})."""
    try:
        return mime.parse(raw, headers_only=True)
    except Exception:
        return Message()


def _mailboxes(message: Message, name: str) -> list[tuple[str, str]]:
    """(display name, address) for each mailbox in the header fields called C{name}."""
    try:
        values = message.get_all(name) or []
    except Exception:
        return []
    found: list[tuple[str, str]] = []
    for value in values:
        try:
            addresses = getattr(value, "addresses", None)
            if addresses is not None:
                found += [(str(a.display_name), str(a.addr_spec)) for a in addresses]
            else:
                found += getaddresses([str(value)])
        except Exception:  # noqa: S112 - an unreadable field names nobody
            continue
    return [(_clean(n, MAX_NAME_CHARS), a) for n, a in found if a]


def _clean(text: str, limit: int) -> str:
    """Text fit for one header line: no controls, no bidi overrides, at most C{limit}."""
    text = "".join(c for c in unsurrogate(text) if c not in BIDI)
    return clean_text(text, limit)


def reply_choices(
    raw: bytes,
    reader: str,
    routes: RouteSettings,
    secure: SecureSettings,
    identity: GatewayIdentity,
) -> tuple[bool, bool]:
    """Whether the reader can reply to the original's sender, and whether "reply all"
    would reach anyone more."""
    message = _parse(raw)
    try:
        single = reply_audience(message, "reply", reader, routes, secure, identity)
    except ReplyError:
        return False, False
    try:
        everyone = reply_audience(message, "reply-all", reader, routes, secure, identity)
    except ReplyError:
        return True, False  # someone in To or Cc cannot be sent to: no reply all
    more = len(everyone.internal) + len(everyone.secure) > len(single.internal)
    return True, more


def reply_audience(
    message: Message,
    mode: str,
    reader: str,
    routes: RouteSettings,
    secure: SecureSettings,
    identity: GatewayIdentity,
) -> Audience:
    """
    The original's sender (C{Reply-To}, else C{From}), who must be in the organisation
    (C{routes}); for C{"reply-all"} also everyone else in C{To} and C{Cc} except the reader
    and the gateway (C{identity}). Outsiders get a letter, marked as C{secure} says.
    """
    targets = _mailboxes(message, "Reply-To") or _mailboxes(message, "From")
    if not targets:
        raise ReplyError("The message has no sender address, so there is nobody to reply to.")
    org = organisation(routes)
    seen = {reader.lower()} | _gateway_addresses(identity)
    to: list[tuple[str, str]] = []
    cc: list[tuple[str, str]] = []
    internal: list[str] = []
    outsiders: list[Recipient] = []
    for name, address in targets:
        recipient = _recipient(address, secure)
        if recipient is None:
            raise ReplyError(
                f"The sender's address, {_clean(address, 100)}, cannot be replied to from "
                "here. Please reply from your own e-mail program instead."
            )
        if not _is_internal(recipient, routes):
            raise ReplyError(
                f"The sender, {recipient.address}, is outside the organisation, and a reply "
                f"from here can only go to addresses at {org}. Please reply from your own "
                "e-mail program instead."
            )
        _plain(recipient, routes)
        if recipient.address.lower() not in seen:
            seen.add(recipient.address.lower())
            to.append((name, recipient.address))
            internal.append(recipient.address)
    if not internal:
        raise ReplyError("The message names nobody in the organisation to reply to.")
    if mode == "reply-all":
        for field, header in (("To", to), ("Cc", cc)):
            for name, address in _mailboxes(message, field):
                recipient = _recipient(address, secure)
                if recipient is None or recipient.address.lower() in seen:
                    continue
                _plain(recipient, routes)
                seen.add(recipient.address.lower())
                if _is_internal(recipient, routes):
                    header.append((name, recipient.address))
                    internal.append(recipient.address)
                else:
                    header.append((name, _marked(recipient, secure)))
                    if recipient.level is Level.PLAIN:
                        recipient = replace(recipient, level=Level.LETTER)
                    outsiders.append(recipient)
    return Audience(tuple(to), tuple(cc), tuple(internal), tuple(outsiders))


def forward_audience(text: str, routes: RouteSettings, secure: SecureSettings) -> Audience:
    """The addresses the reader typed: all of them must be in the organisation."""
    org = organisation(routes)
    tokens = [t.strip("<>") for t in re.split(r"[\s,;]+", text) if t.strip("<>")]
    if not tokens:
        raise ReplyError(f"Type the address to forward the message to (at {org}).")
    if len(tokens) > MAX_FORWARD_ADDRESSES:
        raise ReplyError(f"Forward to at most {MAX_FORWARD_ADDRESSES} addresses at a time.")
    to: list[tuple[str, str]] = []
    seen: set[str] = set()
    for token in tokens:
        recipient = _recipient(token, secure)
        if recipient is None:
            raise ReplyError(
                f"{_clean(token, 100)} is not an e-mail address. Type addresses such as "
                f"name@{org.split(',')[0]}, separated by commas."
            )
        if not _is_internal(recipient, routes):
            raise ReplyError(
                f"{recipient.address} is outside the organisation. From here a message can be "
                f"forwarded only to addresses at {org}, so that it stays protected."
            )
        _plain(recipient, routes)
        if recipient.address.lower() not in seen:
            seen.add(recipient.address.lower())
            to.append(("", recipient.address))
    return Audience(tuple(to), (), tuple(a for _, a in to), ())


# --- the mail ----------------------------------------------------------------------------


def build_reply(
    *,
    original: bytes,
    mode: str,
    reader: str,
    reader_original: str,
    text: str,
    uploads: Sequence[Upload],
    forward_to: str,
    routes: RouteSettings,
    secure: SecureSettings,
    identity: GatewayIdentity,
    date: datetime,
    make_msgid: Callable[[], str] | None = None,
) -> ReplyMail:
    """
    The reader's reply (C{mode} "reply" or "reply-all") or forward ("forward") as a mail.

    C{reader} is the verified address the letter was for; C{reader_original} the form in
    which the sender wrote it (marked or not). Raises L{ReplyError} with a sentence for the
    reader when the mail cannot go, and L{render.MessageTooComplex} when the original is
    beyond the parser's limits. CPU work: the portal runs it on its thread pool.
    """
    if mode not in MODES:
        raise ReplyError("Choose Reply, Reply all or Forward.")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if mode != "forward" and not text.strip() and not uploads:
        raise ReplyError("Please write a reply or attach a file.")
    message = _parse(original)
    readable = render.read_message(original)
    if mode == "forward":
        audience = forward_audience(forward_to, routes, secure)
    else:
        audience = reply_audience(message, mode, reader, routes, secure, identity)
    reader_recipient = _recipient(reader_original, secure) or _recipient(reader, secure)
    if reader_recipient is None:
        raise ReplyError("Your address cannot be used as a sender. Please reply by e-mail.")
    reader_name = _reader_name(message, reader, reader_original)

    mail = EmailMessage(policy=_SMTP)
    mail["From"] = Address(display_name=f"{reader_name or reader} (via secmail)", addr_spec=reader)
    mail["To"] = [_address(n, a) for n, a in audience.to]
    if audience.cc:
        mail["Cc"] = [_address(n, a) for n, a in audience.cc]
    # Replies to this mail should reach the reader securely again: the marked address.
    mail["Reply-To"] = _address(reader_name, _marked(reader_recipient, secure))
    subject = _subject(readable.subject, mode)
    mail["Subject"] = subject
    mail["Date"] = format_datetime(date)
    hostname = identity.hostname
    mail["Message-ID"] = make_msgid() if make_msgid else email_make_msgid(domain=hostname)
    parent = _message_ids(readable.message_id or "")[:1]
    references = _references(readable.references or "", parent)
    if mode != "forward" and parent:
        mail["In-Reply-To"] = parent[0]
    if references:
        mail["References"] = " ".join(references)

    if mode == "forward":
        body = _forward_text(text, readable)
    else:
        body = _reply_text(text, readable)
    mail.set_content(body, cte="quoted-printable")
    names = []
    for index, upload in enumerate(uploads):
        name = attachment_filename(upload.filename, index)
        maintype, subtype = _content_type(upload.content_type).split("/")
        mail.add_attachment(upload.data, maintype=maintype, subtype=subtype, filename=name)
        names.append(name)
    if mode != "forward":
        return ReplyMail(mode, mail.as_bytes(), subject, audience, tuple(names), reader_name)
    content = _with_original(mail, original)
    return ReplyMail(mode, content, subject, audience, tuple(names), reader_name)


def _address(name: str, address: str) -> Address:
    return Address(display_name=_clean(name, MAX_NAME_CHARS), addr_spec=address)


def _reader_name(message: Message, reader: str, reader_original: str) -> str:
    """How the sender wrote the reader's name, if they did."""
    wanted = {reader.lower(), reader_original.lower()}
    for field in ("To", "Cc"):
        for name, address in _mailboxes(message, field):
            if address.lower() in wanted and name:
                return name
    return ""


def _subject(subject: str, mode: str) -> str:
    subject = _clean(subject, MAX_SUBJECT_CHARS)
    if mode == "forward":
        return subject if _FORWARD_PREFIX.match(subject) else f"Fwd: {subject}".rstrip()
    if _REPLY_PREFIX.match(subject):
        return subject
    return f"Re: {subject}" if subject else "Re: (no subject)"


def _message_ids(text: str) -> list[str]:
    return _MESSAGE_ID.findall(text)


def _references(references: str, parent: list[str]) -> list[str]:
    """The original's References and its Message-ID: the first and the latest few."""
    ids = [i for i in _message_ids(references) if i not in parent] + parent
    if len(ids) > MAX_REFERENCES:
        ids = ids[:1] + ids[-(MAX_REFERENCES - 1) :]
    return ids


def _original_text(readable: render.ReadableMessage) -> str:
    if readable.text is not None:
        return readable.text
    if readable.html is not None:
        blocks = re.sub(
            r"(?i)<br\s*/?>|</(?:p|div|tr|li|h[1-6]|blockquote|pre|table)>", "\n", readable.html
        )
        return html.unescape(nh3.clean(blocks, tags=set()))
    return ""


def _quoted(readable: render.ReadableMessage) -> str:
    text = _original_text(readable).strip("\n")
    cut = len(text) > MAX_QUOTED_CHARS
    lines = text[:MAX_QUOTED_CHARS].split("\n")
    if cut:
        lines.append("[… the rest of the message is not quoted]")
    sender = readable.from_ or "the sender"
    said = f"On {readable.date}, {sender} wrote:" if readable.date else f"{sender} wrote:"
    return "\n".join([said, *(f"> {line}" if line else ">" for line in lines)])


def _reply_text(text: str, readable: render.ReadableMessage) -> str:
    typed = text.rstrip()
    quote = _quoted(readable)
    return f"{typed}\n\n{quote}\n" if typed else f"{quote}\n"


def _forward_text(text: str, readable: render.ReadableMessage) -> str:
    rows = [("From", readable.from_), ("Date", readable.date), ("Subject", readable.subject)]
    rows += [("To", ", ".join(readable.to)), ("Cc", ", ".join(readable.cc))]
    summary = "\n".join(f"{k}: {v}" for k, v in rows if v)
    typed = text.rstrip()
    block = (
        "---------- Forwarded message ----------\n"
        f"{summary}\n\nThe message is attached (message.eml).\n"
    )
    return f"{typed}\n\n{block}" if typed else block


def attachment_filename(filename: str, index: int) -> str:
    """A file name fit for a header and a disk (L{safe_filename}), or one made up."""
    return safe_filename(filename) or f"attachment-{index + 1}"


def _content_type(value: str) -> str:
    """The browser's type for a file when it is a plain, safe one; else octet-stream."""
    value = value.split(";", 1)[0].strip().lower()
    if not _CONTENT_TYPE.fullmatch(value) or value.split("/")[0] in ("multipart", "message"):
        return "application/octet-stream"
    return value


def _with_original(mail: EmailMessage, raw: bytes) -> bytes:
    """C{mail} with the original as a message/rfc822 part, byte for byte (line ends CRLF).

    The email package cannot write an 8-bit message/rfc822 payload (its generator encodes
    it as ASCII), so the part holds a marker that is then replaced by the original's bytes.
    """
    raw = re.sub(rb"(?<!\r)\n", b"\r\n", raw)
    marker = "secmail-original-" + secrets.token_hex(16)
    part = EmailMessage(policy=_SMTP)
    part["Content-Type"] = "message/rfc822"
    part["Content-Disposition"] = 'attachment; filename="message.eml"'
    # message/rfc822 may not be base64-encoded (RFC 2046 5.2.1): 8bit when it must be.
    part["Content-Transfer-Encoding"] = "7bit" if raw.isascii() else "8bit"
    part.set_payload(marker)
    if not mail.is_multipart():
        mail.make_mixed()
    mail.attach(part)
    head, found, tail = mail.as_bytes().partition(marker.encode("ascii"))
    if not found:  # pragma: no cover - the generator writes a message/rfc822 payload as it is
        raise RuntimeError("the forwarded original's place was not found")
    return head + raw + tail


# --- what is committed ---------------------------------------------------------------------
