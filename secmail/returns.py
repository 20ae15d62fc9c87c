"""
Notifications that come back: bounces addressed to the gateway's bounce address.

Each notification is sent with its own envelope sender,
C{<bounce local part>+<envelope id>@<bounce domain>} (VERP), so a bounce that
arrives later by mail names the secure envelope it is about. The gateway then
tells the original, internal sender that the recipient was not notified, and
records it on the message. The returned mail itself is read in memory and never
stored: it may quote the notification, link token included.
"""

from __future__ import annotations

import email.policy
import re
from collections.abc import Callable
from datetime import datetime
from email.message import Message

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.mail.interfaces import IMessageSMTP
from zope.interface import implementer

from secmail import mime
from secmail.dsn import FailedRecipient, build_dsn

log = Logger()

#: More than this of a returned mail is not read (a DSN is a few kilobytes).
MAX_RETURNED_BYTES = 256 * 1024

_ENVELOPE_ID = re.compile(r"[0-9a-f]{32}")


def returned_envelope(address: str, bounce_address: str) -> str | None:
    """
    For a recipient address: the envelope id when it is one of our VERP bounce
    addresses, C{""} when it is the plain bounce address, None otherwise.
    """
    local, _, domain = address.rpartition("@")
    bounce_local, _, bounce_domain = bounce_address.rpartition("@")
    if domain.lower() != bounce_domain.lower():
        return None
    if local.lower() == bounce_local.lower():
        return ""
    prefix = bounce_local.lower() + "+"
    if local.lower().startswith(prefix):
        tag = local[len(prefix) :].lower()
        if _ENVELOPE_ID.fullmatch(tag):
            return tag
    return None


def failed_recipients(raw: bytes) -> list[FailedRecipient] | None:
    """The failed recipients reported by an RFC 3464 report, or None when C{raw} is not one."""
    try:
        parsed = mime.parse(raw, policy=email.policy.compat32)
    except mime.MessageTooComplex:
        return None  # nested deeper than a report is (the parser would overflow the stack)
    if parsed.get_content_type() != "multipart/report":
        return None
    for part in parsed.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        blocks = part.get_payload()
        if not isinstance(blocks, list):
            return None
        failed = []
        for block in blocks[1:]:
            if not isinstance(block, Message):
                continue
            action = str(block.get("Action", "")).strip().lower()
            if action != "failed":
                continue
            recipient = str(block.get("Final-Recipient", "")).partition(";")[2].strip()
            status = str(block.get("Status", "5.0.0")).strip()
            diagnostic = str(block.get("Diagnostic-Code", "")).partition(";")[2].strip()
            if not re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", status):
                status = "5.0.0"
            failed.append(
                FailedRecipient(
                    address=recipient,
                    status=status,
                    diagnostic=" ".join(diagnostic.split()) or "no reason given",
                )
            )
        return failed
    return None


def notice_for_sender(
    *,
    hostname: str,
    original_sender: str,
    recipient: str,
    report: FailedRecipient | None,
    arrival: datetime,
    now: datetime,
) -> bytes | None:
    """The bounce we send the internal sender when a recipient's notification came back."""
    failed = FailedRecipient(
        address=recipient,
        status=report.status if report else "5.0.0",
        diagnostic=report.diagnostic
        if report
        else "the notification was returned as undeliverable",
    )
    return build_dsn(
        reporting_mta=hostname,
        original_sender=original_sender,
        original_envelope_id=None,
        failed=[failed],
        original_headers=b"",
        arrival_date=arrival,
        date=now,
        from_address=f"MAILER-DAEMON@{hostname}",
        reason=(
            f"The notification of your secure message could not be delivered to {recipient}, "
            "so the recipient does not know that the message is waiting."
        ),
    )


@implementer(IMessageSMTP)
class ReturnedMail:
    """A mail to a bounce address: read in memory, handed to C{handle} at the final dot."""

    def __init__(self, envelope_id: str, handle: Callable[[str, bytes], Deferred[object]]) -> None:
        self.envelope_id = envelope_id
        self._handle = handle
        self._lines: list[bytes] = []
        self._size = 0
        self.done = False

    def lineReceived(self, line: bytes) -> None:
        if self._size < MAX_RETURNED_BYTES:
            self._lines.append(line)
            self._size += len(line) + 2

    def eomReceived(self) -> Deferred[object]:
        self.done = True
        raw = b"\r\n".join(self._lines) + b"\r\n"
        self._lines = []
        return self._handle(self.envelope_id, raw)

    def connectionLost(self) -> None:
        self.done = True
        self._lines = []
