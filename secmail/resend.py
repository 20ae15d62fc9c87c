# -*- test-case-name: tests.test_resend -*-
"""
Resend a letter's notification ("I never got the mail", "the link went to an old phone"): each
secure recipient (or the one named) gets a new notification with a new link, built as the
intake builds it (L{secmail.letters.notification_message}, the Subject and From name read
from the stored message's header), and the old link stops working. The rows change in one
transaction with the admin's audit row (L{secmail.store.resend}); then the queue is woken.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from secmail import message_log
from secmail.address import Level, Recipient
from secmail.config import Settings
from secmail.crypto import MasterKey
from secmail.letters import notification_message
from secmail.policy import strip_subject_keyword
from secmail.smtp.delivery import subject_and_sender_name
from secmail.store.audit import AuditRow
from secmail.store.messages import MessageStore, hash_token
from secmail.store.resend import FreshLink, ResendRows
from secmail.store.trace import LetterConflict, MessageTrace

#: How much of the stored message is read for its Subject and From: the header block's limit.
HEADER_LIMIT = 102_400


class LetterResend:
    """
    C{settings} gives the settings in use now (the live cluster settings); C{on_commit} wakes
    the queue after the new notifications are stored.
    """

    def __init__(
        self,
        store: MessageStore,
        master: MasterKey,
        trace: MessageTrace,
        settings: Callable[[], Settings],
        clock: Any,
        on_commit: Callable[[], None] = lambda: None,
        new_token: Callable[[], str] = lambda: secrets.token_urlsafe(32),
    ) -> None:
        self.store = store
        self.rows = ResendRows(store.db)
        self.master = master
        self.trace = trace
        self.settings = settings
        self.clock = clock
        self.on_commit = on_commit
        self.new_token = new_token

    async def resend(
        self, message_id: str, recipient: str | None = None, *, audit: AuditRow
    ) -> list[str]:
        """
        New notifications for the letter C{message_id} (a full, short or envelope id names
        it): to C{recipient} (its real or marked address) or to every secure recipient not
        withdrawn. Returns the envelope ids.

        @raise UnknownMessage: no such message (404).
        @raise TraceError: a malformed id, or C{recipient} is none of its secure ones (400).
        @raise LetterConflict: withdrawn, locked, or its content is gone (409).
        """
        settings = self.settings()
        keys = None if recipient is None else self.trace.recipient_keys(recipient)
        letters = await self.rows.letters(message_id, keys, recipient)
        found = letters[0].message_id
        subject, display = await self._headers(found)
        if settings.secure.mode == "all" and subject is not None:
            subject = strip_subject_keyword(subject, settings.secure.subject_keyword)
        now = int(self.clock.seconds())
        date = datetime.fromtimestamp(now, UTC)
        texts = settings.notification_texts
        links = []
        for letter in letters:
            token = self.new_token()
            links.append(
                FreshLink(
                    letter.envelope_id,
                    hash_token(token),
                    notification_message(
                        texts=texts,
                        routes=settings.routes,
                        master=self.master,
                        message_id=found,
                        envelope_id=letter.envelope_id,
                        sender=letter.sender,
                        sender_display=display,
                        subject=subject,
                        recipient=Recipient(
                            letter.recipient, Level(letter.level), letter.phone, letter.original
                        ),
                        token=token,
                        date=date,
                        arrived=datetime.fromtimestamp(letter.created, UTC),
                    ),
                )
            )
        done = await self.rows.resend(found, links, now=now, audit=audit)
        message_log.notifications_queued([link.notification for link in links])
        self.on_commit()
        return done

    async def _headers(self, message_id: str) -> tuple[str | None, str | None]:
        """The letter's Subject and From display name, read as the intake read them."""
        try:
            head = await self.store.read_all(message_id, HEADER_LIMIT)
        except LookupError:
            raise LetterConflict(
                f"message {message_id[:10]}: its content is deleted, so there is nothing to resend"
            ) from None
        block = head.split(b"\r\n\r\n", 1)[0]
        return subject_and_sender_name(block)
