# -*- test-case-name: tests.test_message_log -*-
"""
One log line per event of a message's life, tied together by the message's short id.

Like Postfix's queue id: every line about a message starts with L{short_id} of it, so
C{grep 3f9a2c81d0} in the log gives the message's whole life: accepted, the notifications
queued for it, each recipient delivered, deferred or bounced, opened in the portal, its PIN
sent. A mail the gateway writes about a message (a notification, a bounce, a code) is a
message of its own: its lines start with the id of the message it is about and name its own
id after its kind. A refused transaction has no message yet: its line starts with C{refused}.

Each of these events is also counted (L{secmail.monitoring.counting.count}: the Prometheus
metrics and the day's statistics), here, so the log and the figures never disagree.

Every line is a Twisted log event with named fields (C{event}: accepted, refused,
notification queued, sent, deferred, bounced, opened, pin sent, locked; C{message_id} always,
C{envelope_id} and C{peer} where there is one), so a JSON observer gets stable names. The
lines carry addresses, sizes, hosts and the peers' replies; never subjects, bodies, tokens,
links, PINs, codes or whole phone numbers (L{secmail.masking}).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from twisted.logger import Logger

from secmail.masking import mask_number, mask_sms_recipients
from secmail.monitoring.counting import count
from secmail.store.rows import NewMessage, short_id

log = Logger(namespace="secmail.messages")
"""One namespace for all of them, so an observer can pick the message lines out."""

_END_OF_DATA = re.compile(r" \(in reply to end of data\)$")

#: The queue rows whose recipients are phone numbers (C{358401234567@sms.example}).
_SMS_KINDS = ("sms",)


_HEX = re.compile(r"[0-9a-f]+")


def line_id(message_id: str) -> str:
    """
    What a line about C{message_id} starts with: its L{short_id}; a trail that is not a
    message (C{compose:eve@example.org}, C{sms-by-mail}, for the mails written for it)
    whole.
    """
    return short_id(message_id) if _HEX.fullmatch(message_id) else message_id


def recipient_list(recipients: Sequence[tuple[str, str]]) -> str:
    """C{<bob@partner.example> (letter), <carol@corp.example> (relay)} from (address, level)."""
    return ", ".join(f"<{address}> ({level})" for address, level in recipients)


def accepted(
    message_id: str,
    *,
    peer: str,
    sender: str,
    size: int,
    recipients: Sequence[tuple[str, str]],
    via: str = "",
) -> None:
    """
    A message was taken in (over SMTP, from the portal or D-Compose): the client, the
    envelope sender, its size and each recipient with its level (C{relay} for mail sent on
    in the clear, C{letter}, C{registered}). C{via} names a way in other than SMTP.
    """
    if not via:
        for level in sorted({level for _, level in recipients}):
            count("smtp_messages", level)
    log.info(
        "{id}: accepted from {peer}{via} sender=<{sender}> size={size} recipients={recipients}",
        event="accepted",
        id=short_id(message_id),
        message_id=short_id(message_id),
        peer=peer,
        via=f" via {via}" if via else "",
        sender=sender,
        size=size,
        recipients=recipient_list(recipients),
    )


def accepted_messages(messages: Sequence[NewMessage], *, peer: str, sender: str, via: str) -> None:
    """
    The lines for mail written in the portal or D-Compose, just committed: C{accepted} for
    each message the visitor wrote (its relayed recipients and its letters' recipients with
    their levels), then its notifications.
    """
    for message in messages:
        if any(d.kind == "notification" for d in message.deliveries):
            continue
        count("compose_messages" if via == "D-Compose" else "portal_replies")
        recipients = [(e.recipient, e.level) for e in message.envelopes]
        recipients += [(r, "relay") for d in message.deliveries for r in d.recipients]
        accepted(
            message.content.message_id,
            peer=peer,
            sender=sender,
            size=message.content.size,
            recipients=recipients,
            via=via,
        )
    notifications_queued(messages)


#: The commands a refusal is counted by (never their arguments: addresses are no label).
_VERBS = {"MAIL": "mail", "RCPT": "rcpt", "DATA": "data"}


def refused_verb(command: str) -> str:
    """C{rcpt} for C{RCPT TO:<bob@...>}; C{end_of_data} for the end of DATA."""
    words = command.split(None, 1)
    return _VERBS.get(words[0].upper(), "end_of_data") if words else "end_of_data"


def refused(*, peer: str, command: str, code: int, reason: str, sender: str | None = None) -> None:
    """
    An SMTP command of a transaction (MAIL, RCPT, DATA, the end of DATA) was refused;
    C{sender} is the transaction's, once MAIL was accepted (None before).
    """
    count("smtp_refused", f"{refused_verb(command)}/{code}")
    log.info(
        "refused: {command} from {peer}{sender_text}: {code} {reason}",
        event="refused",
        message_id="",
        peer=peer,
        command=command,
        sender=sender if sender is not None else "",
        sender_text=f" sender=<{sender}>" if sender is not None else "",
        code=code,
        reason=reason,
    )


def notifications_queued(messages: Sequence[NewMessage]) -> None:
    """A line for each notification among C{messages}, just committed."""
    for message in messages:
        mail_id = message.content.message_id
        for delivery in message.deliveries:
            if delivery.kind != "notification":
                continue
            about = delivery.about or mail_id
            for recipient in delivery.recipients:
                log.info(
                    "{id}: notification {mail_id} queued to=<{to}>",
                    event="notification queued",
                    id=line_id(about),
                    message_id=line_id(about),
                    mail_id=short_id(mail_id),
                    to=recipient,
                )


def delivery_status(
    *,
    message_id: str,
    about: str,
    kind: str,
    recipient: str,
    relay: str,
    delay: float,
    status: str,
    reply: str,
) -> None:
    """
    What became of one recipient of a queue row: C{sent}, C{deferred} or C{bounced}, the
    host that answered (C{none} when none did), seconds since the message came in and the
    peer's reply (or why there was none).
    """
    count("deliveries", kind, status)
    about = about or message_id
    if status == "sent":
        reply = _END_OF_DATA.sub("", reply)  # what else would a 250 be in reply to
    own = f"{kind} {short_id(message_id)} " if about != message_id else ""
    shown = recipient
    if kind in _SMS_KINDS:  # the number is the address, and the peer's reply may echo it
        masked, reply = mask_sms_recipients([recipient], reply)
        shown = masked[0]
    log.info(
        "{id}: {own}to=<{to}> relay={relay} delay={delay} status={status} ({reply})",
        event=status,
        id=line_id(about),
        message_id=line_id(about),
        mail_id=short_id(message_id),
        own=own,
        to=shown,
        relay=relay,
        peer=relay,
        delay=f"{round(delay, 1):g}s",
        status=status,
        reply=reply,
    )


def split_reply(text: str) -> tuple[str, str]:
    """
    The host and the reply in a delivery text such as C{"mx.example[192.0.2.1]:25 said:
    550 5.1.1 no such user (in reply to RCPT TO)"}; C{("none", text)} when no host answered
    (the connection failed, say).
    """
    host, said, reply = text.partition(" said: ")
    if said and host and " " not in host:
        return host, reply
    return "none", text


def opened(message_id: str, *, envelope_id: str, recipient: str, peer: str) -> None:
    """A recipient read the letter in the portal."""
    count("portal_reads")
    log.info(
        "{id}: opened to=<{to}> from {peer}",
        event="opened",
        id=short_id(message_id),
        message_id=short_id(message_id),
        envelope_id=envelope_id,
        to=recipient,
        peer=peer,
    )


def pin_sent(
    message_id: str, *, envelope_id: str | None, recipient: str, number: str, via: str
) -> None:
    """A backend took the SMS with a registered letter's PIN (the number masked)."""
    count("sms", via, "sent")
    log.info(
        "{id}: PIN sent to=<{to}> phone={phone} via {via}",
        event="pin sent",
        id=short_id(message_id),
        message_id=short_id(message_id),
        envelope_id=envelope_id or "",
        to=recipient,
        phone=mask_number(number),
        via=via,
    )


def letter_locked(message_id: str, *, envelope_id: str, recipient: str, reason: str) -> None:
    """A letter locked for its recipient (C{reason}: "after too many wrong PINs", ...)."""
    log.warn(
        "{id}: locked {reason} to=<{to}>",
        event="locked",
        id=short_id(message_id),
        message_id=short_id(message_id),
        envelope_id=envelope_id,
        reason=reason,
        to=recipient,
    )
