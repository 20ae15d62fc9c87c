# -*- test-case-name: tests.test_reply,tests.test_compose,tests.test_portal -*-
"""
Forms, for the portal and D-Compose alike: the submitted form and its uploads (our own
multipart parser, which keeps each file's name, type and exact bytes), the send-once
guard (a form's one message has an id derived from the form), CSRF comparison, and the
portal's cookies.
"""

from __future__ import annotations

import hmac
import re
import secrets
from dataclasses import dataclass, field
from email.message import Message
from email.utils import collapse_rfc2231_value
from typing import cast
from urllib.parse import parse_qs

from twisted.web.iweb import IRequest
from twisted.web.server import Request

from secmail import mime
from secmail.store.messages import MessageStore, NewMessage

MAX_FORM_PARTS = 500


class FormError(ValueError):
    """The body is not a form this portal could have sent."""


@dataclass(frozen=True)
class Upload:
    """One file from a form: the name and type the browser sent (or cleaned), the bytes."""

    filename: str
    content_type: str
    data: bytes


@dataclass
class SubmittedForm:
    """A POSTed form: its text fields (every value given) and, for multipart, its files."""

    fields: dict[str, list[str]] = field(default_factory=dict)
    files: list[tuple[str, Upload]] = field(default_factory=list)

    def one(self, name: str) -> str | None:
        """The field's value; None when it is missing or given more than once."""
        values = self.fields.get(name, [])
        return values[0] if len(values) == 1 else None

    def text(self, name: str, limit: int | None = None) -> str:
        """The field's value ("" when missing or repeated), at most C{limit} characters."""
        value = self.one(name) or ""
        return value[:limit] if limit is not None else value

    def uploads(self, name: str) -> list[Upload]:
        return [upload for field_name, upload in self.files if field_name == name]


def read_form(content_type: bytes, body: bytes) -> SubmittedForm:
    """
    A form body: URL-encoded, or multipart/form-data with each file's name and type
    (which twisted.web's own parsing drops).

    @raise FormError: the body is neither, or is not well-formed.
    """
    media = content_type.split(b";", 1)[0].strip().lower()
    if media == b"application/x-www-form-urlencoded":
        form = SubmittedForm()
        for key, values in parse_qs(body, keep_blank_values=True).items():
            form.fields[_text(key)] = [_text(v) for v in values]
        return form
    if media == b"multipart/form-data":
        return parse_multipart(body, content_type)
    raise FormError("not a form")


def submitted_form(request: IRequest) -> SubmittedForm:
    """The request's form, read from its body (L{read_form}).

    @raise FormError: the body is not a well-formed form.
    """
    content = request.content
    content.seek(0)
    body = content.read()
    content.seek(0)
    return read_form(request.getHeader(b"content-type") or b"", body)


def parse_multipart(body: bytes, content_type: bytes) -> SubmittedForm:
    """A multipart/form-data body (RFC 7578), split on the bytes: file data comes out exact."""
    boundary = _header_params(b"Content-Type: " + content_type).get_param("boundary")
    if not isinstance(boundary, str) or not 1 <= len(boundary) <= 70:
        raise FormError("no boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    if body.startswith(delimiter):
        body = b"\r\n" + body
    sections = body.split(b"\r\n" + delimiter)
    if len(sections) < 2 or len(sections) > MAX_FORM_PARTS + 2:
        raise FormError("no parts, or too many")
    form = SubmittedForm()
    for section in sections[1:]:
        if section.startswith(b"--"):
            return form  # the close delimiter: what follows is the epilogue
        line_end = section.find(b"\r\n")
        if line_end < 0 or section[:line_end].strip(b" \t"):
            raise FormError("malformed delimiter line")
        rest = section[line_end + 2 :]
        if rest.startswith(b"\r\n"):
            head, data = b"", rest[2:]
        else:
            head, found, data = rest.partition(b"\r\n\r\n")
            if not found:
                raise FormError("part without a blank line after its headers")
        headers = _header_params(head)
        if headers.get_content_disposition() != "form-data":
            continue
        name = headers.get_param("name", header="content-disposition")
        if name is None or isinstance(name, str) and not name:
            continue
        name = collapse_rfc2231_value(name)
        filename = headers.get_filename()
        if filename is None:
            form.fields.setdefault(name, []).append(_text(data))
        elif filename or data:  # an empty file input sends a nameless, empty part
            content_type_of = str(headers.get("Content-Type", "application/octet-stream"))
            form.files.append((name, Upload(filename, content_type_of, data)))
    raise FormError("no close delimiter")


def _header_params(head: bytes) -> Message:
    """A part's header lines, in a Message for its parameter parsing (RFC 2231 included;
    only in text charsets, L{mime.neutralise_labels}: the label names the codec used)."""
    headers = Message()
    for line in _text(head).split("\r\n"):
        key, colon, value = line.partition(":")
        if colon and key.strip():
            headers[key.strip()] = mime.neutralise_labels(value.strip())
    return headers


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


# --- send once ----------------------------------------------------------------------------


def new_form_id() -> str:
    """
    A value naming this rendering of a form (a hidden field C{form}). The one message the
    form sends gets an id derived from it (L{once_id}), so that posting the form twice
    sends it once.
    """
    return secrets.token_urlsafe(18)


def once_id(key: bytes, scope: str, form_id: str) -> str | None:
    """The id of the one message a form may send; None for a malformed form id."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{16,64}", form_id):
        return None
    return hmac.new(key, f"{scope}:{form_id}".encode(), "sha256").hexdigest()[:32]


async def commit_once(
    store: MessageStore, messages: list[NewMessage], now: int, message_id: str, event: str
) -> bool:
    """
    Commit a form's messages; False when a concurrent post of the same form committed them
    first (the message id is taken, and its C{event} is there).
    """
    try:
        await store.commit(messages, now)
    except Exception:
        if await store.has_event(message_id, event):
            return False
        raise
    return True


# --- fields, secrets and cookies ------------------------------------------------------------


def same_secret(given: str, expected: str) -> bool:
    """A constant-time comparison that also takes what a hostile form sends (non-ASCII)."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def form_arg(request: IRequest, name: bytes, limit: int = 200) -> str:
    """A form or query field, decoded, at most C{limit} characters."""
    values = (request.args or {}).get(name) or [b""]
    return values[0].decode("utf-8", "replace")[:limit]


def set_cookie(request: IRequest, name: bytes, value: str, max_age: int | None = None) -> None:
    """A __Host- cookie: Secure, HttpOnly, SameSite=Lax, Path=/."""
    # IRequest.addCookie lacks httpOnly/sameSite; twisted.web's Request has them.
    cast(Request, request).addCookie(
        name,
        value.encode("ascii"),
        path=b"/",
        secure=True,
        httpOnly=True,
        sameSite="lax",
        max_age=str(max_age).encode() if max_age is not None else None,
    )


def cookie_value(request: IRequest, name: bytes) -> str:
    """A cookie's value when it looks like one of ours, else \"\"."""
    value = request.getCookie(name)
    if not value or not re.fullmatch(rb"[A-Za-z0-9_-]{16,200}", value):
        return ""
    return value.decode("ascii")
