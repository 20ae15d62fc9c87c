# -*- test-case-name: tests.test_portal -*-
"""
The link from the notification: the landing page (which changes nothing: link scanners
fetch every link), "Open" (a POST that swaps the link for a session cookie), and for a
letter first opened in another browser the one-time code by e-mail.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from twisted.web.iweb import IRequest

from secmail import message_log
from secmail.letters import code_message
from secmail.monitoring import counting
from secmail.notify import code_mail
from secmail.store.messages import Envelope, new_id
from secmail.store.portal import CODE_LIFETIME, CODES_PER_DAY, CodeOrder, CodeState
from secmail.web import pin
from secmail.web.access import BROWSER_COOKIE, BROWSER_COOKIE_AGE, letter_link
from secmail.web.formats import timestamp_text
from secmail.web.forms import cookie_value, form_arg, set_cookie
from secmail.web.i18n import N_, request_language
from secmail.web.pin import PinRoutes

app = PinRoutes.app

LEVELS = {
    "letter": N_("Secure letter"),
    "registered": N_("Registered letter (PIN by text message)"),
}


class LandingRoutes(PinRoutes):
    """C{/m/<token>}: the landing page, open, and the e-mail code for another browser."""

    @app.route("/m/<token>", methods=["GET"])
    @letter_link(csrf=False)
    async def landing(self, request: IRequest, token: str, envelope: Envelope) -> bytes:
        """Who sent it and an "Open" button. Changes nothing: link scanners come here first."""
        _ = self._t(request)
        return self._template(
            request,
            "landing.html",
            token=token,
            envelope=envelope,
            csrf=self._form_csrf(token),
            received=timestamp_text(
                envelope.created, request_language(request, self.frame.languages)
            ),
            protection=_(LEVELS.get(envelope.level, envelope.level)),
        )

    @app.route("/m/<token>", methods=["POST"])
    @letter_link()
    async def open(self, request: IRequest, token: str, envelope: Envelope) -> bytes:
        """Swap the link for a session: bind a letter to this browser on its first open."""
        if envelope.level == "registered":
            return await self._pin_page(request, token, envelope, order=True)
        browser = cookie_value(request, BROWSER_COOKIE) or new_id() + new_id()
        set_cookie(request, BROWSER_COOKIE, browser, max_age=BROWSER_COOKIE_AGE)
        if await self.sessions.open_envelope(envelope.id, browser, self.now()):
            return await self._sign_in(request, envelope, "link in this browser")
        if envelope.locked is not None:
            return self._locked(request, envelope)
        return self._code_page(request, token, envelope, None)

    @app.route("/m/<token>/code", methods=["POST"])
    @letter_link(level="letter")
    async def send_code(self, request: IRequest, token: str, envelope: Envelope) -> bytes:
        """Send a one-time code to the recipient's address (to open in another browser)."""
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
        counting.count("portal_codes", "email")
        return self._code_page(request, token, envelope, None, sent=True)

    @app.route("/m/<token>/verify", methods=["POST"])
    @letter_link(level="letter")
    async def verify_code(self, request: IRequest, token: str, envelope: Envelope) -> bytes:
        """The one-time code from the mail signs this browser in."""
        _ = self._t(request)
        code = form_arg(request, b"code")
        if not re.fullmatch(r"\s*[0-9]{6}\s*", code):
            return self._code_page(request, token, envelope, _("The code has 6 digits."), sent=True)
        notice = pin.lock_notice(self.settings.identity, envelope, self._date())
        state = await self.sessions.check_code(
            envelope.id, code, self.now(), self._gateway_mail(envelope, notice)
        )
        if state == CodeState.OK:
            return await self._sign_in(request, envelope, "e-mail code")
        if state in (CodeState.WRONG, CodeState.LOCKED_NOW):
            counting.count("portal_code_failures", "email")
        if state == CodeState.WRONG:
            return self._code_page(
                request, token, envelope, _("That code is not right. Please try again."), sent=True
            )
        if state == CodeState.LOCKED_NOW:
            message_log.letter_locked(
                envelope.message_id,
                envelope_id=envelope.id,
                recipient=envelope.recipient,
                reason="for codes after too many wrong codes",
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

    async def _mail_code(self, envelope: Envelope, code: str) -> None:
        mail = code_mail(
            identity=self.settings.identity,
            recipient=envelope.recipient,
            code=code,
            minutes=CODE_LIFETIME // 60,
            message_id_domain=self.settings.gateway.hostname,
            date=datetime.fromtimestamp(self.clock.seconds(), UTC),
        )
        message = code_message(self.settings.routes, self.store.master, mail, envelope.message_id)
        await self.store.commit([message], self.now())
        self.on_commit()

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
        return self._template(
            request,
            "code.html",
            token=token,
            envelope=envelope,
            csrf=self._form_csrf(token),
            error=error,
            sent=sent,
        )
