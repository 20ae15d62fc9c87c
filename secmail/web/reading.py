# -*- test-case-name: tests.test_portal -*-
"""
Reading a letter after sign-in: the reading page, its sanitised HTML in a sandboxed frame,
inline pictures, attachments and the whole message as a download. Parsing and rendering
run on the portal's thread pool (L{secmail.web.access.PortalBase._render}).
"""

from __future__ import annotations

import re
from urllib.parse import quote

from twisted.web.iweb import IRequest

from secmail import message_log
from secmail.address import AddressError, Level, parse_recipient
from secmail.config import GatewayIdentity, RouteSettings, SecureSettings
from secmail.policy import strip_subject_keyword
from secmail.store.portal import Session
from secmail.web import errors, render, reply
from secmail.web.access import signed_in
from secmail.web.formats import header_date_text
from secmail.web.forms import form_arg
from secmail.web.i18n import request_language
from secmail.web.layout import DOWNLOAD_CSP, RESOURCE_CSP
from secmail.web.reply_page import ReplyRoutes
from secmail.web.safe_text import MAX_FILENAME_CHARS, safe_filename

app = ReplyRoutes.app


class ReadingRoutes(ReplyRoutes):
    """C{/read...}: what a signed-in reader sees and downloads."""

    @app.route("/read", methods=["GET"])
    @signed_in()
    async def read(self, request: IRequest, session: Session, raw: bytes) -> bytes:
        """The reading page: the letter's head, its text (HTML in a sandboxed frame), its
        attachments, and the reply and forward forms."""
        envelope = await self.store.envelope_by_id(session.envelope_id)
        reader = envelope.recipient if envelope is not None else ""
        settings = self.settings
        message, choices = await self._render(
            session, _reading, raw, reader, settings.routes, settings.secure, settings.identity
        )
        await self.store.add_event(
            session.message_id, session.envelope_id, "viewed", "", self.now()
        )
        message_log.opened(
            session.message_id,
            envelope_id=session.envelope_id,
            recipient=reader,
            peer=getattr(request.getClientAddress(), "host", "unknown"),
        )
        _ = self._t(request)
        language = request_language(request, self.frame.languages)
        subject = self._subject(message.subject) or _("(no subject)")
        images = form_arg(request, b"images") == "1"
        return self._template(
            request,
            "reading.html",
            heading=False,  # the subject is the heading
            message=message,
            subject=subject,
            date=header_date_text(message.date, language),
            images=images,
            frame="/read/html?images=1" if images else "/read/html",
            files=[(a.index, a.filename, self._size(request, a.size)) for a in message.attachments],
            forms=self._reply_forms(request, session.csrf, choices),
            csrf=session.csrf,
        )

    def _subject(self, subject: str) -> str:
        """The subject as the reader sees it: without the keyword that asked for security."""
        secure = self.settings.secure
        if secure.mode == "all" and secure.subject_keyword:
            return strip_subject_keyword(subject, secure.subject_keyword)
        return subject

    @app.route("/read/html", methods=["GET"])
    @signed_in()
    async def read_html(self, request: IRequest, session: Session, raw: bytes) -> bytes:
        """The sanitised HTML body, for a sandboxed iframe: no script, nothing remote by default."""
        images = form_arg(request, b"images") == "1"
        # The sandboxed frame has an opaque origin, so the browser sends no cookie with its
        # requests: inline (cid:) pictures are put into the document as data: URLs instead.
        message = await self._render(
            session, render.read_message, raw, load_remote_images=images, inline_images=True
        )
        img = b"img-src data: https: http:" if images else b"img-src data:"
        style = b"style-src " + render.FRAME_STYLE_SOURCE.encode("ascii")
        csp = b"sandbox; default-src 'none'; " + img + b"; " + style + b"; frame-ancestors 'self'"
        self._headers(request, csp=csp)
        request.setHeader(b"X-Frame-Options", b"SAMEORIGIN")
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return render.html_document(message.html or "").encode("utf-8")

    @app.route("/read/cid/<path:content_id>", methods=["GET"])
    @signed_in(letter=False)
    async def read_cid(self, request: IRequest, session: Session, content_id: str) -> bytes:
        """An inline picture (cid:) of the letter, for the reader's browser."""
        raw = await self._raw(session)
        part = None
        if raw is not None:
            part = await self._render(session, render.inline_part, raw, content_id)
        if part is None:
            request.setResponseCode(404)
            self._headers(request, csp=RESOURCE_CSP)
            return b""
        content_type, data = part
        self._headers(request, csp=DOWNLOAD_CSP)
        request.setHeader(b"Content-Type", content_type.encode("ascii", "replace"))
        return data

    @app.route("/read/attachment/<int:index>", methods=["GET"])
    @signed_in()
    async def read_attachment(
        self, request: IRequest, session: Session, raw: bytes, index: int
    ) -> bytes:
        """An attachment, as a download; recorded on the letter."""
        try:
            attachment, data = await self._render(session, render.attachment_bytes, raw, index)
        except (KeyError, IndexError):
            return errors.show(request, self.frame, errors.NO_SUCH_ATTACHMENT)
        # The audit trail says which one by its place, never by its name (names are content).
        await self.store.add_event(
            session.message_id,
            session.envelope_id,
            "downloaded",
            f"attachment {index + 1}, {len(data)} bytes",
            self.now(),
        )
        return self._download(request, data, attachment.filename)

    @app.route("/read/eml", methods=["GET"])
    @signed_in()
    async def read_eml(self, request: IRequest, session: Session, raw: bytes) -> bytes:
        """The whole letter as it came (.eml); recorded on the letter."""
        await self.store.add_event(
            session.message_id, session.envelope_id, "saved", "whole message", self.now()
        )
        subject = self._subject(await self._render(session, render.subject, raw))
        return self._download(request, raw, eml_filename(subject), b"message/rfc822")


def _reading(
    raw: bytes,
    reader: str,
    routes: RouteSettings,
    secure: SecureSettings,
    identity: GatewayIdentity,
) -> tuple[render.ReadableMessage, tuple[bool, bool]]:
    """What the reading page shows of a letter, and the reply choices: one thread's work."""
    message = render.read_message(
        raw,
        cid_url=lambda cid: "/read/cid/" + quote(cid, safe=""),
        shown_address=lambda address: real_address(address, secure),
    )
    return message, reply.reply_choices(raw, reader, routes, secure, identity)


def real_address(address: str, secure: SecureSettings) -> str:
    """
    The recipient's own address for a marked one (C{bob@partner.example.s}, or with a phone
    number before the marker): the routing form is the sender's instruction to the gateway,
    not an address the reader knows or should reply to. Any other address as it is.
    """
    try:
        recipient = parse_recipient(address, secure.extension, secure.default_country_code)
    except AddressError:
        return address
    return address if recipient.level is Level.PLAIN else recipient.address


def eml_filename(subject: str) -> str:
    """
    A saved message's file name: its subject made safe (L{safe_filename}; a slash in
    "Q3/Q4" is no path here, so it becomes a dash), or message.eml.
    """
    name = safe_filename(re.sub(r"[/\\]", "-", subject), MAX_FILENAME_CHARS - len(".eml"))
    return f"{name}.eml" if name else "message.eml"
