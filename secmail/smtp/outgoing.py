# -*- test-case-name: tests.test_smtp_client -*-
"""
Outgoing mail for the SMTP client: the message to send, the settings, and what became of it.

L{OutgoingMessage} is one message for one transaction and L{check_envelope} says whether its
envelope can be sent at all. L{ClientOptions}, L{Timeouts} and L{TlsPolicy} are how the client
runs. L{DeliveryResult} and the L{DeliveryError}s are the outcomes the queue records. Error
texts name the host and the command, and never quote message content, so they can go into a
DSN as they are.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeAlias

RunInThread: TypeAlias = Callable[..., Awaitable[Any]]
"""C{deferToThread}-like: runs C{f(*args)} off the reactor thread."""


# --- results and errors -----------------------------------------------------------------------


class DeliveryError(Exception):
    """Base of the delivery errors. C{text} is safe to put into a DSN."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class PermanentDeliveryError(DeliveryError):
    """Retrying will not help, so the message bounces.

    C{recipients} maps each rejected recipient to its own reply text, when each recipient
    was rejected on its own. It is empty when the whole transaction was refused.
    """

    def __init__(self, text: str, recipients: Mapping[str, str] | None = None) -> None:
        super().__init__(text)
        self.recipients = dict(recipients or {})


class TemporaryDeliveryError(DeliveryError):
    """Try again later.

    C{try_other_hosts} is False once the host has seen the whole message. Then a 4xx was a
    definite answer about this message, or (after a lost connection or a timeout) the host
    may in fact have taken it (RFC 1047). Offering the message to the next MX at once
    would only make duplicates more likely.
    """

    def __init__(self, text: str, *, try_other_hosts: bool = True) -> None:
        super().__init__(text)
        self.try_other_hosts = try_other_hosts


@dataclass
class DeliveryResult:
    """What one SMTP transaction did for each recipient.

    C{accepted} is filled only when the final dot got 250, so those recipients are
    delivered. C{temporary} and C{permanent} map a recipient to the reply text of a 4xx or
    5xx to its RCPT (or to why its address could not be used).
    """

    accepted: list[str] = field(default_factory=list)
    temporary: dict[str, str] = field(default_factory=dict)
    permanent: dict[str, str] = field(default_factory=dict)
    reply: str = ""
    """The final-dot reply, e.g. C{"host[ip]:25 said: 250 2.0.0 queued as X"}, for the log."""


DeliveryOutcome: TypeAlias = DeliveryResult | DeliveryError
"""What became of one message: its per-recipient result, or why the whole of it failed."""


# --- inputs -----------------------------------------------------------------------------------


class TlsPolicy(Enum):
    """When and how to use STARTTLS."""

    NONE = "none"
    """Never use STARTTLS."""
    OPPORTUNISTIC = "opportunistic"
    """For MX hosts. Use STARTTLS when it is offered, without certificate checks. Encryption
    protects against passive snooping. Without DANE/MTA-STS there is nothing to verify
    against. A failed handshake is a temporary failure."""
    VERIFY = "verify"
    """For a configured relay host. When STARTTLS is offered, the certificate must be valid
    for the host name. When it is not offered, carry on in plain text."""


@dataclass(frozen=True)
class Timeouts:
    """Seconds to wait in each state. The defaults follow RFC 5321 §4.5.3.2."""

    connect: float = 30
    greeting: float = 300
    helo: float = 300
    starttls: float = 300
    mail: float = 300
    rcpt: float = 300
    data_init: float = 120
    content: float = 180
    """The longest time the transfer may make no progress: a stuck content source or a peer
    that stopped reading. This is Postfix's smtp_data_xfer_timeout."""
    final_dot: float = 600
    rset: float = 20
    """Between two messages of a session. Postfix's smtp_rset_timeout is 20 s as well."""
    quit: float = 10


@dataclass(frozen=True)
class ClientOptions:
    """Settings for the gateway as a whole, the same for every delivery."""

    helo: str
    ca_file: str | None = None
    """PEM file of CAs to trust under L{TlsPolicy.VERIFY}. None means the platform's trust store."""
    timeouts: Timeouts = field(default_factory=Timeouts)
    run_in_thread: RunInThread | None = None
    """Where converting an 8-bit message to 7 bits runs (CPU work). None: in the caller's
    thread, for tests; the gateway passes C{deferToThread}."""

    def __post_init__(self) -> None:
        problem = _address_problem(self.helo)
        if not self.helo or problem:
            raise ValueError(f"HELO name {self.helo!r} cannot be used: {problem or 'empty'}")


@dataclass(frozen=True)
class OutgoingMessage:
    """One message for one SMTP transaction.

    C{content} is a factory, so every attempt reads the message afresh. It yields the raw
    message in any chunking. L{DataEncoder} makes it fit for the wire. C{size}, if known,
    is sent as C{SIZE=} to hosts that advertise SIZE. C{eight_bit} says whether the
    message has a byte over 127; None (not known) makes the client read it to find out.
    """

    sender: str
    recipients: Sequence[str]
    content: Callable[[], AsyncIterator[bytes]]
    size: int | None = None
    eight_bit: bool | None = None


# --- envelope checks --------------------------------------------------------------------------

_FORBIDDEN_IN_ADDRESS = re.compile(r"[\x00-\x20\x7f<>]")


def _address_problem(address: str) -> str | None:
    """Why C{address} cannot go between the angle brackets of MAIL/RCPT, or None.

    A CR or LF would end the command early and let the rest become a new command (SMTP
    injection, GHSA-v3q9-hj7j-63hq). A space or '>' would end the path early. A non-ASCII
    address needs SMTPUTF8 (RFC 6531), which this client does not speak.
    """
    match = _FORBIDDEN_IN_ADDRESS.search(address)
    if match is None:
        return None if address.isascii() else "has non-ASCII characters (needs SMTPUTF8)"
    char = match.group()
    names = {"\r": "CR", "\n": "LF", "\x00": "NUL", " ": "a space", "<": "'<'", ">": "'>'"}
    return "contains " + names.get(char, f"control character {char!r}")


def check_envelope(message: OutgoingMessage) -> dict[str, str]:
    """Reject a message whose envelope cannot be sent, and find its unusable recipients.

    Raises L{PermanentDeliveryError} for a bad sender, or when no recipient is usable.
    Otherwise it returns the unusable recipients, each with the reason. These are
    permanent failures for those recipients only.
    """
    problem = _address_problem(message.sender)
    if problem:
        raise PermanentDeliveryError(f"invalid sender address {message.sender!r}: {problem}")
    if not message.recipients:
        raise ValueError("a message needs at least one recipient")
    invalid = {}
    for recipient in message.recipients:
        problem = "is empty" if not recipient else _address_problem(recipient)
        if problem:
            invalid[recipient] = f"invalid recipient address {recipient!r}: {problem}"
    if len(invalid) == len(set(message.recipients)):
        first = next(iter(invalid.values()))
        raise PermanentDeliveryError(first, recipients=invalid)
    return invalid
