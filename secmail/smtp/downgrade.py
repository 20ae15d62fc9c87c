# -*- test-case-name: tests.test_downgrade -*-
"""
8-bit mail made 7-bit for a peer that does not offer 8BITMIME (RFC 6152 §3, RFC 1652 §3).

Pure: bytes in, bytes out, no I/O. The client calls L{downgrade} on a worker thread only
for a message that has 8-bit bytes (L{is_eight_bit}) when the peer lacks 8BITMIME.

What changes, and only where there is an 8-bit byte (or a line over 998 octets in a body
that gets re-encoded anyway):

  - a leaf part with 8-bit content: text as quoted-printable, anything else as base64;
  - a multipart or message/rfc822 part: its children are converted and its own
    Content-Transfer-Encoding becomes 7bit (RFC 2046 §5.2.1 allows message/rfc822 only
    7bit, 8bit or binary, so its inner parts are what gets encoded);
  - a header with 8-bit bytes (UTF-8): RFC 2047 encoded-words for text and display names,
    RFC 2231 for Content-Type and Content-Disposition parameters.

Everything else stays byte for byte (a 7-bit part of an 8-bit message keeps its
DKIM-relevant form). What cannot be converted without changing what the message says
raises L{DowngradeError}: an address with non-ASCII characters (that needs SMTPUTF8), an
8-bit header that is not UTF-8 or is a structured field without a place for encoded-words,
8-bit bytes in a base64 part or in message/partial, a multipart without its boundary.
"""

from __future__ import annotations

import base64
import binascii
import email.message
import email.utils
import re
from email.header import Header

MAX_LINE = 998
"""Longest line RFC 5321 allows, without its CRLF."""

_LINE_END = re.compile(rb"\r\n|\r|\n")
_CRLF = b"\r\n"

_ADDRESS_FIELDS = frozenset(
    {
        "from",
        "sender",
        "reply-to",
        "to",
        "cc",
        "bcc",
        "resent-from",
        "resent-sender",
        "resent-to",
        "resent-cc",
        "resent-bcc",
        "disposition-notification-to",
    }
)
_PARAMETER_FIELDS = frozenset({"content-type", "content-disposition"})
_STRUCTURED_FIELDS = frozenset(
    {
        "date",
        "resent-date",
        "message-id",
        "resent-message-id",
        "in-reply-to",
        "references",
        "received",
        "return-path",
        "mime-version",
        "content-transfer-encoding",
        "content-id",
        "dkim-signature",
        "authentication-results",
        "arc-seal",
        "arc-message-signature",
        "arc-authentication-results",
    }
)
"""Fields whose syntax has no place for an encoded-word: 8-bit bytes there cannot be kept."""

_IDENTITY = frozenset({"", "7bit", "8bit", "binary"})


class DowngradeError(ValueError):
    """The message cannot be made 7-bit without losing what it says. C{reason} says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def is_eight_bit(data: bytes) -> bool:
    """Whether C{data} has a byte over 127. C{bytes.isascii} runs in C, so this is cheap."""
    return not data.isascii()


def downgrade(raw: bytes) -> bytes:
    """The message C{raw} with every 8-bit byte encoded away; line ends become CRLF.

    Raises L{DowngradeError} when that cannot be done. A message that is 7-bit already
    comes back with only its line ends made canonical.
    """
    data = _LINE_END.sub(_CRLF, raw)
    try:
        out = _entity(data, "text/plain", top=True) if is_eight_bit(data) else data
    except DowngradeError:
        raise
    except Exception as e:  # the email package's parsers on a malformed header, say
        raise DowngradeError(f"its MIME structure could not be read ({type(e).__name__})") from e
    return out if out.endswith(_CRLF) or not out else out + _CRLF


# --- entities --------------------------------------------------------------------------


def _needs_work(data: bytes) -> bool:
    return is_eight_bit(data) or any(len(line) > MAX_LINE for line in data.split(_CRLF))


def _split_entity(data: bytes) -> tuple[list[list[bytes]], bytes | None]:
    """The header fields (each a list of physical lines) and the body (None: no blank line)."""
    fields: list[list[bytes]] = []
    pos = 0
    while pos < len(data):
        end = data.find(_CRLF, pos)
        line = data[pos:] if end < 0 else data[pos:end]
        nxt = len(data) if end < 0 else end + 2
        if line == b"":
            return fields, data[nxt:]
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        elif b":" in line and not line[:1].isspace():
            fields.append([line])
        else:
            # Not a header line: the body starts here without a blank line (RFC 5322 says
            # there must be one; keep the bytes as they are and treat the rest as body).
            return fields, data[pos:]
        pos = nxt
    return fields, None


def _field_name(field: list[bytes]) -> str:
    return field[0].partition(b":")[0].strip().decode("ascii", "replace").lower()


def _header_info(fields: list[list[bytes]], default_type: str) -> email.message.Message:
    """The parsed Content-* fields of an entity, for its type, parameters and encoding."""
    block = b"".join(line + _CRLF for field in fields for line in field)
    message = email.message_from_bytes(block + _CRLF)
    message.set_default_type(default_type)
    return message


def _entity(data: bytes, default_type: str, *, top: bool = False) -> bytes:
    """One MIME entity (a message or a body part) made 7-bit."""
    if not _needs_work(data):
        return data
    fields, body = _split_entity(data)
    info = _header_info(fields, default_type)
    content_type = info.get_content_type()
    cte = str(info.get("content-transfer-encoding", "")).strip().lower()
    new_cte: str | None = None
    if body is None or not _needs_work(body):
        new_body = body
    elif content_type.startswith("multipart/"):
        new_body = _multipart(body, info, content_type, cte)
        new_cte = "7bit" if cte in ("8bit", "binary") else None
    elif content_type == "message/rfc822":
        if cte not in _IDENTITY:
            raise DowngradeError(
                f"a message/rfc822 part has the encoding {cte!r}, which it may not"
            )
        new_body = _entity(body, "text/plain", top=True)
        new_cte = "7bit" if cte in ("8bit", "binary") else None
    elif content_type in ("message/partial", "message/external-body"):
        raise DowngradeError(f"a {content_type} part has 8-bit content, which it may not have")
    else:
        new_body, new_cte = _leaf(body, content_type, cte)
    new_fields = [_header_7bit(field) for field in fields]
    if new_cte is not None:
        new_fields = _with_cte(new_fields, new_cte)
        # A message (the whole, or one inside message/rfc822) that now has a
        # Content-Transfer-Encoding must say it is MIME.
        if top and not any(_field_name(f) == "mime-version" for f in new_fields):
            new_fields.append([b"MIME-Version: 1.0"])
        if top and "content-type" not in info and body is not None and _is_utf8(body):
            new_fields.append([b"Content-Type: text/plain; charset=utf-8"])
    head = b"".join(line + _CRLF for field in new_fields for line in field)
    if new_body is None:
        return head
    return head + _CRLF + new_body


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _with_cte(fields: list[list[bytes]], cte: str) -> list[list[bytes]]:
    """C{fields} with one Content-Transfer-Encoding, C{cte}, in place of the old one."""
    line = b"Content-Transfer-Encoding: " + cte.encode("ascii")
    out: list[list[bytes]] = []
    placed = False
    for field in fields:
        if _field_name(field) == "content-transfer-encoding":
            if not placed:
                out.append([line])
                placed = True
            continue
        out.append(field)
    if not placed:
        out.append([line])
    return out


def _multipart(body: bytes, info: email.message.Message, content_type: str, cte: str) -> bytes:
    """A multipart body with each part made 7-bit; an 8-bit preamble or epilogue is dropped."""
    if cte not in _IDENTITY:
        raise DowngradeError(f"a {content_type} part has the encoding {cte!r}, which it may not")
    boundary = info.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise DowngradeError(f"a {content_type} part has no boundary parameter")
    delimiter = b"--" + boundary.encode("ascii", "surrogateescape")
    child_type = "message/rfc822" if content_type == "multipart/digest" else "text/plain"
    preamble: list[bytes] = []
    parts: list[list[bytes]] = []
    epilogue: list[bytes] | None = None
    for line in body.split(_CRLF):
        if epilogue is not None:
            epilogue.append(line)
            continue
        bare = line.rstrip(b" \t")
        if bare == delimiter:
            parts.append([])
        elif bare == delimiter + b"--":
            epilogue = []
        elif parts:
            parts[-1].append(line)
        else:
            preamble.append(line)
    if not parts:
        raise DowngradeError(f"a {content_type} part has no part delimited by its boundary")
    out: list[bytes] = []
    pre = _CRLF.join(preamble)
    if preamble and not is_eight_bit(pre):
        out.append(pre)
    for part in parts:
        out.append(delimiter)
        out.append(_entity(_CRLF.join(part), child_type))
    out.append(delimiter + b"--")
    if epilogue is not None:
        epi = _CRLF.join(epilogue)
        out.append(epi if not is_eight_bit(epi) else b"")
    else:
        out.append(b"")  # the body ended without its close delimiter: end it with a line end
    return _CRLF.join(out)


def _leaf(body: bytes, content_type: str, cte: str) -> tuple[bytes, str]:
    """A leaf body re-encoded, and its new transfer encoding."""
    if cte in _IDENTITY:
        content = body
    elif cte == "quoted-printable":
        content = binascii.a2b_qp(body)  # an 8-bit byte in QP is taken as itself
    elif cte == "base64":
        if is_eight_bit(body):
            raise DowngradeError(f"a base64-encoded {content_type} part has 8-bit bytes")
        content = base64.b64decode(body.replace(_CRLF, b""), validate=False)
    else:
        raise DowngradeError(f"a {content_type} part has 8-bit bytes and the encoding {cte!r}")
    if content_type.startswith("text/"):
        return _quoted_printable(content), "quoted-printable"
    return _base64(content), "base64"


def _quoted_printable(content: bytes) -> bytes:
    """Each CRLF a hard line break; every other byte encoded as it must be (RFC 2045 §6.7)."""
    lines = [binascii.b2a_qp(line, istext=False) for line in content.split(_CRLF)]
    return _CRLF.join(line.replace(b"\n", _CRLF) for line in lines)


def _base64(content: bytes) -> bytes:
    return base64.encodebytes(content).rstrip(b"\n").replace(b"\n", _CRLF)


# --- headers ---------------------------------------------------------------------------


def _header_7bit(field: list[bytes]) -> list[bytes]:
    """A header field as it was, or, with 8-bit bytes, re-encoded (RFC 2047 / RFC 2231)."""
    if all(line.isascii() for line in field):
        return field
    raw_name, _, raw_value = b"".join(field).partition(b":")
    name = raw_name.strip().decode("ascii", "replace")
    if not raw_name.isascii() or not raw_value:
        raise DowngradeError("a header line has 8-bit bytes and is not a header field")
    try:
        value = raw_value.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise DowngradeError(f"the {name} header has 8-bit bytes that are not UTF-8") from None
    lower = name.lower()
    if lower in _ADDRESS_FIELDS:
        text = _addresses(name, value)
    elif lower in _PARAMETER_FIELDS:
        text = _parameters(name, value)
    elif lower in _STRUCTURED_FIELDS or lower.startswith("list-"):
        raise DowngradeError(f"the {name} header has 8-bit bytes, which cannot be encoded there")
    else:
        text = Header(value, "utf-8", header_name=name).encode(maxlinelen=76)
    return f"{name}: {text}".encode("ascii").split(b"\n")


def _addresses(name: str, value: str) -> str:
    """An address list with display names as encoded-words, one address per line."""
    pairs = email.utils.getaddresses([value])
    if not pairs or any(not address or "@" not in address for _, address in pairs):
        raise DowngradeError(f"the {name} header could not be read as a list of addresses")
    out = []
    for display, address in pairs:
        if not address.isascii():
            raise DowngradeError(
                f"an address in the {name} header has non-ASCII characters (that needs SMTPUTF8)"
            )
        if display.isascii():
            out.append(email.utils.formataddr((display, address)))
        else:
            out.append(f"{Header(display, 'utf-8').encode(maxlinelen=76)} <{address}>")
    return ",\n ".join(out)


def _parameters(name: str, value: str) -> str:
    """Content-Type or Content-Disposition with 8-bit parameter values in RFC 2231 form."""
    message = email.message.Message()
    message[name] = value
    params = message.get_params(header=name)
    if not params or not params[0][0].isascii() or params[0][1]:
        raise DowngradeError(f"the {name} header has 8-bit bytes in its type")
    out = [params[0][0]]
    for key, raw in params[1:]:
        param = email.utils.collapse_rfc2231_value(raw)
        if not key.isascii():
            raise DowngradeError(f"the {name} header has a parameter name with 8-bit bytes")
        if param.isascii():
            out.append(f'{key}="{email.utils.quote(param)}"')
            continue
        encoded = email.utils.encode_rfc2231(param, "utf-8")
        # RFC 2231 §3 continuations keep each line short; a %XX triplet is never split.
        pieces = re.findall(r"(?:%[0-9A-F]{2}|[^%]){1,60}", encoded)
        if len(pieces) == 1:
            out.append(f"{key}*={encoded}")
        else:
            out.extend(f"{key}*{i}*={piece}" for i, piece in enumerate(pieces))
    return ";\n ".join(out)
