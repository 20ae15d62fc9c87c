# -*- test-case-name: tests.test_compose -*-
"""
D-Compose's pages (L{secmail.web.compose} has the routes), templates in C{web/templates/compose/}:
choosing whom to write to, the code form, the writing form, the refusals (the
C{errors/compose_*} templates) and the CSRF token of a form before sign-in.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any
from urllib.parse import quote

from twisted.web.iweb import IRequest

from secmail.notify import clean_text
from secmail.store.compose import CODE_LIFETIME, LOCK_TIME, CodeLimits, CodeRefusal, ComposeSession
from secmail.web.access import FollowsSettings
from secmail.web.compose_mail import MAX_ADDRESS_CHARS
from secmail.web.formats import size_text
from secmail.web.forms import cookie_value, form_arg, new_form_id, same_secret, set_cookie
from secmail.web.i18n import Translate, request_language
from secmail.web.layout import (
    error_page,
    set_security_headers,
    template_page,
    translation,
)

#: Where the portal mounts this app.
MOUNT = "/compose"
FORM_COOKIE = b"__Host-secmail-compose-form"
#: The form cookie outlives a code (10 minutes) with room to spare.
FORM_COOKIE_AGE = 3600
MAX_SUBJECT_CHARS = 200


class ComposePages(FollowsSettings):
    """The pages of L{secmail.web.compose.Compose}, which sets these attributes."""

    _csrf_key: bytes

    def _t(self, request: IRequest) -> Translate:
        return translation(request, self.frame.languages)

    def _size(self, request: IRequest, size: int, limit: bool = False) -> str:
        """A size the one way every page writes it (L{secmail.web.formats.size_text})."""
        return size_text(size, request_language(request, self.frame.languages), limit=limit)

    def _code_refusal(
        self, _: Translate, refusal: str | None, sender: str, limits: CodeLimits
    ) -> str:
        """Why no code was sent, in words, and what to do."""
        if refusal == CodeRefusal.LOCKED:
            return _(
                "A wrong code was typed too many times for {address}, so no more codes are "
                "sent to it for {days} days. Its owner has been told by e-mail."
            ).format(address=sender, days=LOCK_TIME // 86400)
        if refusal == CodeRefusal.MAILBOX:
            return _(
                "{count} codes have been sent to {address} in the last 24 hours, "
                "which is as many as we send. Please use the newest code you received, "
                "or try again tomorrow."
            ).format(count=limits.per_mailbox, address=sender)
        if refusal == CodeRefusal.CLIENT:
            return _(
                "Many codes have been asked for from your network in the last hour. "
                "Please use the newest code you received, or try again in an hour."
            )
        return _(
            "This page has sent as many codes as it may for now. Please try again "
            "in an hour, or later today."
        )

    def _form_csrf(self, value: str) -> str:
        return hmac.new(self._csrf_key, b"compose-form:" + value.encode(), "sha256").hexdigest()

    def _form_token(self, request: IRequest) -> str:
        """The CSRF value for a pre-sign-in form; (re)sets the form cookie it belongs to."""
        value = cookie_value(request, FORM_COOKIE) or secrets.token_urlsafe(24)
        set_cookie(request, FORM_COOKIE, value, max_age=FORM_COOKIE_AGE)
        return self._form_csrf(value)

    def _form_csrf_ok(self, request: IRequest) -> bool:
        value = cookie_value(request, FORM_COOKIE)
        if not value:
            return False
        return same_secret(form_arg(request, b"csrf"), self._form_csrf(value))

    def _write_url(self, to: str) -> str:
        return f"{MOUNT}/write?to={quote(to, safe='@')}"

    def _start_page(
        self,
        request: IRequest,
        to: str | None,
        sender: str = "",
        error: str | None = None,
        status: int = 200,
        fixed: bool | None = None,
    ) -> bytes:
        """The first form; C{fixed}: the address is not to be chosen (default: when not listed)."""
        request.setResponseCode(status)
        _ = self._t(request)
        if fixed is None:
            fixed = to not in self.settings.portal.compose_directory
        return self._template(
            request,
            "compose/start.html",
            csrf=self._form_token(request),
            choose=to is None or not fixed,
            directory=self.settings.portal.compose_directory,
            to=to,
            sender=sender,
            error=error,
            max_address_chars=MAX_ADDRESS_CHARS,
        )

    def _code_page(
        self, request: IRequest, to: str, sender: str, error: str | None, status: int = 200
    ) -> bytes:
        request.setResponseCode(status)
        return self._template(
            request,
            "compose/code.html",
            csrf=self._form_token(request),
            to=to,
            sender=sender,
            error=error,
            minutes=CODE_LIFETIME // 60,
        )

    def _write_page(
        self,
        request: IRequest,
        session: ComposeSession,
        to: str,
        subject: str = "",
        text: str = "",
        error: str | None = None,
        status: int = 200,
    ) -> bytes:
        request.setResponseCode(status)
        return self._template(
            request,
            "compose/write.html",
            csrf=session.csrf,
            form_id=new_form_id(),
            address=session.address,
            to=to,
            subject=subject,
            text=text,
            error=error,
            limit=self._size(request, self.settings.portal.max_upload_size, limit=True),
            max_subject_chars=MAX_SUBJECT_CHARS,
        )

    def _already_sent(self, request: IRequest, session: ComposeSession) -> bytes:
        return self._template(request, "compose/sent.html", already=True, csrf=session.csrf)

    def _see_other(self, request: IRequest, location: str) -> bytes:
        request.setResponseCode(303)
        request.setHeader(b"Location", location.encode("ascii"))
        set_security_headers(request)
        return b""

    def _template(self, request: IRequest, name: str, **values: Any) -> bytes:
        """The page C{web/templates/<name>} with C{values}; its links start at L{MOUNT}."""
        return template_page(request, self.frame, name, mount=MOUNT, **values)

    def _error(self, request: IRequest, code: int, name: str, **context: Any) -> bytes:
        """The error page C{web/templates/errors/<name>.html}; its links start at L{MOUNT}."""
        return error_page(request, self.frame, code, name, mount=MOUNT, **context)

    def _no_such_address(self, request: IRequest, address: str = "") -> bytes:
        named = clean_text(address, 100) if address.strip() else ""
        return self._error(request, 404, "compose_refused_address", address=named, refused=False)

    def _refused(self, request: IRequest, address: str = "") -> bytes:
        named = clean_text(address, 100) if address.strip() else ""
        return self._error(request, 400, "compose_refused_address", address=named, refused=True)

    def _signed_out(self, request: IRequest, to: str | None) -> bytes:
        again = f"{MOUNT}/{quote(to, safe='@')}" if to else MOUNT
        return self._error(request, 401, "compose_signed_out", again=again)

    def _bad_form(self, request: IRequest) -> bytes:
        return self._error(request, 403, "compose_bad_form")
