"""
The words of the registered-letter PIN challenge: the SMS text in the reader's language
(its rules in L{secmail.sms.pin_text}, translated here by the portal's catalogues), the
PIN page's forms, and the notices a sender gets when a letter locks or its number is
said to be wrong. The portal's routes (web/portal.py) decide; this module only writes.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime

from secmail.config import Settings
from secmail.masking import mask_number
from secmail.notify import Notification, build_sender_notice
from secmail.sms import pin_text
from secmail.store.messages import Envelope
from secmail.store.portal import CODE_LIFETIME, LOCK_AFTER, PIN_LOCK_AFTER
from web.i18n import Translate, translator


def pin_sms_text(settings: Settings, language: str, pin: str) -> str:
    """The SMS that carries C{pin}, in C{language}, translated by the portal's catalogues."""
    return pin_text.pin_sms_text(
        settings.sms, settings.portal.brand_name, language, translator(language), pin
    )


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def pin_forms(
    _: Translate,
    *,
    token: str,
    csrf: str,
    number: str,
    wrong_number_told: bool,
    error: str | None,
    note: str | None,
) -> str:
    """The PIN page's body: type the PIN, order a new one, say the number is wrong."""
    token = _e(token)
    problem = f'<p class="error" role="alert">{_e(error)}</p>' if error else ""
    said = f'<p role="status">{_e(note)}</p>' if note else ""
    where = _("We send a 6-digit PIN by text message to {number}. It works for {minutes} minutes.")
    hidden = f'<input type="hidden" name="csrf" value="{csrf}">'
    verify = (
        f'<form method="post" action="/m/{token}/pin/verify" class="card">{problem}{said}'
        f"<p>{_e(where.format(number=mask_number(number), minutes=CODE_LIFETIME // 60))}</p>"
        f"{hidden}"
        f'<label for="pin">{_("PIN")}</label>'
        '<input type="text" id="pin" name="pin" inputmode="numeric" '
        'autocomplete="one-time-code" pattern="[0-9]{6}" maxlength="6" required autofocus>'
        f' <button type="submit">{_("Open message")}</button></form>'
    )
    order = (
        f'<form method="post" action="/m/{token}/pin" class="card">'
        f"<p>{_('No text message? You can order a new PIN once a minute.')}</p>{hidden}"
        f'<button type="submit" class="secondary">{_("Order PIN code")}</button></form>'
    )
    if wrong_number_told:
        told = _("You have told the sender that this number is not yours.")
        wrong = f'<div class="card"><p>{told}</p></div>'
    else:
        wrong = (
            f'<form method="post" action="/m/{token}/wrong-number" class="card">'
            f"<p>{_('Not your number? Tell the sender, who can send the message again.')}</p>"
            f'{hidden}<button type="submit" class="secondary">{_("Wrong number?")}</button></form>'
        )
    return verify + order + wrong


def _when(envelope: Envelope) -> str:
    return datetime.fromtimestamp(envelope.created, UTC).strftime("%Y-%m-%d %H:%M UTC")


def lock_notice(settings: Settings, envelope: Envelope, now: datetime) -> Notification | None:
    """
    The mail telling the sender that their letter locked (after wrong PINs, or for a
    letter without PIN after wrong e-mail codes); None for a sender of C{<>}.
    """
    if not envelope.sender:
        return None
    if envelope.level == "letter":
        return build_sender_notice(
            settings=settings,
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
            message_id_domain=settings.gateway.hostname,
            date=now,
        )
    return build_sender_notice(
        settings=settings,
        sender=envelope.sender,
        subject="Secure message locked after too many wrong PINs",
        paragraphs=[
            f"Your registered letter to {envelope.recipient}, sent {_when(envelope)}, has "
            f"been locked: a wrong PIN was typed {PIN_LOCK_AFTER} times on the page where "
            "it is read. Nobody can open it any more.",
            f"If {envelope.recipient} tried to read it, please check the phone number and "
            "send the message again. If not, someone else may have tried to open it.",
        ],
        message_id_domain=settings.gateway.hostname,
        date=now,
    )


def wrong_number_notice(
    settings: Settings, envelope: Envelope, number: str, now: datetime
) -> Notification | None:
    """The mail telling the sender that the letter's number is said to be wrong."""
    if not envelope.sender:
        return None
    local, _at, domain = envelope.recipient.rpartition("@")
    example = f"{local}@{domain}.0401234567{settings.secure.extension}"
    return build_sender_notice(
        settings=settings,
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
        message_id_domain=settings.gateway.hostname,
        date=now,
    )
