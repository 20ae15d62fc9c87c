# -*- test-case-name: tests.test_compose -*-
"""
D-Compose's pages (L{secmail.web.compose} has the routes): choosing whom to write to, the code
form, the writing form, the refusals (error templates) and the CSRF token of a form before
sign-in.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any
from urllib.parse import quote

from twisted.web.iweb import IRequest

from secmail.config import Settings
from secmail.notify import clean_text
from secmail.store.compose import CODE_LIFETIME, LOCK_TIME, CodeLimits, CodeRefusal, ComposeSession
from secmail.web.compose_mail import MAX_ADDRESS_CHARS
from secmail.web.forms import cookie_value, escape, form_arg, form_id_field, same_secret, set_cookie
from secmail.web.i18n import Translate
from secmail.web.layout import error_page, render_page, set_security_headers, translation

#: Where the portal mounts this app.
MOUNT = "/compose"
FORM_COOKIE = b"__Host-secmail-compose-form"
#: The form cookie outlives a code (10 minutes) with room to spare.
FORM_COOKIE_AGE = 3600
MAX_SUBJECT_CHARS = 200

_e = escape


def megabytes(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"


class ComposePages:
    """The pages of L{secmail.web.compose.Compose}, which sets these attributes."""

    settings: Settings
    _csrf_key: bytes

    def _t(self, request: IRequest) -> Translate:
        return translation(request, self.settings)

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
        directory = self.settings.portal.compose_directory
        if fixed is None:
            fixed = to not in directory
        if to is None or not fixed:
            options = "".join(
                f'<option value="{_e(a)}"{" selected" if a == to else ""}>{_e(a)}</option>'
                for a in directory
            )
            recipient = (
                f'<label for="to">{_("To")}</label>'
                f'<p><select id="to" name="to" required>{options}</select></p>'
            )
        else:
            recipient = (
                f"<dl><dt>{_('To')}</dt><dd>{_e(to)}</dd></dl>"
                f'<input type="hidden" name="to" value="{_e(to)}">'
            )
        problem = f'<p class="error" role="alert">{_e(error)}</p>' if error else ""
        body = (
            f'<form method="post" action="{MOUNT}/start" class="card">{problem}'
            f'<input type="hidden" name="csrf" value="{self._form_token(request)}">'
            f"{recipient}"
            f'<label for="sender">{_("Your e-mail address")}</label>'
            f'<p><input type="email" id="sender" name="sender" value="{_e(sender)}" '
            f'autocomplete="email" maxlength="{MAX_ADDRESS_CHARS}" required></p>'
            '<p class="note">'
            + _(
                "We will send a code to this address to make sure it is yours. "
                "The reply to your message will come to it."
            )
            + "</p>"
            f'<button type="submit">{_("Send me a code")}</button></form>'
        )
        return self._page(request, _("Write a secure message"), body)

    def _code_page(
        self, request: IRequest, to: str, sender: str, error: str | None, status: int = 200
    ) -> bytes:
        request.setResponseCode(status)
        _ = self._t(request)
        csrf = self._form_token(request)
        hidden = (
            f'<input type="hidden" name="csrf" value="{csrf}">'
            f'<input type="hidden" name="to" value="{_e(to)}">'
            f'<input type="hidden" name="sender" value="{_e(sender)}">'
        )
        problem = f'<p class="error" role="alert">{_e(error)}</p>' if error else ""
        sent_to = _("We sent a 6-digit code to {address}. It works for {minutes} minutes.")
        body = (
            f'<form method="post" action="{MOUNT}/verify" class="card">{problem}'
            f"<p>{sent_to.format(address=_e(sender), minutes=CODE_LIFETIME // 60)}</p>{hidden}"
            f'<label for="code">{_("Code")}</label>'
            '<input type="text" id="code" name="code" inputmode="numeric" '
            'autocomplete="one-time-code" pattern="[0-9]{6}" maxlength="6" required>'
            f' <button type="submit">{_("Continue")}</button></form>'
            f'<form method="post" action="{MOUNT}/start" class="card">{hidden}'
            f"<p>{_('No code? Check the spam folder, or ask for a new one.')}</p>"
            f'<button type="submit" class="secondary">{_("Send a new code")}</button></form>'
        )
        return self._page(request, _("Confirm your e-mail address"), body)

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
        _ = self._t(request)
        problem = f'<p class="error" role="alert">{_e(error)}</p>' if error else ""
        limit = megabytes(self.settings.portal.max_upload_size)
        confirmed = _("{address} (confirmed)").format(address=_e(session.address))
        together = _("Message and attachments together: at most {limit}.").format(limit=limit)
        body = (
            f'<form method="post" action="{MOUNT}/send" enctype="multipart/form-data" '
            f'class="card">{problem}'
            f'<input type="hidden" name="csrf" value="{_e(session.csrf)}">'
            f"{form_id_field()}"
            f'<input type="hidden" name="to" value="{_e(to)}">'
            f"<dl><dt>{_('From')}</dt><dd>{confirmed}</dd>"
            f"<dt>{_('To')}</dt><dd>{_e(to)}</dd></dl>"
            f'<p><label for="subject">{_("Subject")}</label>'
            f'<input type="text" id="subject" name="subject" value="{_e(subject)}" '
            f'maxlength="{MAX_SUBJECT_CHARS}"></p>'
            f'<p><label for="text">{_("Message")}</label>'
            f'<textarea id="text" name="text" rows="12" cols="60">{_e(text)}</textarea></p>'
            f'<p><label for="attachments">{_("Attachments")}</label>'
            '<input type="file" id="attachments" name="attachment" multiple></p>'
            f'<p class="note">{together}</p>'
            f'<button type="submit">{_("Send securely")}</button></form>'
            + self._sign_out_form(_, session)
        )
        return self._page(request, _("Write a secure message"), body)

    def _already_sent(self, request: IRequest, session: ComposeSession) -> bytes:
        _ = self._t(request)
        return self._page(
            request,
            _("Message sent"),
            f'<div class="card"><p>{_("This message has already been sent.")}</p></div>'
            + self._sign_out_form(_, session),
        )

    def _sign_out_form(self, _: Translate, session: ComposeSession) -> str:
        return (
            f'<form method="post" action="{MOUNT}/logout" class="card actions">'
            f'<input type="hidden" name="csrf" value="{_e(session.csrf)}">'
            f'<button type="submit" class="secondary">{_("Sign out")}</button></form>'
        )

    def _see_other(self, request: IRequest, location: str) -> bytes:
        request.setResponseCode(303)
        request.setHeader(b"Location", location.encode("ascii"))
        set_security_headers(request)
        return b""

    def _page(self, request: IRequest, title: str, body: str) -> bytes:
        return render_page(request, self.settings, title, body)

    def _error(self, request: IRequest, code: int, name: str, **context: Any) -> bytes:
        """The error page C{web/templates/errors/<name>.html}; its links start at L{MOUNT}."""
        return error_page(request, self.settings, code, name, mount=MOUNT, **context)

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
