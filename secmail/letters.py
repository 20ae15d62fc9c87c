"""
What makes a secure letter durable: one envelope per secure recipient, each with a
fresh link token (stored only hashed), and a notification for each.

Used by the intake for marked mail and by the portal for replies to outsiders, so
both make exactly the same rows.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from datetime import datetime

from secmail.address import Recipient
from secmail.config import NotificationTexts, RouteSettings
from secmail.crypto import MasterKey
from secmail.notify import Notification, build_notification
from secmail.store.messages import NewDelivery, NewEnvelope, NewMessage, hash_token, new_id
from secmail.store.spool import SealedBytes


def verp_address(bounce_address: str, envelope_id: str) -> str:
    """The envelope sender for one envelope's notification."""
    local, _, domain = bounce_address.rpartition("@")
    return f"{local}+{envelope_id}@{domain}"


def new_envelopes(
    *,
    texts: NotificationTexts,
    routes: RouteSettings,
    master: MasterKey,
    message_id: str,
    sender: str,
    sender_display: str | None,
    subject: str | None,
    recipients: Sequence[Recipient],
    date: datetime,
    new_token: Callable[[], str] = lambda: secrets.token_urlsafe(32),
) -> tuple[list[NewEnvelope], list[NewMessage]]:
    """
    The envelopes of message C{message_id} for C{recipients}, and one notification per
    envelope: sealed, sent from the envelope's VERP address on the recipient's route, with
    failures reported to C{sender} and its events on the letter's audit trail.
    """
    envelopes: list[NewEnvelope] = []
    notifications: list[NewMessage] = []
    for recipient in recipients:
        token = new_token()
        envelope = NewEnvelope(
            recipient=recipient.address,
            original=recipient.original,
            level=recipient.level.value,
            phone=recipient.phone,
            token_hash=hash_token(token),
        )
        envelopes.append(envelope)
        notifications.append(
            notification_message(
                texts=texts,
                routes=routes,
                master=master,
                message_id=message_id,
                envelope_id=envelope.id,
                sender=sender,
                sender_display=sender_display,
                subject=subject,
                recipient=recipient,
                token=token,
                date=date,
            )
        )
    return envelopes, notifications


def notification_message(
    *,
    texts: NotificationTexts,
    routes: RouteSettings,
    master: MasterKey,
    message_id: str,
    envelope_id: str,
    sender: str,
    sender_display: str | None,
    subject: str | None,
    recipient: Recipient,
    token: str,
    date: datetime,
    arrived: datetime | None = None,
) -> NewMessage:
    """
    The notification of envelope C{envelope_id} (of message C{message_id}) with the link for
    C{token}: sealed, sent from the envelope's VERP address on the recipient's route, with
    failures reported to C{sender} and its events on the letter's audit trail. The intake's
    and a resend's (L{secmail.resend}) are made here alike.
    """
    notification = build_notification(
        texts=texts,
        recipient=recipient,
        original_sender=sender,
        original_from_display=sender_display,
        original_subject=subject,
        token=token,
        message_id_domain=texts.identity.hostname,
        date=date,
        arrived=arrived,
    )
    return NewMessage(
        content=SealedBytes(master, new_id(), notification.content),
        kind="notification",
        sender=notification.sender,
        deliveries=[
            NewDelivery(
                kind="notification",
                sender=verp_address(notification.sender, envelope_id),
                recipients=(recipient.address,),
                route=str(routes.for_domain(recipient.domain)),
                domain=recipient.domain,
                notify=sender,
                about=message_id,
            )
        ],
    )


def letter_events(
    received: str, envelopes: Sequence[NewEnvelope]
) -> list[tuple[str | None, str, str]]:
    """The first events of a letter's audit trail."""
    events: list[tuple[str | None, str, str]] = [(None, "received", received)]
    events += [(e.id, "notification queued", f"{e.level} for {e.recipient}") for e in envelopes]
    return events


def code_message(
    routes: RouteSettings, master: MasterKey, mail: Notification, about: str
) -> NewMessage:
    """A code mail (a letter's e-mail code, a D-Compose address code) ready to commit."""
    return routed_mail(
        routes,
        master,
        kind="code",
        sender=mail.sender,
        to=mail.recipient,
        content=mail.content,
        about=about,
    )


def routed_mail(
    routes: RouteSettings,
    master: MasterKey,
    *,
    kind: str,
    sender: str,
    to: str,
    content: bytes,
    about: str,
    notify: str = "",
) -> NewMessage:
    """
    A mail the gateway writes itself (a code, a bounce, a notice, an SMS by e-mail) ready
    to commit: sealed, queued on the route for C{to}, its delivery recorded on the message
    it is C{about}, and a failure reported to C{notify} ('' for nobody).
    """
    domain = to.rpartition("@")[2].lower()
    return NewMessage(
        content=SealedBytes(master, new_id(), content),
        kind=kind,
        sender=sender,
        deliveries=[
            NewDelivery(
                kind=kind,
                sender=sender,
                recipients=(to,),
                route=str(routes.for_domain(domain)),
                domain=domain,
                notify=notify,
                about=about,
            )
        ],
    )
