"""
Intake: what happens to a message the ESMTP server has received.

L{GatewayDelivery} is the server's C{IMessageDelivery}, one per connection: it
checks senders and recipients, and gives every recipient of a transaction the
same L{IncomingMessage}. That message streams the DATA through the encryptor
and, at the final dot, commits the message, its secure envelopes, the
notifications and the relay queue rows in one transaction. Only then does the
server answer 250.
"""

from __future__ import annotations

import email.utils
import errno
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime, ISSLTransport
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.mail.interfaces import IMessageDelivery, IMessageSMTP
from zope.interface import implementer

from secmail import message_log, mime
from secmail.address import (
    AddressError,
    Level,
    Recipient,
    check_sender,
    parse_recipient,
    postmaster_recipient,
)
from secmail.config import NotificationTexts, RouteSettings, SecureSettings
from secmail.crypto import MasterKey
from secmail.dsn import bounce_message
from secmail.letters import letter_events, new_envelopes
from secmail.policy import MessagePolicy, check_recipient, decide, strip_subject_keyword
from secmail.returns import (
    ReturnedMail,
    failed_recipients,
    notice_for_sender,
    returned_envelope,
)
from secmail.store.database import StoreUnavailable
from secmail.store.messages import (
    MessageStore,
    NewDelivery,
    NewMessage,
    new_id,
)
from secmail.store.rows import short_id
from secmail.store.spool import RunInThread, SpooledMessage

log = Logger()

GATEWAY_HEADER_PREFIX = b"x-secmail-"
"""
Header fields the gateway vouches for (C{X-Secmail-Verified}, set by D-Compose) and any it may
add later: the README tells admins to trust them on mail from the gateway, so every incoming
copy is removed before the message is relayed or stored.
"""

_FIELD_NAME = re.compile(rb"([!-9;-~]+)[ \t]*:")
"""A header field's name: printable ASCII but the colon, maybe with spaces before the colon."""


class Intake:
    """What every connection's delivery shares: its settings, store and clock."""

    def __init__(
        self,
        store: MessageStore,
        master: MasterKey,
        clock: IReactorTime,
        run_in_thread: RunInThread,
        on_commit: Callable[[], None] = lambda: None,
        *,
        texts: NotificationTexts,
        routes: RouteSettings,
        secure: SecureSettings,
        data_dir: str,
        max_message_size: int,
    ) -> None:
        """
        C{texts} are the notifications' (and C{texts.identity} is the gateway's name and bounce
        address here too); C{data_dir} holds the spool, and keeps room for C{max_message_size}.
        """
        self.texts = texts
        self.identity = texts.identity
        self.routes = routes
        self.secure = secure
        self.data_dir = data_dir
        self.max_message_size = max_message_size
        self.store = store
        self.master = master
        self.clock = clock
        self.run_in_thread = run_in_thread
        self.on_commit = on_commit
        self.spool_dir = os.path.join(data_dir, "spool")
        self._disk_checked_at = float("-inf")
        self._disk_short = False

    def now(self) -> int:
        return int(self.clock.seconds())

    async def notification_returned(self, envelope_id: str, raw: bytes) -> bytes:
        """A bounce of one of our notifications came back: tell the message's sender."""
        envelope = await self.store.envelope_by_id(envelope_id) if envelope_id else None
        if envelope is None:
            log.info("Mail to the bounce address names no known envelope; dropped")
            return b"dropped"
        reports = failed_recipients(raw)
        if reports is None:
            log.info(
                "Mail to the bounce address for envelope {id} is no delivery report; dropped",
                id=envelope_id,
            )
            return b"dropped"
        if not reports:
            return b"dropped"  # a report of delays or successes: nothing failed
        report = next((r for r in reports if r.address.lower() == envelope.recipient), reports[0])
        now = self.clock.seconds()
        notice = notice_for_sender(
            hostname=self.identity.hostname,
            original_sender=envelope.sender,
            recipient=envelope.recipient,
            report=report,
            arrival=datetime.fromtimestamp(envelope.created, UTC),
            now=datetime.fromtimestamp(now, UTC),
        )
        bounce = None
        if notice is not None:
            bounce = bounce_message(
                self.routes,
                self.master,
                envelope.sender,
                notice,
                envelope.message_id,
            )
        detail = f"{report.status} {report.diagnostic}"[:500]
        await self.store.notification_returned(envelope, bounce, detail, int(now))
        log.info(
            "{id}: notification to=<{to}> came back: {detail}",
            id=short_id(envelope.message_id),
            message_id=short_id(envelope.message_id),
            envelope_id=envelope_id,
            to=envelope.recipient,
            detail=detail,
        )
        self.on_commit()
        return b"returned"

    def disk_is_short(self) -> bool:
        """Less free space than 1.5 message size limits (Postfix's rule); checked once a second."""
        now = self.clock.seconds()
        if now - self._disk_checked_at >= 1.0:
            self._disk_checked_at = now
            try:
                st = os.statvfs(self.data_dir)
            except OSError:
                self._disk_short = False
            else:
                free = st.f_bavail * st.f_frsize
                self._disk_short = free < 1.5 * self.max_message_size
        return self._disk_short


@dataclass
class _Transaction:
    sender: str
    recipients: list[Recipient] = field(default_factory=list)
    message: IncomingMessage | ReturnedMail | None = None
    returned: str | None = None  # the envelope id, for mail to our bounce address
    id: str = field(default_factory=new_id)
    client: str = "unknown"  # the client's address, for the log


@implementer(IMessageDelivery)
class GatewayDelivery:
    """One connection's view of the intake."""

    def __init__(self, intake: Intake) -> None:
        self.intake = intake
        self._transaction: _Transaction | None = None
        self._tls = False

    def receivedHeader(
        self, helo: tuple[bytes, bytes], origin: smtp.Address, recipients: Any
    ) -> bytes:
        helo_name = helo[0].decode("ascii", "replace") if helo and helo[0] else "unknown"
        peer = helo[1].decode("ascii", "replace") if helo and len(helo) > 1 else "unknown"
        helo_name = "".join(c for c in helo_name if c.isalnum() or c in ".-[]:")[:255] or "unknown"
        with_ = "ESMTPS" if self._tls else "ESMTP"
        assert self._transaction is not None
        message_id = self._transaction.id
        date = email.utils.format_datetime(datetime.fromtimestamp(self.intake.clock.seconds(), UTC))
        return (
            f"Received: from {helo_name} ([{peer}])\r\n\tby {self.intake.identity.hostname}"
            f" (secmail) with {with_} id {message_id};\r\n\t{date}"
        ).encode("ascii")

    def validateFrom(self, helo: tuple[bytes, bytes], origin: smtp.Address) -> smtp.Address:
        if self.intake.disk_is_short():
            log.warn("Refusing mail: free disk space below 1.5 x max_message_size")
            raise smtp.SMTPBadSender(origin, 452, "4.3.1 Insufficient system storage")
        try:
            check_sender(_path_as_written(origin) if origin.local else "")
        except AddressError as e:
            raise smtp.SMTPBadSender(origin, e.code, e.text) from None
        sender = str(origin) if origin.local else ""
        if sender and any(c in sender for c in "\r\n\0 "):
            raise smtp.SMTPBadSender(origin, 553, "5.1.7 Sender address is not valid")
        self._abort()
        client = helo[1].decode("ascii", "replace") if helo and len(helo) > 1 else ""
        self._transaction = _Transaction(sender=sender, client=client or "unknown")
        return origin

    def validateTo(self, user: smtp.User) -> Callable[[], IncomingMessage | ReturnedMail]:
        transaction = self._transaction
        if transaction is None:
            raise smtp.SMTPBadRcpt(user, 503, "5.5.1 Error: need MAIL command")
        transport = getattr(user.protocol, "transport", None)
        self._tls = transport is not None and ISSLTransport.providedBy(transport)
        postmaster = None
        if b"@" not in getattr(user.dest, "addrstr", b"@"):
            # Twisted would complete it with our own host name; a gateway must not guess.
            # Only the bare postmaster (RFC 5321 section 4.5.1) is ours: the internal server's.
            postmaster = postmaster_recipient(bytes(user.dest.local).decode("ascii", "replace"))
            if postmaster is None:
                raise smtp.SMTPBadRcpt(user, 553, "5.1.3 The recipient address needs a domain")
        returned = None
        if postmaster is None:
            bounce_address = self.intake.identity.bounce_address
            returned = returned_envelope(str(user.dest), bounce_address)
        if (returned is None) == (transaction.returned is not None) and (
            transaction.recipients or transaction.returned is not None
        ):
            raise smtp.SMTPBadRcpt(
                user, 452, "4.5.3 Send mail to the bounce address in a transaction of its own"
            )
        if returned is not None:
            transaction.returned = returned
            return self._message
        secure = self.intake.secure
        try:
            recipient = postmaster or parse_recipient(
                str(user.dest), secure.extension, secure.default_country_code
            )
            check_recipient(recipient, self.intake.routes, secure)
        except AddressError as e:
            raise smtp.SMTPBadRcpt(user, e.code, e.text) from None
        if recipient not in transaction.recipients:
            transaction.recipients.append(recipient)
        return self._message

    def _message(self) -> IncomingMessage | ReturnedMail:
        transaction = self._transaction
        assert transaction is not None
        if transaction.message is None:
            if transaction.returned is not None:
                transaction.message = ReturnedMail(
                    transaction.returned,
                    lambda envelope_id, raw: Deferred.fromCoroutine(
                        self.intake.notification_returned(envelope_id, raw)
                    ),
                )
            else:
                transaction.message = IncomingMessage(
                    self.intake,
                    transaction.sender,
                    transaction.recipients,
                    transaction.id,
                    client=transaction.client,
                )
        return transaction.message

    def _abort(self) -> None:
        if self._transaction is not None and self._transaction.message is not None:
            if not self._transaction.message.done:
                self._transaction.message.connectionLost()
        self._transaction = None


def subject_and_sender_name(header_block: bytes) -> tuple[str | None, str | None]:
    """
    The decoded Subject and the From display name of a header block.

    Reads just these two fields (unfolded, RFC 2047 decoded): a full parse of
    the header block with the email package costs more than the whole intake.
    """
    fields: dict[str, str] = {}
    name = None
    for line in header_block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if name is not None:
                fields[name] += line.decode("utf-8", "replace")
            continue
        key, colon, value = line.partition(b":")
        key_text = key.strip().lower().decode("ascii", "replace")
        if colon and key_text in ("subject", "from") and key_text not in fields:
            name = key_text
            fields[name] = value.decode("utf-8", "replace")
        else:
            name = None
    subject = _decoded(fields["subject"]) if "subject" in fields else None
    display = None
    if "from" in fields:
        display = email.utils.parseaddr(_decoded(fields["from"]))[0] or None
    return subject, display


def subject_keyword_texts(header_block: bytes) -> list[str]:
    """
    Every Subject field of a header block, unfolded, as text to look for the subject keyword in.

    A message should have one Subject, but a second one is still shown by some readers, so
    each counts. Each comes raw, RFC 2047 decoded, and decoded ignoring the declared charsets
    (an unknown or wrong charset must not hide an ASCII keyword in an encoded word).
    """
    texts: list[str] = []
    for value in _field_values(header_block, b"subject"):
        text = value.decode("utf-8", "replace")
        texts += [" ".join(text.split()), _decoded(text), _charset_blind(text)]
    return texts


def _field_values(header_block: bytes, name: bytes) -> list[bytes]:
    """The unfolded value of every field called C{name} (lower case) in C{header_block}."""
    values: list[bytes] = []
    current: list[bytes] | None = None
    for line in header_block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current.append(line)
            continue
        if current is not None:
            values.append(b"".join(current))
            current = None
        match = _FIELD_NAME.match(line)
        if match is not None and match.group(1).lower() == name:
            current = [line[match.end() :]]
    if current is not None:
        values.append(b"".join(current))
    return values


def _charset_blind(value: str) -> str:
    """C{value} with its encoded words decoded as Latin-1 whatever charset they name."""
    try:
        parts = email.header.decode_header(value)
    except (ValueError, LookupError, UnicodeError, email.errors.HeaderParseError):
        return value
    text = "".join(p.decode("latin-1") if isinstance(p, bytes) else p for p, _ in parts)
    return " ".join(text.split())


def gateway_header(line: bytes) -> bool:
    """Whether a header line starts a field in the gateway's own namespace (any case)."""
    match = _FIELD_NAME.match(line)
    return match is not None and match.group(1).lower().startswith(GATEWAY_HEADER_PREFIX)


def _path_as_written(origin: smtp.Address) -> str:
    """The MAIL FROM address as the client wrote it, before Twisted added a default domain."""
    raw = bytes(getattr(origin, "addrstr", b"") or b"").decode("ascii", "replace").strip()
    if raw.startswith("<") and raw.endswith(">"):
        raw = raw[1:-1]
    return raw or str(origin)


def _decoded(value: str) -> str:
    """Encoded words decoded in text charsets only (L{mime.decode_words}): a label such as
    C{punycode} would make the intake's work grow with the square of the header."""
    return " ".join(mime.decode_words(value).split())


@implementer(IMessageSMTP)
class IncomingMessage:
    """One transaction's message: streamed through the encryptor, committed at the final dot."""

    def __init__(
        self,
        intake: Intake,
        sender: str,
        recipients: list[Recipient],
        message_id: str,
        *,
        client: str = "unknown",
    ) -> None:
        self.intake = intake
        self.sender = sender
        self.recipients = recipients
        self.message_id = message_id
        self.client = client
        self._short_id = short_id(message_id)
        self._levels: list[tuple[str, str]] = []  # (recipient, level) as decided, for the log
        self.done = False
        self._headers: list[bytes] | None = []
        self._in_field = False
        self._dropping_field = False
        self._gateway_headers_removed = 0
        self._spool = SpooledMessage(
            intake.master, self.message_id, intake.spool_dir, intake.run_in_thread
        )

    def lineReceived(self, line: bytes) -> None:
        if self._headers is None:
            self._spool.write(line + b"\r\n")
        elif not line:
            self._end_of_headers()
            self._spool.write(b"\r\n")
        else:
            self._header_line(line)

    def _header_line(self, line: bytes) -> None:
        """
        Keep a header line, or drop it when it belongs to a forged gateway field.

        A field of the gateway's own (L{GATEWAY_HEADER_PREFIX}) is dropped with its
        continuation lines. A line that is neither a field nor a continuation starts the
        body (as the server counts it): a blank line is put before it, so that no reader
        takes what follows for more header fields.
        """
        assert self._headers is not None
        if line[:1] in (b" ", b"\t") and self._in_field:
            if not self._dropping_field:
                self._headers.append(line)
            return
        if line[:1] not in (b" ", b"\t") and not _FIELD_NAME.match(line):
            self._end_of_headers()
            self._spool.write(b"\r\n" + line + b"\r\n")
            return
        self._in_field = True
        self._dropping_field = gateway_header(line)
        if self._dropping_field:
            self._gateway_headers_removed += 1
        else:
            self._headers.append(line)

    def _end_of_headers(self) -> None:
        assert self._headers is not None
        self._header_block = b"".join(h + b"\r\n" for h in self._headers)
        self._spool.write(self._header_block)
        self._headers = None
        if self._gateway_headers_removed:
            log.info(
                "{id}: removed {count} X-Secmail- header field(s) from <{sender}>:"
                " only the gateway sets them",
                count=self._gateway_headers_removed,
                id=short_id(self.message_id),
                message_id=short_id(self.message_id),
                sender=self.sender,
            )

    def eomReceived(self) -> Deferred[bytes]:
        if self._headers is not None:
            self._end_of_headers()
        return Deferred.fromCoroutine(self._commit())

    async def _commit(self) -> bytes:
        self.done = True
        try:
            await self._spool.finished()
            messages = self._plan()
            await self.intake.store.commit(messages, self.intake.now())
        except StoreUnavailable as e:
            log.error(
                "{id}: not accepted: {error}",
                id=self._short_id,
                message_id=self._short_id,
                error=str(e),
            )
            raise smtp.SMTPServerError(
                451, "4.3.0 Temporary failure storing the message, try again later"
            ) from e
        except OSError as e:
            log.error(
                "{id}: not accepted: {error}",
                id=self._short_id,
                message_id=self._short_id,
                error=str(e),
            )
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise smtp.SMTPServerError(452, "4.3.1 Insufficient system storage") from e
            raise smtp.SMTPServerError(
                451, "4.3.0 Temporary failure storing the message, try again later"
            ) from e
        except Exception as e:
            # E.g. an SQLite error inside the transaction (not a StoreUnavailable): still a 4xx.
            log.failure("{id}: not accepted", id=self._short_id, message_id=self._short_id)
            raise smtp.SMTPServerError(
                451, "4.3.0 Temporary failure storing the message, try again later"
            ) from e
        finally:
            self._spool.discard()
        message_log.accepted(
            self.message_id,
            peer=self.client,
            sender=self.sender,
            size=self._spool.size,
            recipients=self._levels,
        )
        message_log.notifications_queued(messages)
        self.intake.on_commit()
        return self.message_id.encode("ascii")

    def connectionLost(self) -> None:
        self.done = True
        self._spool.discard()

    # --- what the message becomes ---------------------------------------------------

    def _headers_of_interest(self) -> tuple[str | None, str | None]:
        """The Subject and the From display name, read only to write the notification."""
        return subject_and_sender_name(self._header_block)

    def _plan(self) -> list[NewMessage]:
        secure = self.intake.secure
        subject = display = None
        # Only a notification (or the subject keyword of mode "all") needs the headers read.
        if secure.mode == "all" or any(r.level is not Level.PLAIN for r in self.recipients):
            subject, display = self._headers_of_interest()
        keyword_texts: list[str] = []
        if secure.mode == "all":
            keyword_texts = subject_keyword_texts(self._header_block)
        policy: MessagePolicy = decide(self.recipients, keyword_texts, self.intake.routes, secure)
        if policy.subject_keyword_found and subject is not None:
            subject = strip_subject_keyword(subject, secure.subject_keyword)
        self._levels = [
            (d.recipient.address, d.recipient.level.value if d.secure else "relay")
            for d in policy.decisions
        ]

        envelopes, gateway_made = new_envelopes(
            texts=self.intake.texts,
            routes=self.intake.routes,
            master=self.intake.master,
            message_id=self.message_id,
            sender=self.sender,
            sender_display=display,
            subject=subject,
            recipients=[d.recipient for d in policy.secure_recipients],
            date=datetime.fromtimestamp(self.intake.clock.seconds(), UTC),
        )

        deliveries: dict[tuple[str, str], list[str]] = {}
        for decision in policy.plain_recipients:
            domain = decision.recipient.address.rpartition("@")[2]
            key = (str(decision.route), domain if decision.route.mx else "")
            deliveries.setdefault(key, []).append(decision.recipient.address)

        events = letter_events(f"from <{self.sender}>, {self._spool.size} bytes", envelopes)
        original = NewMessage(
            content=self._spool,
            kind="mail",
            sender=self.sender,
            envelopes=envelopes,
            deliveries=[
                NewDelivery(
                    kind="relay",
                    sender=self.sender,
                    recipients=tuple(rcpts),
                    route=route,
                    domain=domain,
                    notify=self.sender,
                )
                for (route, domain), rcpts in deliveries.items()
            ],
            events=events,
        )
        return [original, *gateway_made]
