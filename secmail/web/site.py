# -*- test-case-name: tests.test_reply,tests.test_portal -*-
"""
The portal's site: the request class (bodies in memory, refused over C{[portal]
max_upload_size}, the security headers on every response and no C{Server:} banner),
its factory, and an access log without link tokens.
"""

from __future__ import annotations

import io
import re
from typing import Any, Protocol
from urllib.parse import parse_qs

from klein import Klein
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.iweb import INonQueuedRequestFactory
from twisted.web.server import Request, Site
from zope.interface import implementer

from secmail.config import Settings
from secmail.web.formats import size_text
from secmail.web.i18n import request_language
from secmail.web.layout import COMMON_HEADERS, RESOURCE_CSP, PageFrame, template_page

log = Logger()


def access_log_line(timestamp: str, request: Any) -> str:
    """An access log line with link tokens replaced, so secrets never reach the logs."""
    path = request.uri.decode("ascii", "replace").split("?", 1)[0]
    path = re.sub(r"^/m/[^/]+", "/m/<token>", path)
    ip = request.getClientAddress()
    host = getattr(ip, "host", "-")
    method = request.method.decode("ascii", "replace")
    return f'{host} - - {timestamp} "{method} {path}" {request.code} {request.sentLength or "-"}'


class BoundedRequest(Request):
    """
    A request whose body is kept in memory and refused (413) over C{max_upload_size}.

    twisted.web writes a body of 100 KB or more to a temporary file, and a reply's
    attachments are plaintext: none may reach the disk. A body announced (Content-Length)
    or found (chunked) to be over the limit is answered at once with 413 and dropped;
    what the client still sends of it is read and discarded for a while, so that the
    browser sees the answer rather than a reset connection, and then the connection is
    closed. Form bodies are parsed by the page that takes them: URL-encoded ones into
    C{args} here, as twisted.web would, multipart ones by L{secmail.web.forms.submitted_form}.
    """

    def __init__(self, channel: HTTPChannel, frame: PageFrame, max_body: int) -> None:
        super().__init__(channel, parsePOSTFormSubmission=False)
        self.frame = frame
        self.max_body = max_body
        self._body = io.BytesIO()
        self._body_size = 0
        self._refused = False
        self._closing = False

    def gotLength(self, length: int | None) -> None:
        self._body = self.content = io.BytesIO()
        if length is not None and length > self.max_body:
            self._refuse(length)

    def handleContentChunk(self, data: bytes) -> None:
        self._body_size += len(data)
        if self._refused:
            if self._body_size > 2 * self.max_body:
                self._close()
            return
        if self._body_size > self.max_body:
            self._refuse(None)
            return
        self._body.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            self._close()  # answered already
            return
        super().requestReceived(command, path, version)

    def process(self) -> None:
        media = (self.getHeader(b"content-type") or b"").split(b";", 1)[0].strip().lower()
        if self.method == b"POST" and media == b"application/x-www-form-urlencoded":
            self._body.seek(0)
            self.args.update(parse_qs(self._body.read(), keep_blank_values=True))
            self._body.seek(0)
        super().process()

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            self._last_headers()
        super().write(data)

    def _last_headers(self) -> None:
        """
        Just before the head goes out, on every response (also Twisted's own: a failed
        render, C{OPTIONS *}): no C{Server:} banner naming the software and its version,
        and the security headers where the page did not set its own.
        """
        headers = self.responseHeaders
        headers.removeHeader(b"server")
        for name, value in COMMON_HEADERS.items():
            if not headers.hasHeader(name):
                headers.setRawHeaders(name, [value])
        if not headers.hasHeader(b"content-security-policy"):
            headers.setRawHeaders(b"Content-Security-Policy", [RESOURCE_CSP])
        if not headers.hasHeader(b"x-frame-options"):
            headers.setRawHeaders(b"X-Frame-Options", [b"DENY"])

    def _refuse(self, length: int | None) -> None:
        self._refused = True
        self._body = self.content = io.BytesIO()
        waiting = self.requestHeaders.getRawHeaders(b"expect")
        # No "100 Continue" after this answer: the client is not to send the body at all.
        self.requestHeaders.removeHeader(b"expect")
        peer = getattr(self.getClientAddress(), "host", "-")
        log.info(
            "Refused a request body of {size} bytes from {peer} (limit {limit})",
            size=length if length is not None else f"over {self.max_body}",
            peer=peer,
            limit=self.max_body,
        )
        language = request_language(self, self.frame.languages)
        limit = size_text(self.max_body, language, limit=True)
        page = template_page(self, self.frame, "errors/too_large.html", limit=limit)
        self.setHeader(b"Content-Length", str(len(page)).encode("ascii"))
        self.setHeader(b"Connection", b"close")
        head = b"".join(
            name + b": " + value + b"\r\n"
            for name, values in self.responseHeaders.getAllRawHeaders()
            for value in values
        )
        transport = self.channel.transport
        if transport is not None:
            transport.write(b"HTTP/1.1 413 Content Too Large\r\n" + head + b"\r\n" + page)
        if waiting:
            self._close()

    def _close(self) -> None:
        if not self._closing:
            self._closing = True
            self.loseConnection()


@implementer(INonQueuedRequestFactory)
class BoundedRequestFactory:
    """Makes the portal's L{BoundedRequest}s (a Site's C{requestFactory})."""

    def __init__(self, frame: PageFrame, max_body: int) -> None:
        self.frame = frame
        self.max_body = max_body

    def __call__(self, channel: HTTPChannel) -> BoundedRequest:
        return BoundedRequest(channel, self.frame, self.max_body)


class KleinPortal(Protocol):
    """What the site serves: a Klein app with the settings it runs under (L{secmail.web.portal})."""

    app: Klein
    settings: Settings
    frame: PageFrame


def make_site(portal: KleinPortal) -> Site:
    site = Site(
        portal.app.resource(),
        requestFactory=BoundedRequestFactory(portal.frame, portal.settings.portal.max_upload_size),
        logFormatter=access_log_line,
    )
    site.displayTracebacks = False
    return site
