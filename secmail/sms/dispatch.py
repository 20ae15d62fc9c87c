"""
Sending one SMS through the configured backends in turn, failing over on any failure.

Every attempt is recorded as an event on the message it is about (C{sms sent} or
C{sms failed}), naming the backend, the masked number and the reference or error.
The SMS text carries a PIN: it is never recorded, logged or put in an error.

A permanent failure of one backend still moves on to the next: a refusal is often about
that backend (no credit, a rejected account, a modem without the network's blessing),
and we cannot tell reliably from a gateway's words that the number itself is wrong. The
one failure that is surely about the number, a number not in international form, is
caught here before any backend is tried, and is permanent.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from email.message import EmailMessage
from email.policy import SMTP
from typing import Protocol

from twisted.internet.defer import CancelledError
from twisted.logger import Logger

from secmail.masking import mask_number
from secmail.monitoring import counting
from secmail.sms.at import ModemError
from secmail.sms.errors import SmsPermanentError, SmsTemporaryError, classify
from secmail.store.rows import short_id

log = Logger()

#: The international form every backend is given: C{+}, country code, number.
_NUMBER = re.compile(r"\+[1-9][0-9]{6,14}")

Record = Callable[[str, str, str], Awaitable[None]]


class SmsBackend(Protocol):
    """One way of sending an SMS: a modem link, an HTTP gateway, an e-mail-to-SMS gateway."""

    name: str

    async def send(self, number: str, text: str) -> str:
        """Send C{text} to C{number}; the backend's reference for the sent SMS."""
        ...


class SmsDispatcher:
    """Tries the backends in order until one sends the SMS."""

    def __init__(self, backends: Sequence[SmsBackend], record: Record | None = None) -> None:
        self._backends = tuple(backends)
        self._record = record

    async def send(self, number: str, text: str, *, about: str) -> tuple[str, str]:
        """
        Send C{text} to C{number} for the message C{about}: the name of the backend that
        sent it and that backend's reference.

        @raise SmsTemporaryError: every backend failed and at least one may work later.
        @raise SmsPermanentError: every backend failed for good, the number is not
            international, or there is no backend.
        """
        masked = mask_number(number)
        if not _NUMBER.fullmatch(number):
            reason = f"{masked} is not an international number such as +358401234567"
            await self._note(about, "sms failed", f"not sent to {masked}: {reason}")
            raise SmsPermanentError(reason)
        if not self._backends:
            raise SmsPermanentError("no SMS backend configured (sms.order is empty)")
        failures: list[str] = []
        temporary = False
        for backend in self._backends:
            try:
                reference = await backend.send(number, text)
            except CancelledError:
                raise
            except Exception as e:
                kind = classify(e)
                temporary = temporary or kind is SmsTemporaryError
                reason = _reason(e, text)
                how = "temporary" if kind is SmsTemporaryError else "permanent"
                failures.append(f"{backend.name}: {reason}")
                counting.count("sms", backend.name, "failed")
                log.warn(
                    "{id}: SMS to {number} not sent by {backend} ({how}): {reason}",
                    id=short_id(about),
                    message_id=short_id(about),
                    number=masked,
                    backend=backend.name,
                    how=how,
                    reason=reason,
                )
                await self._note(
                    about, "sms failed", f"{backend.name} to {masked}: {reason} ({how})"
                )
                continue
            reference = _scrub(reference, text)
            # A gateway may echo the number: only its masked form goes into the record.
            for form in (number, number[1:]):
                reference = reference.replace(form, masked)
            await self._note(about, "sms sent", f"{backend.name} to {masked}: {reference}")
            return backend.name, reference
        summary = f"SMS to {masked} not sent: " + "; ".join(failures)
        raise (SmsTemporaryError if temporary else SmsPermanentError)(summary)

    async def _note(self, about: str, kind: str, detail: str) -> None:
        """Record an event; a failing record is logged, so it neither resends nor stops."""
        if self._record is None:
            return
        try:
            await self._record(about, kind, detail)
        except CancelledError:
            raise
        except Exception:
            log.failure("could not record {kind} on {about}", kind=kind, about=about)


def _reason(error: Exception, text: str) -> str:
    """An error as one line without the SMS text; an unexpected error by its type only."""
    if isinstance(error, SmsTemporaryError | SmsPermanentError | ModemError):
        reason = str(error) or type(error).__name__
    else:
        reason = type(error).__name__  # its words may quote the text
    return _scrub(" ".join(reason.split()), text)


def _scrub(words: str, text: str) -> str:
    """C{words} with the SMS text taken out, should a backend have echoed it."""
    if len(text.strip()) >= 4 and text in words:
        words = words.replace(text, "[message]")
    return words


class EmailSmsBackend:
    """
    An e-mail-to-SMS gateway: a short plain-text mail to the gateway's address for the
    number. C{send_mail(address, content)} hands it to the outgoing queue.
    """

    name = "smtp"

    def __init__(
        self,
        address_template: str,
        send_mail: Callable[[str, bytes], Awaitable[None]],
        *,
        from_address: str | None = None,
    ) -> None:
        self._template = address_template
        self._send_mail = send_mail
        self._from = from_address

    def message(self, number: str, text: str) -> tuple[str, bytes]:
        """The address and the mail (CRLF lines, 7-bit) that send C{text} to C{number}."""
        if not _NUMBER.fullmatch(number):
            raise SmsPermanentError(
                f"{mask_number(number)} is not an international number such as +358401234567"
            )
        address = self._template.format(to=number[1:])
        mail = EmailMessage(policy=SMTP)
        if self._from:
            mail["From"] = self._from
        mail["To"] = address
        # 7-bit either way: plain ASCII as it is, other letters quoted-printable.
        mail.set_content(text, cte=None if text.isascii() else "quoted-printable")
        return address, mail.as_bytes()

    async def send(self, number: str, text: str) -> str:
        """Queue the mail; the reference names the gateway's address, not the number."""
        address, content = self.message(number, text)
        await self._send_mail(address, content)
        return f"mail queued to {self._template}"
