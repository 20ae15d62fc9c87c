"""
The words of the registered-letter PIN challenge: the SMS text in the reader's language
(its rules in L{secmail.sms.pin_text}, translated here by the portal's catalogues) and the
notices a sender gets when a letter locks or its number is said to be wrong. Below them,
the PIN page's routes (L{PinRoutes}, part of the portal), whose pages are the templates
C{pin.html}, C{wrong_number_confirm.html} and C{wrong_number.html}.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from twisted.logger import Logger
from twisted.web.iweb import IRequest

from secmail import message_log
from secmail.config import Branding, GatewayIdentity, SmsSettings
from secmail.masking import mask_number
from secmail.monitoring import counting
from secmail.notify import Notification, sender_notice
from secmail.sms import pin_text
from secmail.store.messages import Envelope
from secmail.store.portal import (
    CODE_LIFETIME,
    CODES_PER_DAY,
    LOCK_AFTER,
    PIN_LOCK_AFTER,
    PinOrder,
    PinState,
)
from secmail.web import errors, i18n
from secmail.web.access import PortalBase, letter_link
from secmail.web.forms import form_arg
from secmail.web.i18n import translator


def pin_sms_text(sms: SmsSettings, branding: Branding, language: str, pin: str) -> str:
    """The SMS that carries C{pin}, in C{language}, translated by the portal's catalogues."""
    return pin_text.pin_sms_text(sms, branding.name, language, translator(language), pin)


def _when(envelope: Envelope) -> str:
    return datetime.fromtimestamp(envelope.created, UTC).strftime("%Y-%m-%d %H:%M UTC")


def lock_notice(
    identity: GatewayIdentity, envelope: Envelope, now: datetime
) -> Notification | None:
    """
    The mail telling the sender that their letter locked (after wrong PINs, or for a
    letter without PIN after wrong e-mail codes); None for a sender of C{<>}.
    """
    if not envelope.sender:
        return None
    if envelope.level == "letter":
        return sender_notice(
            identity=identity,
            sender=envelope.sender,
            subject="Secure message locked after too many wrong codes",
            paragraphs=[
                f"Your secure message to {envelope.recipient}, sent {_when(envelope)}, can "
                f"no longer be opened with an e-mail code: a wrong code was typed "
                f"{LOCK_AFTER} times on the page where it is read. The browser in which it "
                "was first opened can still open it; no other can.",
                f"If {envelope.recipient} cannot read it, please send the message again. "
                "If they did not try to open it in another browser, someone else who has "
                "the link may have tried to open it.",
            ],
            message_id_domain=identity.hostname,
            date=now,
        )
    return sender_notice(
        identity=identity,
        sender=envelope.sender,
        subject="Secure message locked after too many wrong PINs",
        paragraphs=[
            f"Your registered letter to {envelope.recipient}, sent {_when(envelope)}, has "
            f"been locked: a wrong PIN was typed {PIN_LOCK_AFTER} times on the page where "
            "it is read. Nobody can open it any more.",
            f"If {envelope.recipient} tried to read it, please check the phone number and "
            "send the message again. If not, someone else may have tried to open it.",
        ],
        message_id_domain=identity.hostname,
        date=now,
    )


def wrong_number_notice(
    identity: GatewayIdentity, extension: str, envelope: Envelope, number: str, now: datetime
) -> Notification | None:
    """
    The mail telling the sender that the letter's number is said to be wrong; its example
    address is marked with C{extension} (secure.extension).
    """
    if not envelope.sender:
        return None
    local, _at, domain = envelope.recipient.rpartition("@")
    example = f"{local}@{domain}.0401234567{extension}"
    return sender_notice(
        identity=identity,
        sender=envelope.sender,
        subject="Secure message: the recipient says the phone number is wrong",
        paragraphs=[
            f"The recipient of your registered letter to {envelope.recipient}, sent "
            f"{_when(envelope)}, says that the phone number its PIN goes to "
            f"({mask_number(number)}) is not theirs.",
            "Please send the message again with the right number in the address, for "
            f"example {example}, or ask your administrator to correct the number in the "
            "phone directory (secmail phones) if it comes from there.",
        ],
        message_id_domain=identity.hostname,
        date=now,
    )


# --- the PIN page's routes ----------------------------------------------------------------

log = Logger()
app = PortalBase.app


class PinRoutes(PortalBase):
    """C{/m/<token>/pin...}: a registered letter opens with a PIN sent by text message."""

    @app.route("/m/<token>/pin", methods=["POST"])
    @letter_link(level="registered")
    async def order_pin(self, request: IRequest, token: str, envelope: Envelope) -> bytes:
        """Order a new PIN (at most one a minute, CODES_PER_HOUR an hour)."""
        return await self._pin_page(request, token, envelope, order=True)

    @app.route("/m/<token>/pin/verify", methods=["POST"])
    @letter_link(level="registered")
    async def verify_pin(self, request: IRequest, token: str, envelope: Envelope) -> bytes:
        """The PIN from the text message signs this browser in."""
        _ = self._t(request)
        typed = form_arg(request, b"pin")
        if not re.fullmatch(r"\s*[0-9]{6}\s*", typed):
            return await self._pin_page(request, token, envelope, error=_("The PIN has 6 digits."))
        notice = lock_notice(self.settings.identity, envelope, self._date())
        state = await self.sessions.check_pin(
            envelope.id, typed, self.now(), self._gateway_mail(envelope, notice)
        )
        if state == PinState.OK:
            return await self._sign_in(request, envelope, "SMS PIN")
        if state in (PinState.WRONG, PinState.LOCKED_NOW):
            counting.count("portal_code_failures", "pin")
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
            message_log.letter_locked(
                envelope.message_id,
                envelope_id=envelope.id,
                recipient=envelope.recipient,
                reason="after too many wrong PINs",
            )
            self.on_commit()
        return self._locked(request, envelope)

    @app.route("/m/<token>/wrong-number", methods=["POST"])
    @letter_link(level="registered")
    async def wrong_number(self, request: IRequest, token: str, envelope: Envelope) -> bytes:
        """
        The reader says the number is not theirs. The first form (no C{answer}) asks them
        to confirm; C{answer=yes} tells the sender, once; C{answer=no} goes back to the PIN.
        """
        if envelope.phone is None:
            return self._bad_form(request)
        answer = form_arg(request, b"answer")
        if answer == "no":
            return await self._pin_page(request, token, envelope)
        if answer != "yes" and envelope.wrong_number is None:
            return self._template(
                request,
                "wrong_number_confirm.html",
                token=token,
                csrf=self._form_csrf(token),
                number=mask_number(envelope.phone),
            )
        notice = wrong_number_notice(
            self.settings.identity,
            self.settings.secure.extension,
            envelope,
            envelope.phone,
            self._date(),
        )
        if await self.sessions.report_wrong_number(
            envelope.id, self.now(), self._gateway_mail(envelope, notice)
        ):
            self.on_commit()
        return self._template(request, "wrong_number.html", sender=envelope.sender)

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
            return errors.show(request, self.frame, errors.PIN_UNAVAILABLE)
        note = None
        if order:
            language = i18n.request_language(request, self.settings.portal.languages)
            state = await self.sessions.new_pin(
                envelope.id,
                number,
                lambda code: pin_sms_text(
                    self.settings.sms, self.settings.branding, language, code
                ),
                self.sms.sealer,
                self.now(),
            )
            if state == PinOrder.SENT:
                counting.count("portal_codes", "pin")
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
        return self._template(
            request,
            "pin.html",
            token=token,
            csrf=csrf,
            number=mask_number(number),
            minutes=CODE_LIFETIME // 60,
            wrong_number_told=envelope.wrong_number is not None,
            error=error,
            note=note,
        )
