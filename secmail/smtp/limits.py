# -*- test-case-name: tests.test_smtp_limits,tests.test_smtp_server -*-
"""
The ESMTP intake's limits as pure rules: who may connect, how long a command line and a
transaction may take, which MAIL parameters and commands are taken, and what a message's
DATA may hold.

L{secmail.smtp.server.GatewayESMTP} applies them: it keeps the clock, the connection and
the replies; everything here only decides.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress

from secmail.config import SmtpSettings

DATA_LINE_LIMIT = 1024 * 1024
"""
Longest DATA line accepted, in bytes without CRLF.

RFC 5321 text lines are at most 1000 bytes, but Postfix accepts longer body lines and real mail
(HTML without line breaks) has them, so a body line is only refused beyond this bound; its bytes
count toward the message size like any others. Commands keep the configured, much shorter limit.
"""

MIN_COMMAND_LINE_LIMIT = 1000
"""RFC 5321 text line length (998 + CRLF): no configured limit may refuse a line that short."""

ERROR_SLEEP_SECONDS = 1.0
"""Pause after each error from the soft error limit on (Postfix C{smtpd_error_sleep_time})."""

FORBIDDEN_COMMANDS = frozenset({b"CONNECT", b"GET", b"POST"})
"""First words of HTTP requests: a browser tricked into talking to us is dropped (as Postfix)."""

JUNK_COMMANDS = frozenset({b"NOOP", b"RSET", b"VRFY", b"EXPN", b"HELO", b"EHLO"})
"""
Commands that move no mail: more than C{junk_command_limit} of them between two delivered
messages only hold a connection slot (Postfix C{smtpd_junk_command_limit}).
"""

Refusal = tuple[int, str]
"""A reply code and its text (with the enhanced status code)."""

_HEADER_FIELD = re.compile(rb"[!-9;-~]+[ \t]*:")
_RECEIVED_FIELD = re.compile(rb"received[ \t]*:", re.IGNORECASE)
_ENHANCED_CODE = re.compile(rb"[245]\.\d{1,3}\.\d{1,3}(?:\s|$)")
BARE_NEWLINE = re.compile(rb"[\r\n]")


# --- the client -------------------------------------------------------------------------------


def peer_ip(peer: IAddress) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not isinstance(peer, IPv4Address | IPv6Address):
        return None
    try:
        return ipaddress.ip_address(peer.host.split("%", 1)[0])
    except ValueError:
        return None


def client_name(peer: IAddress) -> str:
    """The key connections are counted under and the name used in replies and logs."""
    if isinstance(peer, UNIXAddress):
        return "unix"
    address = peer_ip(peer)
    return str(address) if address is not None else str(peer)


def peer_accepted(peer: IAddress, settings: SmtpSettings) -> bool:
    """Whether the client may hand us mail: UNIX sockets always, IPs from accepted networks."""
    if isinstance(peer, UNIXAddress):
        return True
    address = peer_ip(peer)
    if address is None:
        return False
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        candidates.append(address.ipv4_mapped)
    return any(a in net for a in candidates for net in settings.accepted_networks)


# --- deadlines: silence is not the only way to hold a connection slot ----------------------------


def earliest_deadline(
    settings: SmtpSettings,
    transaction_started: float | None,
    transaction_bytes: int,
    line_started: float | None,
) -> tuple[float, str] | None:
    """
    When the client must be done with what it is sending now, and what it is, or None.

    The idle timer restarts with every byte, so a client dripping a byte every few seconds
    would never meet it (Postfix's answer: C{smtpd_per_request_deadline}). So a command line
    (started at C{line_started}) must arrive whole within C{idle_timeout} of its first byte,
    and a transaction (MAIL FROM to the final dot) must end within C{transaction_timeout}
    while averaging C{min_data_rate} bytes a second after its first C{idle_timeout} seconds.
    """
    deadlines: list[tuple[float, str]] = []
    if transaction_started is not None:
        deadlines.append(
            (
                transaction_started + settings.transaction_timeout,
                "the transaction took longer than transaction_timeout",
            )
        )
        deadlines.append(
            (
                transaction_started
                + settings.idle_timeout
                + transaction_bytes / settings.min_data_rate,
                "the transaction was slower than min_data_rate",
            )
        )
    if line_started is not None:
        deadlines.append(
            (line_started + settings.idle_timeout, "a command line took longer than idle_timeout")
        )
    return min(deadlines) if deadlines else None


# --- commands ----------------------------------------------------------------------------------


def mail_parameters_refusal(opts: bytes | None, settings: SmtpSettings) -> Refusal | None:
    """SIZE and BODY are the only MAIL parameters we implement (RFC 1870, RFC 6152)."""
    for param in (opts or b"").split():
        key, _, value = param.partition(b"=")
        key = key.upper()
        if key == b"SIZE":
            if not value.isdigit() or len(value) > 20:
                return 501, "5.5.4 Bad SIZE parameter"
            if int(value) > settings.max_message_size:
                return 552, "5.3.4 Message size exceeds fixed limit"
        elif key == b"BODY" and value.upper() in (b"7BIT", b"8BITMIME"):
            continue
        else:
            return 555, f"5.5.4 Unsupported parameter: {printable(param)}"
    return None


# --- DATA --------------------------------------------------------------------------------------


@dataclass
class MessageLimits:
    """What one message's DATA has used of its limits: size, header size, Received hops."""

    settings: SmtpSettings
    size: int = 0
    header_size: int = 0
    header_lines: int = 0
    hops: int = 0
    in_header: bool = True

    def take(self, line: bytes) -> list[bytes] | Refusal:
        """The lines to give the message for one DATA line (not the final dot), or the refusal.

        The line is dot-unstuffed. A body that starts without a blank line after headerless
        DATA gets one, so that our Received header does not swallow its first line.
        """
        if BARE_NEWLINE.search(line):
            return 550, "5.5.2 Message contains bare CR or LF (SMTP smuggling defence)"
        if b"\0" in line:
            return 550, "5.5.2 Message contains a NUL character"
        if line[:1] == b".":
            line = line[1:]
        self.size += len(line) + 2
        if self.size > self.settings.max_message_size:
            return 552, "5.3.4 Message size exceeds fixed limit"
        if not self.in_header:
            return [line]
        return self._header_line(line)

    def _header_line(self, line: bytes) -> list[bytes] | Refusal:
        """Track the header block (size, Received count)."""
        if not line:
            self.in_header = False
            return [line]
        is_continuation = line[:1] in (b" ", b"\t") and self.header_lines > 0
        if not is_continuation and not _HEADER_FIELD.match(line):
            # The body starts without a blank line; if there were no headers at all, add the
            # blank line so that our Received header does not swallow the first body line.
            self.in_header = False
            return [line] if self.header_lines else [b"", line]
        self.header_lines += 1
        self.header_size += len(line) + 2
        if self.header_size > self.settings.max_header_size:
            return 552, "5.3.4 Message header too large"
        if not is_continuation and _RECEIVED_FIELD.match(line):
            self.hops += 1
            if self.hops > self.settings.max_hops:
                return 554, "5.4.6 Too many hops (mail loop?)"
        return [line]


# --- replies -----------------------------------------------------------------------------------


def with_enhanced_code(code: int, text: bytes | str) -> bytes:
    """Prefix a generic enhanced status code (RFC 3463) when a passed-through text has none."""
    if isinstance(text, str):
        text = text.encode("utf-8", "replace")
    if _ENHANCED_CODE.match(text):
        return text
    return f"{code // 100}.0.0 ".encode("ascii") + text


def printable(value: bytes) -> str:
    """Client- or store-supplied text made safe to echo in a one-line reply."""
    text = value.decode("ascii", "replace")
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:100]
