"""
What the recipient portal shows of a stored message: pure functions of its raw bytes.

The HTML body is untrusted. It is sanitised with an allow-list (nh3, L{secmail.web.sanitise}), and
the portal serves it in a sandboxed iframe under C{Content-Security-Policy: sandbox;
default-src 'none'};
the two are independent layers, so a gap in one is not a hole. Remote images are dropped
unless the reader asks for them, so that opening a message does not tell the sender.
Nothing here does I/O and nothing raises for a malformed message: a reader must always be
able to see what arrived. What a hostile message can make cost is bounded: the parse stops
at L{secmail.mime}'s limits (L{MessageTooComplex}, the one exception), text is decoded only
with text charsets, and an HTML body too large or too deeply nested for the sanitiser is cut
or shown as text (L{ReadableMessage.incomplete}). The functions are CPU work for a thread.
"""

from __future__ import annotations

import base64
import mimetypes
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage, Message
from urllib.parse import quote

from secmail import mime
from secmail.mime import MessageTooComplex
from secmail.web.safe_text import clean_line, safe_filename, unsurrogate
from secmail.web.sanitise import (
    FRAME_STYLE_SOURCE,
    MAX_HTML_DEPTH,
    Sanitised,
    as_text,
    html_depth,
    html_document,
    sanitise,
)

__all__ = [
    "FRAME_STYLE_SOURCE",
    "MAX_HTML_CHARS",
    "MAX_HTML_DEPTH",
    "MAX_INLINE_BYTES",
    "MAX_TEXT_CHARS",
    "Attachment",
    "MessageTooComplex",
    "ReadableMessage",
    "attachment_bytes",
    "content_disposition",
    "html_document",
    "inline_part",
    "read_message",
    "subject",
]


@dataclass(frozen=True)
class Attachment:
    index: int  # stable position among the message's attachments (0-based)
    filename: str  # safe for display and for Content-Disposition
    content_type: str  # lower-case, parameters dropped
    size: int  # decoded size in bytes


@dataclass(frozen=True)
class ReadableMessage:
    subject: str
    from_: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    date: str
    message_id: str | None
    references: str | None
    text: str | None  # the text/plain body; None if there is none
    html: str | None  # the sanitised HTML body; None if there is none
    has_remote_images: bool  # remote images were referenced and blocked
    attachments: tuple[Attachment, ...]
    incomplete: bool = False  # a body was cut, or its HTML was too complex and is shown as text


#: Characters of an HTML body given to the sanitiser; the rest is cut off.
MAX_HTML_CHARS = 2_000_000
#: Characters of a text body shown; the rest is cut off.
MAX_TEXT_CHARS = 2_000_000
#: Characters of data: URLs (inline pictures) put into one HTML body.
MAX_INLINE_BYTES = 10_000_000


def _default_cid_url(cid: str) -> str:
    return f"cid/{quote(cid)}"


# --- file names ------------------------------------------------------------------------


def _decoded_filename(part: Message) -> str | None:
    """The name the sender meant, decoded (RFC 2231, and RFC 2047 where mailers misuse it).

    The parameters are read the lenient compat32 way from the raw header first: the strict
    parser takes C{filename="C:\\dir\\a.pdf"} as escapes and loses the path separators that
    tell us which part is the name.
    """
    lenient = Message()
    name: str | None = None
    try:
        for key, value in part.raw_items():
            if key.lower() in ("content-disposition", "content-type"):
                lenient[key] = mime.neutralise_labels(unsurrogate(str(value)))
        name = lenient.get_filename()
    except Exception:
        name = None
    if name is None:
        try:
            name = part.get_filename()
        except Exception:
            return None
    if name is None:
        return None
    name = unsurrogate(str(name))
    if "=?" in name:  # an encoded word where it does not belong, as some mailers write it
        name = mime.decode_words(name)
    return name


def _attachment_name(part: Message, index: int, content_type: str) -> str:
    name = safe_filename(_decoded_filename(part) or "")
    if name:
        return name
    if content_type == "message/rfc822":
        return "message.eml"
    extension = mimetypes.guess_extension(content_type) or ""
    return f"attachment-{index + 1}{extension}"


def content_disposition(filename: str) -> str:
    """An attachment header that cannot be split or quoted out of, for any name."""
    name = safe_filename(filename) or "attachment"
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\%' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


# --- MIME structure --------------------------------------------------------------------

# Write an attached message back out with its headers as they came, not refolded, and
# with the line ending the whole message used.
_AS_RECEIVED = {
    "\n": mime.POLICY.clone(refold_source="none"),
    "\r\n": mime.POLICY.clone(refold_source="none", linesep="\r\n"),
}
_INLINE_IMAGE_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "image/avif"}
)


def _parse(raw: bytes) -> EmailMessage | None:
    """The message, or None if the parser fails on it.

    @raise MessageTooComplex: beyond the parser's limits (nesting, parts, header lines).
    """
    try:
        message = mime.parse(raw)
    except MessageTooComplex:
        raise
    except Exception:
        return None
    return message if isinstance(message, EmailMessage) else None


def _leaves(message: Message) -> Iterator[tuple[Message, bool]]:
    """Every non-multipart part in order, and whether it is one of a multipart/alternative's
    versions. An attached message is one leaf, not opened. A loop, not recursion: a hostile
    message can nest deeper than Python's stack."""
    stack = [(message, False)]
    while stack:
        part, alternative = stack.pop()
        if part.get_content_maintype() == "multipart" and part.is_multipart():
            payload = part.get_payload()
            if isinstance(payload, list):
                inner = part.get_content_subtype() == "alternative"
                stack.extend((sub, inner) for sub in reversed(payload) if isinstance(sub, Message))
        else:
            yield part, alternative


def _content_id(part: Message) -> str | None:
    try:
        value = part.get("Content-ID")
    except Exception:
        return None
    if value is None:
        return None
    cid = str(value).strip().strip("<>").strip()
    return cid or None


def _disposition(part: Message) -> str | None:
    try:
        return part.get_content_disposition()
    except Exception:
        return None


def _content_type(part: Message) -> str:
    try:
        return part.get_content_type()
    except Exception:
        return "application/octet-stream"


def _text_of(part: Message) -> str:
    """A text part as str. Missing, unknown and non-text charsets, and 8-bit text labelled
    ASCII (a common mislabel), are read as UTF-8; bad bytes become U+FFFD."""
    data = _payload_bytes(part)
    try:
        charset = part.get_content_charset()
    except Exception:
        charset = None
    return mime.decode_text(data, charset)


def _line_ending(raw: bytes) -> str:
    return "\r\n" if b"\r\n" in raw[:4096] else "\n"


def _payload_bytes(part: Message, linesep: str = "\n") -> bytes:
    if part.get_content_type() == "message/rfc822" or part.is_multipart():
        payload = part.get_payload()
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            inner = payload[0]
            try:
                return inner.as_bytes(policy=_AS_RECEIVED[linesep])
            except Exception:
                try:
                    return inner.as_bytes()
                except Exception:
                    return str(inner).encode("utf-8", errors="replace")
    try:
        data = part.get_payload(decode=True)
    except Exception:
        data = None
    if isinstance(data, bytes):
        return data
    payload = part.get_payload()
    if isinstance(payload, str):
        return payload.encode("utf-8", errors="surrogateescape")
    return b""


def _body(message: EmailMessage, kind: str) -> Message | None:
    try:
        return message.get_body(preferencelist=(kind,))
    except Exception:
        return None


def _attachment_parts(message: EmailMessage, referenced: frozenset[str]) -> list[Message]:
    """The parts listed as attachments, in order: their positions are the indexes.

    Besides files, that is every part the page would not otherwise show: a second inline
    text part (Apple Mail splits text around pictures), an image the HTML does not use.
    Left out: other versions of a body (the rest of a multipart/alternative) and blank
    unnamed text parts."""
    bodies = {id(p) for p in (_body(message, "plain"), _body(message, "html")) if p is not None}
    found: list[Message] = []
    for part, alternative in _leaves(message):
        if id(part) in bodies:
            continue
        content_type = _content_type(part)
        maintype = content_type.split("/", 1)[0]
        if _disposition(part) == "attachment":
            pass
        elif maintype == "multipart":
            continue  # a multipart that could not be split: shown as raw text instead
        elif maintype == "text" and _decoded_filename(part) is None:
            if alternative or not _text_of(part).strip():
                continue  # another version of the body shown, or nothing to show
        elif content_type in _INLINE_IMAGE_TYPES and _content_id(part) in referenced:
            continue  # shown inside the HTML body
        found.append(part)
    return found


def _attachment(part: Message, index: int, raw: bytes) -> tuple[Attachment, bytes]:
    content_type = _content_type(part)
    data = _payload_bytes(part, _line_ending(raw))
    name = _attachment_name(part, index, content_type)
    return Attachment(index, name, content_type, len(data)), data


@dataclass
class _HtmlBody:
    sanitised: Sanitised | None  # None: too complex to sanitise, shown as text instead
    text: str  # the body as text when it is not sanitised
    cut: bool  # longer than MAX_HTML_CHARS: the rest is left out


def _html_body(
    html_part: Message, load_remote_images: bool, cid_url: Callable[[str], str]
) -> _HtmlBody:
    """The HTML body within the sanitiser's limits: cut to size, or as text if too deep."""
    source = _text_of(html_part)
    cut = len(source) > MAX_HTML_CHARS
    source = source[:MAX_HTML_CHARS]
    if html_depth(source) > MAX_HTML_DEPTH:
        return _HtmlBody(None, as_text(source), cut)
    sanitised = sanitise(source, load_remote_images=load_remote_images, cid_url=cid_url)
    return _HtmlBody(sanitised, "", cut)


def _referenced_content_ids(html_part: Message | None) -> frozenset[str]:
    if html_part is None:
        return frozenset()
    body = _html_body(html_part, False, _default_cid_url)
    return frozenset() if body.sanitised is None else body.sanitised.content_ids


# --- headers ---------------------------------------------------------------------------


def _raw_header(message: Message, name: str) -> str | None:
    """The header as it came, decoded by hand: for when the structured parser gives up."""
    for key, value in message.raw_items():
        if key.lower() == name.lower():
            return mime.decode_words(str(value))
    return None


def _header(message: Message, name: str) -> str | None:
    try:
        value = message.get(name)
        text = None if value is None else str(value)
    except Exception:
        text = _raw_header(message, name)
    return None if text is None else clean_line(text)


def _keep(address: str) -> str:
    return address


def _address_text(address: Address, shown: Callable[[str], str]) -> str:
    """C{Name <addr>}, with the address as the reader is to see it (C{shown})."""
    real = shown(address.addr_spec)
    if real == address.addr_spec:
        return str(address)
    return str(Address(display_name=address.display_name, addr_spec=real))


def _addresses(message: Message, name: str, shown: Callable[[str], str] = _keep) -> tuple[str, ...]:
    found: list[str] = []
    try:
        values = message.get_all(name) or []
    except Exception:
        text = _raw_header(message, name)
        return (clean_line(text),) if text else ()
    for value in values:
        try:
            addresses = [_address_text(a, shown) for a in getattr(value, "addresses", ())]
        except Exception:
            addresses = []
        if addresses:
            found.extend(clean_line(a) for a in addresses)
        elif clean_line(str(value)):
            found.append(clean_line(str(value)))
    return tuple(a for a in found if a)


# --- the public functions --------------------------------------------------------------


def _lines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _raw_text(raw: bytes) -> str:
    """What is left to show when a message cannot be understood: the body, as text."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        _, found, body = raw.partition(separator)
        if found:
            return _lines(body.decode("utf-8", errors="replace"))
    return _lines(raw.decode("utf-8", errors="replace"))


def read_message(
    raw: bytes,
    *,
    load_remote_images: bool = False,
    cid_url: Callable[[str], str] = _default_cid_url,
    inline_images: bool = False,
    shown_address: Callable[[str], str] = _keep,
) -> ReadableMessage:
    """Everything the reading page shows. Never raises for a malformed message.

    C{shown_address} maps each address in To and Cc to the one the reader is to see
    (the real address for a marked one, L{secmail.web.reading.real_address}).

    C{cid_url} maps a Content-ID (percent-decoded, without angle brackets) to the URL
    that serves it through L{inline_part}. With C{inline_images}, the pictures are put
    into the HTML as data: URLs instead (at most L{MAX_INLINE_BYTES} in all), from this
    one parse: for a frame that cannot fetch them.

    @raise MessageTooComplex: beyond the parser's limits; the reader can still save it.
    """
    message = _parse(raw)
    if message is None:
        return _unreadable(raw, None, shown_address)
    try:
        if inline_images:
            cid_url = _data_urls(message)
        return _readable(message, raw, load_remote_images, cid_url, shown_address)
    except Exception:
        return _unreadable(raw, message, shown_address)


def _data_urls(message: EmailMessage) -> Callable[[str], str]:
    """Content-ID → data: URL of the message's raster picture with that id, or ""."""
    pictures: dict[str, Message] = {}
    for part, _ in _leaves(message):
        cid = _content_id(part)
        if cid is not None and cid not in pictures and _content_type(part) in _INLINE_IMAGE_TYPES:
            pictures[cid] = part
    urls: dict[str, str] = {}
    budget = [MAX_INLINE_BYTES]

    def data_url(cid: str) -> str:
        cid = cid.strip().strip("<>").strip()
        part = pictures.get(cid)
        if part is None:
            return ""
        if cid not in urls:  # each picture encoded once, however often it is used
            encoded = base64.b64encode(_payload_bytes(part)).decode("ascii")
            urls[cid] = f"data:{_content_type(part)};base64,{encoded}"
        if len(urls[cid]) > budget[0]:
            return ""
        budget[0] -= len(urls[cid])
        return urls[cid]

    return data_url


def _unreadable(
    raw: bytes, message: EmailMessage | None, shown: Callable[[str], str] = _keep
) -> ReadableMessage:
    """The last resort: whatever headers can be read, and the body as text."""

    def header(name: str) -> str | None:
        return None if message is None else _header(message, name)

    text = _raw_text(raw)
    return ReadableMessage(
        subject=header("Subject") or "",
        from_=header("From") or "",
        to=() if message is None else _addresses(message, "To", shown),
        cc=() if message is None else _addresses(message, "Cc", shown),
        date=header("Date") or "",
        message_id=header("Message-ID"),
        references=header("References"),
        text=text[:MAX_TEXT_CHARS],
        html=None,
        has_remote_images=False,
        attachments=(),
        incomplete=len(text) > MAX_TEXT_CHARS,
    )


def _readable(
    message: EmailMessage,
    raw: bytes,
    load_remote_images: bool,
    cid_url: Callable[[str], str],
    shown: Callable[[str], str],
) -> ReadableMessage:
    html_part = _body(message, "html")
    html: str | None = None
    html_as_text: str | None = None
    has_remote_images = False
    incomplete = False
    referenced: frozenset[str] = frozenset()
    if html_part is not None:
        body = _html_body(html_part, load_remote_images, cid_url)
        incomplete = body.cut
        if body.sanitised is None:
            html_as_text, incomplete = body.text, True
        else:
            html, has_remote_images = body.sanitised.html, body.sanitised.has_remote_images
            referenced = body.sanitised.content_ids
    parts = _attachment_parts(message, referenced)
    attachments = tuple(_attachment(part, i, raw)[0] for i, part in enumerate(parts))
    text_part = _body(message, "plain")
    text = None if text_part is None else _lines(_text_of(text_part))
    if text is None:
        text = html_as_text
    if text is None and html is None and not attachments:
        text = _raw_text(raw)
    if text is not None and len(text) > MAX_TEXT_CHARS:
        text, incomplete = text[:MAX_TEXT_CHARS], True
    return ReadableMessage(
        subject=_header(message, "Subject") or "",
        from_=_header(message, "From") or "",
        to=_addresses(message, "To", shown),
        cc=_addresses(message, "Cc", shown),
        date=_header(message, "Date") or "",
        message_id=_header(message, "Message-ID"),
        references=_header(message, "References"),
        text=text,
        html=html,
        has_remote_images=has_remote_images,
        attachments=attachments,
        incomplete=incomplete,
    )


def subject(raw: bytes) -> str:
    """The message's subject, from its head only: also for a message too complex to show."""
    try:
        message = mime.parse(raw, headers_only=True)
    except Exception:
        return ""
    return _header(message, "Subject") or ""


def attachment_bytes(raw: bytes, index: int) -> tuple[Attachment, bytes]:
    """The attachment listed at C{index} by L{read_message}, and its decoded bytes.

    @raise IndexError: there is no such attachment.
    @raise MessageTooComplex: beyond the parser's limits.
    """
    message = _parse(raw)
    if message is None or index < 0:
        raise IndexError(index)
    parts = _attachment_parts(message, _referenced_content_ids(_body(message, "html")))
    return _attachment(parts[index], index, raw)


def inline_part(raw: bytes, content_id: str) -> tuple[str, bytes] | None:
    """The image a C{cid:} URL names, or None. Raster images only: SVG can carry script.

    @raise MessageTooComplex: beyond the parser's limits.
    """
    message = _parse(raw)
    if message is None:
        return None
    wanted = content_id.strip().strip("<>").strip()
    for part, _ in _leaves(message):
        if _content_id(part) == wanted and _content_type(part) in _INLINE_IMAGE_TYPES:
            return _content_type(part), _payload_bytes(part)
    return None
