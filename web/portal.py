"""
The recipient portal: the link from the notification, opening, reading and downloading.

The link (C{/m/<token>}) only shows a landing page: link scanners fetch every
link, so a GET changes nothing. "Open" is a POST with a CSRF token; it swaps the
link token for a session cookie and redirects (303) to C{/read}, a URL without
the token. A letter is bound to the first browser that opens it; another browser
needs a one-time code sent to the recipient's address. From the reading page the reader
can reply, reply to all or forward inside the organisation (L{web.reply}); request bodies
stay in memory and are limited to C{[portal] max_upload_size} (L{BoundedRequest}).
"""

from __future__ import annotations

import hashlib
import hmac
import html
import io
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.message import Message
from email.utils import collapse_rfc2231_value
from typing import Any, TypeVar, cast
from urllib.parse import parse_qs

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.iweb import INonQueuedRequestFactory, IRequest
from twisted.web.resource import IResource
from twisted.web.server import Request, Site
from werkzeug.exceptions import HTTPException
from zope.interface import implementer

from secmail import mime
from secmail.config import Settings
from secmail.crypto import IntegrityError
from secmail.letters import system_mail
from secmail.notify import Notification, build_code_mail
from secmail.policy import strip_subject_keyword
from secmail.store.messages import Envelope, MessageStore, NewMessage, new_id
from secmail.store.portal import (
    CODE_LIFETIME,
    CODES_PER_DAY,
    CodeOrder,
    CodeState,
    PinOrder,
    PinState,
    PortalStore,
    Session,
)
from secmail.store.sms import SmsStore
from secmail.store.spool import RunInThread
from web import i18n, pin, render, reply
from web.i18n import N_, Translate
from web.layout import (
    COMMON_HEADERS,
    PAGE_CSP,
    error_page,
    read_file,
    render_page,
    set_security_headers,
    style_sheet,
    translation,
)

log = Logger()
T = TypeVar("T")


class CannotShow(Exception):
    """The letter cannot be shown: C{reason} is "damaged" or "complex" (L{Portal._cannot_show})."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


SESSION_COOKIE = b"__Host-secmail-session"
BROWSER_COOKIE = b"__Host-secmail-browser"
BROWSER_COOKIE_AGE = 365 * 24 * 3600

# For what is not a page (style sheet, images, downloads): no content runs, and nobody frames it.
RESOURCE_CSP = b"default-src 'none'; frame-ancestors 'none'"
DOWNLOAD_CSP = b"default-src 'none'; sandbox; frame-ancestors 'none'"

LEVELS = {
    "letter": N_("Secure letter"),
    "registered": N_("Registered letter (PIN by text message)"),
}


class Portal:
    app = Klein()

    def __init__(
        self,
        settings: Settings,
        store: MessageStore,
        portal_store: PortalStore,
        clock: IReactorTime,
        csrf_key: bytes,
        on_commit: Callable[[], None] = lambda: None,
        compose: IResource | None = None,
        run_in_thread: RunInThread = deferToThread,
        sms: SmsStore | None = None,
        on_sms: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.sms = sms
        self.on_sms = on_sms
        self.compose = compose
        self.run_in_thread = run_in_thread
        self.store = store
        self.sessions = portal_store
        self.clock = clock
        self._csrf_key = csrf_key
        self.on_commit = on_commit

    def now(self) -> int:
        return int(self.clock.seconds())

    # --- the link --------------------------------------------------------------------

    @app.route("/m/<token>", methods=["GET"])
    async def landing(self, request: IRequest, token: str) -> bytes:
        """Who sent it and an "Open" button. Changes nothing: link scanners come here first."""
        envelope = await self._envelope(request, token)
        if envelope is None:
            return self._not_found(request)
        _ = self._t(request)
        when = datetime.fromtimestamp(envelope.created, UTC).strftime("%Y-%m-%d %H:%M UTC")
        details = _details(
            [
                (_("From"), envelope.sender or _("(unknown sender)")),
                (_("To"), envelope.recipient),
                (_("Received"), when),
                (_("Protection"), _(LEVELS.get(envelope.level, envelope.level))),
            ]
        )
        body = (
            f'<div class="card">{details}</div>'
            f'<form method="post" action="/m/{_e(token)}" class="card">'
            f'<input type="hidden" name="csrf" value="{self._form_csrf(token)}">'
            f"<p>{_('The message is kept encrypted on this server. Open it to read it.')}</p>"
            f'<button type="submit">{_("Open message")}</button></form>'
        )
        return self._page(request, _("A secure message for you"), body)

    @app.route("/m/<token>", methods=["POST"])
    async def open(self, request: IRequest, token: str) -> bytes:
        """Swap the link for a session: bind a letter to this browser on its first open."""
        envelope = await self._envelope(request, token)
        if envelope is None:
            return self._not_found(request)
        if not self._form_csrf_ok(request, token):
            return self._bad_form(request)
        if envelope.level == "registered":
            return await self._pin_page(request, token, envelope, order=True)
        browser = cookie_value(request, BROWSER_COOKIE) or new_id() + new_id()
        self._set_cookie(request, BROWSER_COOKIE, browser, max_age=BROWSER_COOKIE_AGE)
        if await self.sessions.open_envelope(envelope.id, browser, self.now()):
            return await self._sign_in(request, envelope, "link in this browser")
        if envelope.locked is not None:
            return self._locked(request, envelope)
        return self._code_page(request, token, envelope, None)

    @app.route("/m/<token>/code", methods=["POST"])
    async def send_code(self, request: IRequest, token: str) -> bytes:
        """Send a one-time code to the recipient's address (to open in another browser)."""
        envelope = await self._envelope(request, token)
        if envelope is None:
            return self._not_found(request)
        if not self._form_csrf_ok(request, token) or envelope.level != "letter":
            return self._bad_form(request)
        state, code = await self.sessions.order_code(envelope.id, self.now())
        _ = self._t(request)
        if state == CodeOrder.TOO_MANY:
            return self._code_page(
                request,
                token,
                envelope,
                _("Too many codes were sent in the last hour. Please try again later."),
                status=429,
            )
        if state == CodeOrder.TOO_MANY_TODAY:
            return self._code_page(
                request,
                token,
                envelope,
                _(
                    "{count} codes were sent for this message in the last 24 hours, which is "
                    "as many as we send. Please use the newest code, or try again tomorrow."
                ).format(count=CODES_PER_DAY),
                status=429,
            )
        if code is None:
            return self._locked(request, envelope)
        await self._mail_code(envelope, code)
        return self._code_page(request, token, envelope, None, sent=True)

    @app.route("/m/<token>/verify", methods=["POST"])
    async def verify_code(self, request: IRequest, token: str) -> bytes:
        envelope = await self._envelope(request, token)
        if envelope is None:
            return self._not_found(request)
        if not self._form_csrf_ok(request, token) or envelope.level != "letter":
            return self._bad_form(request)
        _ = self._t(request)
        code = form_arg(request, b"code")
        if not re.fullmatch(r"\s*[0-9]{6}\s*", code):
            return self._code_page(request, token, envelope, _("The code has 6 digits."), sent=True)
        notice = pin.lock_notice(self.settings, envelope, self._date())
        state = await self.sessions.check_code(
            envelope.id, code, self.now(), self._gateway_mail(envelope, notice)
        )
        if state == CodeState.OK:
            return await self._sign_in(request, envelope, "e-mail code")
        if state == CodeState.WRONG:
            return self._code_page(
                request, token, envelope, _("That code is not right. Please try again."), sent=True
            )
        if state == CodeState.LOCKED_NOW:
            log.warn(
                "Letter {envelope} locked for codes after too many wrong codes",
                envelope=envelope.id,
            )
            self.on_commit()
        if state in (CodeState.LOCKED, CodeState.LOCKED_NOW):
            return self._locked(request, envelope)
        return self._code_page(
            request,
            token,
            envelope,
            _(
                "That code no longer works (too many tries, or more than 10 minutes old). "
                "Please ask for a new one."
            ),
        )

    # --- registered letters: the SMS PIN ------------------------------------------------

    @app.route("/m/<token>/pin", methods=["POST"])
    async def order_pin(self, request: IRequest, token: str) -> bytes:
        """Order a new PIN (at most one a minute, CODES_PER_HOUR an hour)."""
        envelope = await self._envelope(request, token)
        if envelope is None:
            return self._not_found(request)
        if not self._form_csrf_ok(request, token) or envelope.level != "registered":
            return self._bad_form(request)
        return await self._pin_page(request, token, envelope, order=True)

    @app.route("/m/<token>/pin/verify", methods=["POST"])
    async def verify_pin(self, request: IRequest, token: str) -> bytes:
        envelope = await self._envelope(request, token)
        if envelope is None:
            return self._not_found(request)
        if not self._form_csrf_ok(request, token) or envelope.level != "registered":
            return self._bad_form(request)
        _ = self._t(request)
        typed = form_arg(request, b"pin")
        if not re.fullmatch(r"\s*[0-9]{6}\s*", typed):
            return await self._pin_page(request, token, envelope, error=_("The PIN has 6 digits."))
        notice = pin.lock_notice(self.settings, envelope, self._date())
        state = await self.sessions.check_pin(
            envelope.id, typed, self.now(), self._gateway_mail(envelope, notice)
        )
        if state == PinState.OK:
            return await self._sign_in(request, envelope, "SMS PIN")
        if state == PinState.WRONG:
            return await self._pin_page(
                request, token, envelope, error=_("That PIN is not right. Please try again.")
            )
        if state == PinState.SUPERSEDED:
            return await self._pin_page(
                request,
                token,
                envelope,
                error=_(
                    "That PIN was replaced by a newer one. Please type the PIN from the "
                    "latest text message."
                ),
            )
        if state == PinState.EXPIRED:
            return await self._pin_page(
                request,
                token,
                envelope,
                error=_(
                    "That PIN no longer works (too many tries, or more than 10 minutes old). "
                    "Please order a new one."
                ),
            )
        if state == PinState.LOCKED_NOW:
            log.warn(
                "Registered letter {envelope} locked after too many wrong PINs",
                envelope=envelope.id,
            )
            self.on_commit()
        return self._locked(request, envelope)

    @app.route("/m/<token>/wrong-number", methods=["POST"])
    async def wrong_number(self, request: IRequest, token: str) -> bytes:
        """The reader says the number is not theirs: tell the sender, once."""
        envelope = await self._envelope(request, token)
        if envelope is None:
            return self._not_found(request)
        if not self._form_csrf_ok(request, token) or envelope.level != "registered":
            return self._bad_form(request)
        if envelope.phone is None:
            return self._bad_form(request)
        notice = pin.wrong_number_notice(self.settings, envelope, envelope.phone, self._date())
        if await self.sessions.report_wrong_number(
            envelope.id, self.now(), self._gateway_mail(envelope, notice)
        ):
            self.on_commit()
        _ = self._t(request)
        if envelope.sender:
            text = _("Thank you. We have told the sender ({sender}).").format(
                sender=envelope.sender
            )
        else:
            text = _("Thank you. The sender cannot be told by e-mail; please contact them.")
        return self._page(
            request,
            _("The sender has been told"),
            f'<div class="card"><p>{_e(text)}</p><p>'
            + _("They can send the message again with the right phone number.")
            + "</p></div>",
        )

    async def _pin_page(
        self,
        request: IRequest,
        token: str,
        envelope: Envelope,
        *,
        order: bool = False,
        error: str | None = None,
    ) -> bytes:
        """The PIN challenge; with C{order}, a new PIN is sent first (if the limits allow)."""
        _ = self._t(request)
        if envelope.locked is not None:
            return self._locked(request, envelope)
        csrf = self._form_csrf(token)
        number = envelope.phone
        if self.sms is None or not self.settings.sms.order or number is None:
            log.error(
                "A registered letter was opened, but no SMS backend is configured (sms.order)"
                if number is not None
                else "Registered letter {envelope} has no phone number",
                envelope=envelope.id,
            )
            return self._error(request, 503, "pin_unavailable")
        note = None
        if order:
            language = i18n.request_language(request, self.settings.portal.languages)
            state = await self.sessions.new_pin(
                envelope.id,
                number,
                lambda code: pin.pin_sms_text(self.settings, language, code),
                self.sms.sealer,
                self.now(),
            )
            if state == PinOrder.SENT:
                self.on_sms()
                note = _("A new PIN is on its way.")
            elif state == PinOrder.TOO_SOON:
                note = _(
                    "A PIN was sent less than a minute ago. Please wait for it, or order a "
                    "new one in a minute."
                )
            elif state == PinOrder.TOO_MANY:
                error = error or _(
                    "Too many PINs were ordered in the last hour. Please try again later."
                )
                request.setResponseCode(429)
            elif state == PinOrder.TOO_MANY_TODAY:
                error = error or _(
                    "{count} PINs were ordered for this message in the last 24 hours, which is "
                    "as many as we send. Please use the newest PIN, or try again tomorrow."
                ).format(count=CODES_PER_DAY)
                request.setResponseCode(429)
            else:
                return self._locked(request, envelope)
        pending = await self.sms.pending(envelope.id)
        if pending is not None and pending.attempts > 0 and error is None:
            note = _(
                "Sending the text message is taking longer than usual. We keep trying; "
                "it should arrive within a few minutes."
            )
        elif (
            pending is None
            and error is None
            and await self.sms.failed_since_order(envelope.message_id, envelope.id)
        ):
            note = None
            error = _(
                "We could not send the text message with your PIN. Please order a new PIN; "
                "if that one does not arrive either, please contact the sender."
            )
        body = pin.pin_forms(
            _,
            token=token,
            csrf=csrf,
            number=number,
            wrong_number_told=envelope.wrong_number is not None,
            error=error,
            note=note,
        )
        return self._page(request, _("Type the PIN"), body)

    def _locked(self, request: IRequest, envelope: Envelope) -> bytes:
        # Locked for codes (a letter): the browser it was first opened in still opens it.
        pin = envelope.level != "letter"
        return self._error(
            request, 403, "message_locked", pin=pin, sender_told=bool(envelope.sender)
        )

    def _date(self) -> datetime:
        return datetime.fromtimestamp(self.clock.seconds(), UTC)

    def _gateway_mail(self, envelope: Envelope, mail: Notification | None) -> NewMessage | None:
        """A notice to a letter's sender, ready to commit; events go on the letter."""
        if mail is None:
            return None
        return system_mail(
            self.settings,
            self.store.master,
            kind="notice",
            sender=mail.sender,
            to=mail.recipient,
            content=mail.content,
            about=envelope.message_id,
        )

    # --- reading ------------------------------------------------------------------------

    @app.route("/read", methods=["GET"])
    async def read(self, request: IRequest) -> bytes:
        session = await self._session(request)
        if session is None:
            return self._signed_out(request)
        raw = await self._raw(session)
        if raw is None:
            return self._gone(request)
        envelope = await self.store.envelope_by_id(session.envelope_id)
        reader = envelope.recipient if envelope is not None else ""
        message, choices = await self._render(session, _reading, raw, reader, self.settings)
        await self.store.add_event(
            session.message_id, session.envelope_id, "viewed", "", self.now()
        )
        _ = self._t(request)
        subject = message.subject or _("(no subject)")
        if self.settings.secure.mode == "all" and self.settings.secure.subject_keyword:
            subject = strip_subject_keyword(subject, self.settings.secure.subject_keyword)
        rows = [(_("From"), message.from_), (_("To"), ", ".join(message.to))]
        if message.cc:
            rows.append((_("Cc"), ", ".join(message.cc)))
        rows.append((_("Date"), message.date))
        parts = [f'<div class="card"><h1>{_e(subject)}</h1>{_details(rows)}</div>']
        if message.html is not None:
            images = ""
            if message.has_remote_images:
                images = (
                    '<p class="note">'
                    + _(
                        "Pictures from the Internet are not shown, so that the "
                        "sender cannot tell when you read the message."
                    )
                    + ' <a href="/read?images=1" class="button secondary">'
                    + _("Show pictures")
                    + "</a></p>"
                )
            src = "/read/html?images=1" if form_arg(request, b"images") == "1" else "/read/html"
            parts.append(
                f'<div class="card">{images}<iframe src="{src}" title="{_e(_("Message"))}" '
                'sandbox="allow-popups allow-popups-to-escape-sandbox" '
                'referrerpolicy="no-referrer"></iframe></div>'
            )
        elif message.text is not None:
            parts.append(f'<div class="card"><pre>{_e(message.text)}</pre></div>')
        if message.incomplete:
            parts.append(
                '<div class="card"><p class="note">'
                + _(
                    "Part of this message is too long or too complex to show here. "
                    "Save the whole message (.eml) to see all of it."
                )
                + "</p></div>"
            )
        if message.html is not None and message.text is not None:
            parts.append(
                f'<details class="card"><summary>{_("Plain text")}</summary>'
                f"<pre>{_e(message.text)}</pre></details>"
            )
        if message.attachments:
            items = "".join(
                f'<li><a href="/read/attachment/{a.index}">{_e(a.filename)}</a> '
                f'<span class="note">({_size(a.size)})</span></li>'
                for a in message.attachments
            )
            parts.append(
                f'<div class="card"><h2>{_("Attachments")}</h2><ul class="files">{items}</ul></div>'
            )
        parts.append(self._reply_forms(_, session.csrf, choices))
        parts.append(
            '<div class="card actions"><a class="button secondary" href="/read/eml">'
            f"{_('Save the whole message (.eml)')}</a>"
            '<form method="post" action="/logout">'
            f'<input type="hidden" name="csrf" value="{_e(session.csrf)}">'
            f'<button type="submit" class="secondary">{_("Sign out")}</button></form></div>'
        )
        return self._page(request, _("Secure message"), "".join(parts), heading=False)

    @app.route("/read/html", methods=["GET"])
    async def read_html(self, request: IRequest) -> bytes:
        """The sanitised HTML body, for a sandboxed iframe: no script, nothing remote by default."""
        session = await self._session(request)
        if session is None:
            return self._signed_out(request)
        raw = await self._raw(session)
        if raw is None:
            return self._gone(request)
        images = form_arg(request, b"images") == "1"
        # The sandboxed frame has an opaque origin, so the browser sends no cookie with its
        # requests: inline (cid:) pictures are put into the document as data: URLs instead.
        message = await self._render(
            session, render.read_message, raw, load_remote_images=images, inline_images=True
        )
        img = b"img-src data: https: http:" if images else b"img-src data:"
        self._headers(
            request, csp=b"sandbox; default-src 'none'; " + img + b"; frame-ancestors 'self'"
        )
        request.setHeader(b"X-Frame-Options", b"SAMEORIGIN")
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return render.html_document(message.html or "").encode("utf-8")

    @app.route("/read/cid/<path:content_id>", methods=["GET"])
    async def read_cid(self, request: IRequest, content_id: str) -> bytes:
        session = await self._session(request)
        if session is None:
            return self._signed_out(request)
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
    async def read_attachment(self, request: IRequest, index: int) -> bytes:
        session = await self._session(request)
        if session is None:
            return self._signed_out(request)
        raw = await self._raw(session)
        if raw is None:
            return self._gone(request)
        try:
            attachment, data = await self._render(session, render.attachment_bytes, raw, index)
        except (KeyError, IndexError):
            return self._error(request, 404, "no_such_attachment")
        await self.store.add_event(
            session.message_id, session.envelope_id, "downloaded", attachment.filename, self.now()
        )
        return self._download(request, data, attachment.filename)

    @app.route("/read/eml", methods=["GET"])
    async def read_eml(self, request: IRequest) -> bytes:
        session = await self._session(request)
        if session is None:
            return self._signed_out(request)
        raw = await self._raw(session)
        if raw is None:
            return self._gone(request)
        await self.store.add_event(
            session.message_id, session.envelope_id, "saved", "whole message", self.now()
        )
        return self._download(request, raw, "message.eml", content_type=b"message/rfc822")

    @app.route("/read/reply", methods=["POST"])
    async def send_reply(self, request: IRequest) -> bytes:
        """Reply, reply all or forward: mail to the organisation, secure letters to outsiders."""
        session = await self._session(request)
        if session is None:
            return self._signed_out(request)
        try:
            form = submitted_form(request)
        except FormError:
            return self._bad_form(request)
        # One mail per form: its id comes from the form, so a second click finds the first
        # one's "written" event (events outlive delivered mail) and sends nothing more.
        reply_id = once_id(self._csrf_key, f"reply:{session.envelope_id}", form.one("form"))
        if not same_secret(form.one("csrf"), session.csrf) or reply_id is None:
            return self._bad_form(request)
        if await self.store.has_event(reply_id, "written"):
            return self._to_sent_page(request)
        envelope = await self.store.envelope_by_id(session.envelope_id)
        raw = await self._raw(session)
        if envelope is None or raw is None:
            return self._gone(request)
        mode, text, to = form.one("mode"), form.one("text"), form.one("to")
        uploads = form.uploads("files")
        size = len(text.encode("utf-8")) + sum(len(u.data) for u in uploads)
        limit = self.settings.portal.max_upload_size
        if size > limit:
            problem = self._t(request)(
                "Your message and files come to {size}; at most {limit} can be "
                "sent at once. Please attach fewer or smaller files."
            ).format(size=_size(size), limit=_size(limit))
            return await self._not_sent(request, session, raw, envelope, form, problem, 413)
        now = self.now()
        date = datetime.fromtimestamp(self.clock.seconds(), UTC)
        try:
            mail: reply.ReplyMail = await self._render(
                session,
                lambda: reply.build_reply(
                    original=raw,
                    mode=mode,
                    reader=envelope.recipient,
                    reader_original=envelope.original,
                    text=text,
                    uploads=uploads,
                    forward_to=to,
                    settings=self.settings,
                    date=date,
                ),
            )
        except reply.ReplyError as e:
            return await self._not_sent(request, session, raw, envelope, form, str(e), 400)
        messages = reply.reply_messages(
            mail,
            settings=self.settings,
            master=self.store.master,
            reader=envelope.recipient,
            about=session.message_id,
            date=date,
            message_id=reply_id,
        )
        if not await commit_once(self.store, messages, now, reply_id, "written"):
            return self._to_sent_page(request)  # the other click won
        self.on_commit()
        kind = "forwarded" if mail.mode == "forward" else "replied"
        await self.store.add_event(session.message_id, session.envelope_id, kind, mail.summary, now)
        return self._to_sent_page(request)

    def _to_sent_page(self, request: IRequest) -> bytes:
        """To a page of its own (303), so that reloading it cannot send the mail again."""
        request.setResponseCode(303)
        request.setHeader(b"Location", b"/read/sent")
        self._headers(request)
        return b""

    @app.route("/read/sent", methods=["GET"])
    async def sent(self, request: IRequest) -> bytes:
        """What the reader's last reply or forward from this letter went out as."""
        session = await self._session(request)
        if session is None:
            return self._signed_out(request)
        sent = [
            detail
            for _, kind, envelope_id, detail in await self.store.events(session.message_id)
            if envelope_id == session.envelope_id and kind in ("replied", "forwarded")
        ]
        _ = self._t(request)
        back = f'<p><a class="button secondary" href="/read">{_("Back to the message")}</a></p>'
        if not sent:
            return self._page(
                request,
                _("Nothing sent"),
                f'<div class="card"><p>{_("Nothing has been sent from this message yet.")}</p>'
                f"{back}</div>",
            )
        return self._page(
            request,
            _("Sent"),
            f'<div class="card" role="status"><p>{_e(sent[-1])}</p>{back}</div>',
        )

    @app.route("/logout", methods=["POST"])
    async def logout(self, request: IRequest) -> bytes:
        session_id = cookie_value(request, SESSION_COOKIE)
        session = await self._session(request)
        if session is not None and session_id:
            if not same_secret(form_arg(request, b"csrf"), session.csrf):
                return self._bad_form(request)
            await self.sessions.end_session(session_id)
        self._set_cookie(request, SESSION_COOKIE, "", max_age=0)
        _ = self._t(request)
        return self._page(
            request,
            _("Signed out"),
            '<div class="card"><p>'
            + _("You are signed out. To read the message again, use the link in the e-mail.")
            + "</p></div>",
        )

    @app.route("/compose/", methods=["GET"])
    def compose_slash(self, request: IRequest) -> bytes:
        """C{/compose/} (as people type it) is C{/compose}: the branch needs a name after it."""
        request.setResponseCode(301)
        request.setHeader(b"Location", b"/compose")
        self._headers(request)
        return b""

    @app.route("/compose", branch=True)
    def compose_branch(self, request: IRequest) -> IResource | bytes:
        """Outsiders writing to the organisation (D-Compose): its own app, see web/compose.py."""
        if self.compose is None:
            return self._error(request, 404, "no_such_page")
        return self.compose

    @app.route("/static/portal.css", methods=["GET"])
    def style(self, request: IRequest) -> bytes:
        self._headers(request, csp=RESOURCE_CSP)
        request.setHeader(b"Content-Type", b"text/css; charset=utf-8")
        request.setHeader(b"Cache-Control", b"public, max-age=3600")
        return style_sheet(self.settings)

    @app.route("/static/logo", methods=["GET"])
    async def logo(self, request: IRequest) -> bytes:
        """The organisation's logo (PNG or JPEG, checked when the configuration was read)."""
        self._headers(request, csp=RESOURCE_CSP)
        portal = self.settings.portal
        if not portal.logo_file:
            request.setResponseCode(404)
            return b""
        data: bytes = await self.run_in_thread(read_file, portal.logo_file)
        request.setHeader(b"Content-Type", portal.logo_type.encode("ascii"))
        request.setHeader(b"Cache-Control", b"public, max-age=3600")
        return data

    @app.route("/lang/<code>", methods=["GET"])
    def choose_language(self, request: IRequest, code: str) -> bytes:
        """The language switch: remember the choice and go back to the page (on this site)."""
        target = i18n.safe_next(form_arg(request, b"next", 2000))
        if code in self.settings.portal.languages:
            set_cookie(request, i18n.LANG_COOKIE, code, max_age=i18n.LANG_COOKIE_AGE)
        request.setResponseCode(303)
        request.setHeader(b"Location", target.encode("ascii"))
        self._headers(request)
        return b""

    @app.handle_errors(Exception)
    def failed(self, request: IRequest, failure: Any) -> bytes:
        if failure.check(HTTPException):
            # Klein's routing errors (no such page, wrong method) come here too: the
            # visitor's mistake, answered with its own status, not a failure to log.
            error = failure.value
            for name, value in error.get_response().headers:
                if name in ("Location", "Allow"):
                    request.setHeader(name.encode("ascii"), value.encode("ascii", "replace"))
            return self._error(request, error.code or 404, "page_not_found")
        if failure.check(CannotShow):
            return self._cannot_show(request, failure.value)
        log.failure("Portal request failed", failure)
        return self._error(request, 500, "temporary_problem")

    # --- helpers ------------------------------------------------------------------------

    def _t(self, request: IRequest) -> Translate:
        return translation(request, self.settings)

    async def _envelope(self, request: IRequest, token: str) -> Envelope | None:
        """
        The letter behind a link. A secure letter to an address in the phone directory is
        a registered letter (PIN by SMS to the directory's number), also one sent before
        the address was added.
        """
        if not re.fullmatch(r"[A-Za-z0-9_-]{20,100}", token):
            return None
        envelope = await self.store.envelope_by_token(token)
        if envelope is not None and envelope.level == "letter" and self.sms is not None:
            number = await self.sms.phone_for(envelope.recipient)
            if number is not None:
                envelope = replace(envelope, level="registered", phone=number)
        return envelope

    async def _session(self, request: IRequest) -> Session | None:
        session_id = cookie_value(request, SESSION_COOKIE)
        if not session_id:
            return None
        return await self.sessions.session(session_id, self.now())

    async def _raw(self, session: Session) -> bytes | None:
        """The letter's plaintext, or None if it is gone.

        @raise CannotShow: the stored ciphertext fails authentication (altered on disk or in
            the database). Recorded on the message once, as a "damaged" event.
        """
        try:
            return await self.store.read_all(session.message_id)
        except LookupError:
            return None
        except IntegrityError as e:
            log.error(
                "Message {id} is damaged, not shown: {problem}", id=session.message_id, problem=e
            )
            if not await self.store.has_event(session.message_id, "damaged"):
                await self.store.add_event(
                    session.message_id, session.envelope_id, "damaged", str(e), self.now()
                )
            raise CannotShow("damaged") from None

    async def _render(self, session: Session, work: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Parse and render the letter on the thread pool: a message can be a lot of work.

        @raise CannotShow: the message is beyond the parser's limits.
        """
        try:
            result: T = await self.run_in_thread(work, *args, **kw)
        except render.MessageTooComplex as e:
            log.warn(
                "Message {id} is too complex to show: {reason}", id=session.message_id, reason=e
            )
            raise CannotShow("complex") from None
        return result

    def _cannot_show(self, request: IRequest, problem: CannotShow) -> bytes:
        """The page for a letter that cannot be shown, saying why and what the reader can do."""
        if problem.reason == "damaged":
            return self._error(request, 500, "message_damaged")
        return self._error(request, 422, "message_too_complex")

    async def _sign_in(self, request: IRequest, envelope: Envelope, how: str) -> bytes:
        old = cookie_value(request, SESSION_COOKIE)
        if old:
            await self.sessions.end_session(old)  # a new session id at every sign-in
        session_id = await self.sessions.create_session(envelope.id, self.now(), how)
        self._set_cookie(request, SESSION_COOKIE, session_id)
        request.setResponseCode(303)
        request.setHeader(b"Location", b"/read")
        self._headers(request)
        return b""

    async def _mail_code(self, envelope: Envelope, code: str) -> None:
        mail = build_code_mail(
            settings=self.settings,
            recipient=envelope.recipient,
            code=code,
            minutes=CODE_LIFETIME // 60,
            message_id_domain=self.settings.gateway.hostname,
            date=datetime.fromtimestamp(self.clock.seconds(), UTC),
        )
        await self.store.commit(
            [
                system_mail(
                    self.settings,
                    self.store.master,
                    kind="code",
                    sender=mail.sender,
                    to=envelope.recipient,
                    content=mail.content,
                    about=envelope.message_id,
                )
            ],
            self.now(),
        )
        self.on_commit()

    def _form_csrf(self, token: str) -> str:
        token_hash = hashlib.sha256(token.encode("ascii", "replace")).digest()
        return hmac.new(self._csrf_key, b"link-form:" + token_hash, "sha256").hexdigest()

    def _form_csrf_ok(self, request: IRequest, token: str) -> bool:
        return same_secret(form_arg(request, b"csrf"), self._form_csrf(token))

    def _code_page(
        self,
        request: IRequest,
        token: str,
        envelope: Envelope,
        error: str | None,
        sent: bool = False,
        status: int = 200,
    ) -> bytes:
        request.setResponseCode(status)
        _ = self._t(request)
        csrf = self._form_csrf(token)
        problem = f'<p class="error" role="alert">{_e(error)}</p>' if error else ""
        if sent:
            sent_to = _("We sent a 6-digit code to {address}. It works for 10 minutes.")
            form = (
                f'<form method="post" action="/m/{_e(token)}/verify" class="card">{problem}'
                f"<p>{sent_to.format(address=_e(envelope.recipient))}</p>"
                f'<input type="hidden" name="csrf" value="{csrf}">'
                f'<label for="code">{_("Code")}</label>'
                '<input type="text" id="code" name="code" inputmode="numeric" '
                'autocomplete="one-time-code" pattern="[0-9]{6}" maxlength="6" required>'
                f' <button type="submit">{_("Open message")}</button></form>'
            )
        else:
            form = ""
        button_class = ' class="secondary"' if sent else ""
        button_text = _("Send a new code") if sent else _("Send me a code")
        confirm = _(
            "This message was first opened in another browser. To open it here, confirm "
            "that you are {address}: we will send a one-time code to that address."
        )
        ask = (
            f'<form method="post" action="/m/{_e(token)}/code" class="card">'
            f"{'' if sent else problem}"
            f"<p>{confirm.format(address=_e(envelope.recipient))}</p>"
            f'<input type="hidden" name="csrf" value="{csrf}">'
            f'<button type="submit"{button_class}>{button_text}</button></form>'
        )
        return self._page(request, _("Confirm it is you"), form + ask)

    def _reply_forms(
        self,
        _: Translate,
        csrf: str,
        choices: tuple[bool, bool],
        mode: str = "",
        text: str = "",
        to: str = "",
    ) -> str:
        """The reading page's Reply (and Reply all) form and its Forward form.

        C{choices}: whether the reader can reply, and reply all (L{reply.reply_choices})."""
        can_reply, can_reply_all = choices
        limit = _size(self.settings.portal.max_upload_size)
        # One id for both forms: the page offers one reply, whichever button sends it.
        hidden = f'<input type="hidden" name="csrf" value="{_e(csrf)}">{form_id_field()}'
        forms = []
        up_to = _("Up to {limit} in all.").format(limit=limit)
        if can_reply:
            buttons = f'<button type="submit" name="mode" value="reply">{_("Reply")}</button>'
            who = _("Your reply goes by e-mail to the sender, quoting the message.")
            if can_reply_all:
                buttons += (
                    ' <button type="submit" name="mode" value="reply-all" class="secondary">'
                    f"{_('Reply all')}</button>"
                )
                who += " " + _(
                    "Reply all also sends it to the others the message was sent to; anyone "
                    "outside the organisation gets it as a secure message, like this one."
                )
            kept = text if mode in ("reply", "reply-all") else ""
            forms.append(
                '<form method="post" action="/read/reply" enctype="multipart/form-data" '
                'class="card reply" aria-labelledby="reply-heading">'
                f'<h2 id="reply-heading">{_("Reply")}</h2>{hidden}'
                f'<label for="reply-text">{_("Your reply")}</label>'
                f'<textarea id="reply-text" name="text" rows="6">{_e(kept)}</textarea>'
                f'<label for="reply-files">{_("Attach files")}</label>'
                '<input type="file" id="reply-files" name="files" multiple>'
                f'<p class="note">{up_to} {who}</p>'
                f'<div class="actions">{buttons}</div></form>'
            )
        else:
            forms.append(
                '<div class="card"><p class="note">'
                + _(
                    "The sender of this message is outside the organisation, so you cannot "
                    "reply from here. Please reply from your own e-mail program."
                )
                + "</p></div>"
            )
        opened = " open" if mode == "forward" else ""
        kept = text if mode == "forward" else ""
        only = _("Addresses in the organisation only ({domains}), separated by commas.")
        forms.append(
            f'<details class="card"{opened}><summary>{_("Forward")}</summary>'
            '<form method="post" action="/read/reply" enctype="multipart/form-data" '
            f'class="reply">{hidden}<input type="hidden" name="mode" value="forward">'
            f'<label for="forward-to">{_("Forward to")}</label>'
            f'<input type="text" id="forward-to" name="to" class="address" value="{_e(to)}" '
            'autocomplete="off" required aria-describedby="forward-note">'
            '<p class="note" id="forward-note">'
            f"{only.format(domains=_e(reply.organisation(self.settings)))}</p>"
            f'<label for="forward-text">{_("Your note (optional)")}</label>'
            f'<textarea id="forward-text" name="text" rows="4">{_e(kept)}</textarea>'
            f'<label for="forward-files">{_("Attach files")}</label>'
            '<input type="file" id="forward-files" name="files" multiple>'
            f'<p class="note">{up_to} {_("The message is attached as it came.")}</p>'
            f'<div class="actions"><button type="submit">{_("Forward")}</button></div>'
            "</form></details>"
        )
        return "".join(forms)

    async def _not_sent(
        self,
        request: IRequest,
        session: Session,
        raw: bytes,
        envelope: Envelope,
        form: SubmittedForm,
        problem: str,
        status: int,
    ) -> bytes:
        """The problem, in words, and the forms again with what the reader typed."""
        choices = await self._render(
            session, reply.reply_choices, raw, envelope.recipient, self.settings
        )
        request.setResponseCode(status)
        _ = self._t(request)
        mode = form.one("mode")
        again = ""
        if form.uploads("files"):
            again = f"<p>{_('Files you attached have to be chosen again.')}</p>"
        body = (
            f'<div class="card"><p class="error" role="alert">{_e(problem)}</p>{again}'
            f'<p><a href="/read">{_("Back to the message")}</a></p></div>'
            + self._reply_forms(
                _, session.csrf, choices, mode, form.one("text"), form.one("to", 2000)
            )
        )
        return self._page(request, _("Not sent"), body)

    def _headers(self, request: IRequest, csp: bytes = PAGE_CSP) -> None:
        set_security_headers(request, csp)

    def _page(self, request: IRequest, title: str, body: str, heading: bool = True) -> bytes:
        return render_page(request, self.settings, title, body, heading)

    def _download(
        self,
        request: IRequest,
        data: bytes,
        filename: str,
        content_type: bytes = b"application/octet-stream",
    ) -> bytes:
        self._headers(request, csp=DOWNLOAD_CSP)
        request.setHeader(b"Content-Type", content_type)
        request.setHeader(
            b"Content-Disposition", render.content_disposition(filename).encode("ascii")
        )
        return data

    def _set_cookie(
        self, request: IRequest, name: bytes, value: str, max_age: int | None = None
    ) -> None:
        set_cookie(request, name, value, max_age)

    def _error(self, request: IRequest, code: int, name: str, **context: Any) -> bytes:
        return error_page(request, self.settings, code, name, **context)

    def _not_found(self, request: IRequest) -> bytes:
        return self._error(request, 404, "message_not_found")

    def _gone(self, request: IRequest) -> bytes:
        return self._error(request, 410, "message_deleted")

    def _signed_out(self, request: IRequest) -> bytes:
        return self._error(request, 401, "signed_out")

    def _bad_form(self, request: IRequest) -> bytes:
        return self._error(request, 403, "bad_form")


# --- shared by the portal's apps (see also web/compose.py) -------------------------------


def form_id_field() -> str:
    """
    A hidden field naming this rendering of a form. The one message the form sends gets an
    id derived from it (L{once_id}), so that posting the form twice sends it once.
    """
    return f'<input type="hidden" name="form" value="{secrets.token_urlsafe(18)}">'


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


def same_secret(given: str, expected: str) -> bool:
    """A constant-time comparison that also takes what a hostile form sends (non-ASCII)."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def escape(text: str) -> str:
    return html.escape(text, quote=True)


_e = escape


def _details(rows: list[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows) + "</dl>"


def cookie_value(request: IRequest, name: bytes) -> str:
    """A cookie's value when it looks like one of ours, else \"\"."""
    value = request.getCookie(name)
    if not value or not re.fullmatch(rb"[A-Za-z0-9_-]{16,200}", value):
        return ""
    return value.decode("ascii")


def form_arg(request: IRequest, name: bytes, limit: int = 200) -> str:
    """A form or query field, decoded, at most C{limit} characters."""
    values = (request.args or {}).get(name) or [b""]
    return values[0].decode("utf-8", "replace")[:limit]


def _reading(
    raw: bytes, reader: str, settings: Settings
) -> tuple[render.ReadableMessage, tuple[bool, bool]]:
    """What the reading page shows of a letter, and the reply choices: one thread's work."""
    message = render.read_message(raw, cid_url=lambda cid: "/read/cid/" + _url_part(cid))
    return message, reply.reply_choices(raw, reader, settings)


def _url_part(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    if n < 1024 * 1024:
        return f"{n / 1024:.0f} KB"
    return f"{n / (1024 * 1024):.1f} MB"


def access_log_line(timestamp: str, request: Any) -> str:
    """An access log line with link tokens replaced, so secrets never reach the logs."""
    path = request.uri.decode("ascii", "replace").split("?", 1)[0]
    path = re.sub(r"^/m/[^/]+", "/m/<token>", path)
    ip = request.getClientAddress()
    host = getattr(ip, "host", "-")
    method = request.method.decode("ascii", "replace")
    return f'{host} - - {timestamp} "{method} {path}" {request.code} {request.sentLength or "-"}'


# --- submitted forms ----------------------------------------------------------------------

MAX_FORM_PARTS = 500


class FormError(ValueError):
    """The body is not a form this portal could have sent."""


@dataclass
class SubmittedForm:
    """A POSTed form: its text fields and, for multipart/form-data, its files."""

    fields: dict[str, list[str]] = field(default_factory=dict)
    files: list[tuple[str, reply.Upload]] = field(default_factory=list)

    def one(self, name: str, limit: int | None = None) -> str:
        """The field's first value ("" when missing), at most C{limit} characters."""
        values = self.fields.get(name) or [""]
        return values[0][:limit] if limit is not None else values[0]

    def uploads(self, name: str) -> list[reply.Upload]:
        return [upload for field_name, upload in self.files if field_name == name]


def submitted_form(request: IRequest) -> SubmittedForm:
    """
    The request's form, read from its body: URL-encoded, or multipart/form-data with each
    file's name and type (which twisted.web's own parsing drops).

    @raise FormError: the body is neither, or is not well-formed.
    """
    content_type = request.getHeader(b"content-type") or b""
    content = request.content
    content.seek(0)
    body = content.read()
    content.seek(0)
    media = content_type.split(b";", 1)[0].strip().lower()
    if media == b"application/x-www-form-urlencoded":
        form = SubmittedForm()
        for key, values in parse_qs(body, keep_blank_values=True).items():
            form.fields[_text(key)] = [_text(v) for v in values]
        return form
    if media == b"multipart/form-data":
        return parse_multipart(body, content_type)
    raise FormError("not a form")


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
            form.files.append((name, reply.Upload(filename, content_type_of, data)))
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


# --- the request: bodies in memory, and a limit ---------------------------------------------


class BoundedRequest(Request):
    """
    A request whose body is kept in memory and refused (413) over C{max_upload_size}.

    twisted.web writes a body of 100 KB or more to a temporary file, and a reply's
    attachments are plaintext: none may reach the disk. A body announced (Content-Length)
    or found (chunked) to be over the limit is answered at once with 413 and dropped;
    what the client still sends of it is read and discarded for a while, so that the
    browser sees the answer rather than a reset connection, and then the connection is
    closed. Form bodies are parsed by the page that takes them: URL-encoded ones into
    C{args} here, as twisted.web would, multipart ones by L{submitted_form}.
    """

    def __init__(self, channel: HTTPChannel, settings: Settings) -> None:
        super().__init__(channel, parsePOSTFormSubmission=False)
        self.settings = settings
        self.max_body = settings.portal.max_upload_size
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
        _ = translation(self, self.settings)
        larger = _(
            "What you sent is larger than {limit}, the most that can be sent at once. "
            "Please go back and attach fewer or smaller files."
        )
        page = render_page(
            self,
            self.settings,
            _("Too large"),
            '<div class="card"><p class="error" role="alert">'
            f"{larger.format(limit=_size(self.max_body))}</p></div>",
        )
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

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __call__(self, channel: HTTPChannel) -> BoundedRequest:
        return BoundedRequest(channel, self.settings)


def make_site(portal: Portal) -> Site:
    site = Site(
        portal.app.resource(),
        requestFactory=BoundedRequestFactory(portal.settings),
        logFormatter=access_log_line,
    )
    site.displayTracebacks = False
    return site
