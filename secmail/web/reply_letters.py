# -*- test-case-name: tests.test_reply -*-
"""
A reply (L{secmail.web.reply.build_reply}) as messages to commit: the mail to the organisation,
sealed and routed, and for outsiders a secure letter with its envelopes and
notifications, stored and notified as the intake stores and notifies one. This seals and
draws link tokens, which is all it needs of the world.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from datetime import datetime

from secmail.address import Recipient
from secmail.config import NotificationTexts, RouteSettings
from secmail.crypto import MasterKey
from secmail.letters import letter_events, new_envelopes
from secmail.store.messages import NewDelivery, NewMessage, new_id
from secmail.store.spool import SealedBytes
from secmail.web.reply import ReplyMail


def reply_messages(
    mail: ReplyMail,
    *,
    texts: NotificationTexts,
    routes: RouteSettings,
    master: MasterKey,
    reader: str,
    about: str,
    date: datetime,
    new_token: Callable[[], str] = lambda: secrets.token_urlsafe(32),
    message_id: str | None = None,
) -> list[NewMessage]:
    """
    The messages to commit for a reply or forward: the mail to the organisation's
    addresses (one queue row per domain, on that domain's route, recorded on the original
    message C{about}), and for outsiders a secure letter with its notifications. The
    first has the id C{message_id} (default: a new one) and a C{written} event.
    """
    kind = "forward" if mail.mode == "forward" else "reply"
    bounce = texts.identity.bounce_address
    by_domain: dict[str, list[str]] = {}
    for address in mail.audience.internal:
        by_domain.setdefault(address.rpartition("@")[2].lower(), []).append(address)
    messages = [
        NewMessage(
            content=SealedBytes(master, message_id or new_id(), mail.content),
            kind=kind,
            sender=bounce,
            events=[(None, "written", f"{kind} in the portal by {reader}")],
            deliveries=[
                NewDelivery(
                    kind=kind,
                    sender=bounce,
                    recipients=tuple(recipients),
                    route=str(routes.for_domain(domain)),
                    domain=domain,
                    # A failure report would quote the headers in the clear: to nobody.
                    notify="",
                    about=about,
                )
                for domain, recipients in by_domain.items()
            ],
        )
    ]
    if mail.audience.secure:
        messages += secure_letter(
            texts=texts,
            routes=routes,
            master=master,
            content=mail.content,
            sender=reader,
            sender_display=mail.reader_name or None,
            subject=mail.subject,
            recipients=mail.audience.secure,
            date=date,
            received=f"reply from <{reader}> in the portal, {len(mail.content)} bytes",
            new_token=new_token,
        )
    return messages


def secure_letter(
    *,
    texts: NotificationTexts,
    routes: RouteSettings,
    master: MasterKey,
    content: bytes,
    sender: str,
    sender_display: str | None,
    subject: str | None,
    recipients: Sequence[Recipient],
    date: datetime,
    received: str,
    new_token: Callable[[], str] = lambda: secrets.token_urlsafe(32),
) -> list[NewMessage]:
    """
    A secure letter made by the gateway itself, as the intake makes one for marked
    recipients: the message with one envelope (a fresh link token) per recipient, and a
    notification for each, sent from its envelope's VERP address on the recipient's route.
    """
    message_id = new_id()
    envelopes, notifications = new_envelopes(
        texts=texts,
        routes=routes,
        master=master,
        message_id=message_id,
        sender=sender,
        sender_display=sender_display,
        subject=subject,
        recipients=recipients,
        date=date,
        new_token=new_token,
    )
    events = letter_events(received, envelopes)
    letter = NewMessage(
        content=SealedBytes(master, message_id, content),
        kind="mail",
        sender=sender,
        envelopes=envelopes,
        events=events,
    )
    return [letter, *notifications]
