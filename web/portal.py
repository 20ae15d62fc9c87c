"""
The recipient portal (minimal first version).

C{GET /m/<token>} shows the holder of a notification's link who sent the
message, its subject and its text body. Reading changes nothing. The full
portal (open button, session cookie, PIN, attachments, reply) replaces this page.
"""

from __future__ import annotations

import email.policy
import html
import re
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

from klein import Klein
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.server import Site

from secmail.config import Settings
from secmail.policy import strip_subject_keyword
from secmail.store.messages import MessageStore

log = Logger()

SECURITY_HEADERS = {
    b"Strict-Transport-Security": b"max-age=31536000",
    b"Content-Security-Policy": b"default-src 'none'; style-src 'self' 'unsafe-inline'; "
    b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"no-referrer",
    b"X-Frame-Options": b"DENY",
    b"Cache-Control": b"no-store",
}

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 0; background: #f4f5f7; color: #1d2330; }}
main {{ max-width: 48rem; margin: 0 auto; padding: 1rem; }}
.card {{ background: #fff; border-radius: 8px; padding: 1rem 1.25rem;
         box-shadow: 0 1px 3px rgba(0,0,0,.12); }}
dl {{ display: grid; grid-template-columns: max-content 1fr; gap: .25rem 1rem; }}
dt {{ font-weight: 600; }}
pre {{ white-space: pre-wrap; word-wrap: break-word; font: inherit; }}
</style></head>
<body><main><h1>{title}</h1><div class="card">{body}</div></main></body></html>
"""


class Portal:
    app = Klein()

    def __init__(self, settings: Settings, store: MessageStore) -> None:
        self.settings = settings
        self.store = store

    @app.route("/m/<token>", methods=["GET"])
    async def message(self, request: IRequest, token: str) -> bytes:
        _secure(request)
        envelope = await self.store.envelope_by_token(token)
        if envelope is None:
            request.setResponseCode(404)
            return _page(
                "Message not found",
                "<p>This link is not valid, or the message has expired and been deleted. "
                "Please contact the sender if you still need it.</p>",
            )
        raw = await self.store.read_all(envelope.message_id)
        parsed = BytesParser(policy=email.policy.default).parsebytes(raw)
        assert isinstance(parsed, EmailMessage)
        subject = str(parsed.get("subject", ""))
        if self.settings.secure.mode == "all" and self.settings.secure.subject_keyword:
            subject = strip_subject_keyword(subject, self.settings.secure.subject_keyword)
        text = _text_body(parsed)
        rows = [
            ("From", str(parsed.get("from", envelope.sender))),
            ("To", envelope.recipient),
            ("Date", str(parsed.get("date", ""))),
            ("Subject", subject),
        ]
        details = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in rows)
        return _page(
            "Secure message",
            f"<dl>{details}</dl><hr><pre>{html.escape(text)}</pre>",
        )

    @app.handle_errors(Exception)
    def failed(self, request: IRequest, failure: Any) -> bytes:
        _secure(request)
        log.failure("Portal request failed", failure)
        request.setResponseCode(500)
        return _page(
            "Temporary problem",
            "<p>The message cannot be shown right now. Please try again in a few minutes.</p>",
        )


def _text_body(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    if body is None:
        return "(This message has no plain-text part.)"
    try:
        content = body.get_content()
    except (LookupError, ValueError):
        content = body.get_payload(decode=True)
        content = content.decode("utf-8", "replace") if isinstance(content, bytes) else ""
    return str(content)


def _secure(request: IRequest) -> None:
    for name, value in SECURITY_HEADERS.items():
        request.setHeader(name, value)
    request.setHeader(b"Content-Type", b"text/html; charset=utf-8")


def _page(title: str, body: str) -> bytes:
    return PAGE.format(title=html.escape(title), body=body).encode("utf-8")


def access_log_line(timestamp: str, request: Any) -> str:
    """An access log line with link tokens replaced, so secrets never reach the logs."""
    path = request.uri.decode("ascii", "replace").split("?", 1)[0]
    path = re.sub(r"^/m/[^/]+", "/m/<token>", path)
    ip = request.getClientAddress()
    host = getattr(ip, "host", "-")
    method = request.method.decode("ascii", "replace")
    return f'{host} - - {timestamp} "{method} {path}" {request.code} {request.sentLength or "-"}'


def make_site(portal: Portal) -> Site:
    site = Site(portal.app.resource(), logFormatter=access_log_line)
    site.displayTracebacks = False
    return site
