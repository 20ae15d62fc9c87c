"""
Delivery status notifications (bounces), RFC 3464.

A bounce tells the sender, in words and in a form their software can read, which
recipients failed and why, and shows the original headers so they can tell which
message it was. Only the headers: the body of a secure message must never travel
in the clear, and a bounce may be read by anyone on the way back.

The caller sends the result with the null envelope sender C{MAIL FROM:<>}, so a
bounce that cannot be delivered is dropped instead of bouncing again (RFC 5321
§6.1); for the same reason L{build_dsn} returns None when the original sender
was already null.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from email import policy as email_policy
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.utils import format_datetime
from email.utils import make_msgid as email_make_msgid

from secmail.config import RouteSettings
from secmail.crypto import MasterKey
from secmail.letters import routed_mail
from secmail.store.messages import NewMessage

MAX_ORIGINAL_HEADER_BYTES = 50_000
MAX_DIAGNOSTIC_CHARS = 1000
MAX_LINE_OCTETS = 998
ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")

_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_SMTP_REPLY = re.compile(r"[2-5]\d\d([ -]|$)")
_LINE_END = re.compile(rb"\r\n|\n|\r")
_HOST = re.compile(r"[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]")


@dataclass(frozen=True)
class FailedRecipient:
    """One recipient to report: its address, RFC 3463 status and the remote reply."""

    address: str
    status: str
    diagnostic: str
    action: str = "failed"


def build_dsn(
    *,
    reporting_mta: str,
    original_sender: str,
    original_envelope_id: str | None,
    failed: Sequence[FailedRecipient],
    original_headers: bytes | None,
    arrival_date: datetime,
    date: datetime,
    from_address: str,
    reason: str,
    make_msgid: Callable[[], str] | None = None,
) -> bytes | None:
    """
    Build the bounce for C{original_sender}, or None when that is the null sender.

    C{original_headers} may hold the whole original message; only its header
    block is used, and at most L{MAX_ORIGINAL_HEADER_BYTES} of it. C{reason}
    says in words what went wrong overall, e.g. that the gateway gave up after
    five days. C{original_headers} None means the message could not be read (it is
    damaged): the bounce then has no headers part and says so, and quotes nothing of it.
    Invalid addresses, statuses or actions raise ValueError.
    """
    sender = original_sender.strip()
    if sender.startswith("<") and sender.endswith(">"):
        sender = sender[1:-1].strip()
    if not sender:
        return None
    if not failed:
        raise ValueError("a delivery status notification needs at least one recipient")
    if not _HOST.fullmatch(reporting_mta):
        raise ValueError(f"reporting MTA {reporting_mta!r} is not a host name")
    for f in failed:
        if not _STATUS.fullmatch(f.status):
            raise ValueError(f"status {f.status!r} for {f.address} is not like 5.1.1")
        if f.action not in ACTIONS:
            raise ValueError(f"action {f.action!r} for {f.address} is not one of {ACTIONS}")
        if not f.address.isascii() or not f.address.isprintable() or " " in f.address:
            raise ValueError(f"recipient address {f.address!r} is not an address")

    unread = original_headers is None
    headers, truncated = original_header_block(original_headers or b"")
    any_failed = any(f.action == "failed" for f in failed)

    report = EmailMessage(policy=email_policy.SMTP)
    report["From"] = Address(display_name="Mail Delivery System", addr_spec=from_address)
    report["To"] = Address(addr_spec=sender)
    report["Subject"] = (
        "Undelivered mail returned to sender" if any_failed else "Delivery status notification"
    )
    report["Date"] = format_datetime(date)
    report["Message-ID"] = (
        make_msgid() if make_msgid is not None else email_make_msgid(domain=reporting_mta)
    )
    report["Auto-Submitted"] = "auto-replied"
    report["MIME-Version"] = "1.0"
    report["Content-Type"] = "multipart/report; report-type=delivery-status"

    text = _human_text(reporting_mta, failed, reason, truncated, unread)
    human = EmailMessage(policy=email_policy.SMTP)
    human.set_content(text, charset="utf-8", cte="quoted-printable")
    human["Content-Description"] = "Notification"

    status = EmailMessage(policy=email_policy.SMTP)
    status["Content-Description"] = "Delivery report"
    status["Content-Type"] = "message/delivery-status"
    blocks = [
        _fields(
            [
                ("Reporting-MTA", f"dns; {reporting_mta}"),
                ("Original-Envelope-Id", _ascii_text(original_envelope_id or "", 100)),
                ("Arrival-Date", format_datetime(arrival_date)),
            ]
        ),
        *(_recipient_fields(f) for f in failed),
    ]
    status.set_payload(list[Message | str](blocks))
    status_text = "\n".join(str(value) for block in blocks for value in block.values())

    original = EmailMessage(policy=email_policy.SMTP)
    header_text = headers.decode("utf-8", "replace")
    # 7bit only for printable ASCII in short lines (RFC 2045 §2.7); else QP.
    plain = all(
        len(line) <= MAX_LINE_OCTETS and all(c == "\t" or " " <= c <= "~" for c in line)
        for line in header_text.split("\r\n")
    )
    original.set_content(
        header_text.replace("\r\n", "\n"),
        subtype="rfc822-headers",
        charset="us-ascii" if plain else "utf-8",
        cte="7bit" if plain else "quoted-printable",
    )
    original["Content-Description"] = "Undelivered message headers"

    for part in (human, status) if unread else (human, status, original):
        del part["MIME-Version"]  # set_content adds it; it belongs only at the top
        report.attach(part)
    report.set_boundary(_boundary(text, status_text, header_text))
    return report.as_bytes()


def original_header_block(message: bytes) -> tuple[bytes, bool]:
    """
    The header block of C{message} with CRLF line ends, cut at a line end to
    fit L{MAX_ORIGINAL_HEADER_BYTES}; and whether it had to be cut.
    """
    lines: list[bytes] = []
    size = 0
    for line in _LINE_END.split(message):
        if not line:
            break
        if size + len(line) + 2 > MAX_ORIGINAL_HEADER_BYTES:
            return b"\r\n".join(lines) + (b"\r\n" if lines else b""), True
        lines.append(line)
        size += len(line) + 2
    return b"\r\n".join(lines) + (b"\r\n" if lines else b""), False


def _human_text(
    reporting_mta: str,
    failed: Sequence[FailedRecipient],
    reason: str,
    truncated: bool,
    unread: bool = False,
) -> str:
    any_failed = any(f.action == "failed" for f in failed)
    lines = [
        f"This is the mail system at {reporting_mta}.",
        "",
        (
            "Your message could not be delivered to the recipients below."
            if any_failed
            else "This is a report on the delivery of your message to the recipients below."
        ),
    ]
    said = _one_line(reason, MAX_DIAGNOSTIC_CHARS)
    if said:
        lines += ["", said]
    lines.append("")
    for f in failed:
        lines.append(f"<{f.address}>: {f.action} (status {f.status})")
        diagnostic = _one_line(f.diagnostic, MAX_DIAGNOSTIC_CHARS)
        if diagnostic:
            said_by = "The remote server said" if _SMTP_REPLY.match(diagnostic) else "Details"
            lines.append(f"    {said_by}: {diagnostic}")
    if unread:
        lines += ["", "Your message could not be read, so nothing of it is included.", ""]
        return "\n".join(lines)
    lines += [
        "",
        "The headers of your message are attached"
        + (" (cut short, as they were very long)." if truncated else "."),
        "The text of your message is not included.",
        "",
    ]
    return "\n".join(lines)


def _recipient_fields(f: FailedRecipient) -> Message:
    diagnostic = _ascii_text(f.diagnostic, MAX_DIAGNOSTIC_CHARS)
    # RFC 3464 §2.3.6: "smtp" only for an SMTP reply; anything else (a timeout,
    # a DNS failure) is our own diagnostic type, as Postfix does with X-Postfix.
    kind = "smtp" if _SMTP_REPLY.match(diagnostic) else "X-Secmail"
    return _fields(
        [
            ("Final-Recipient", f"rfc822; {f.address}"),
            ("Action", f.action),
            ("Status", f.status),
            ("Diagnostic-Code", f"{kind}; {diagnostic}" if diagnostic else ""),
        ]
    )


def _fields(pairs: Sequence[tuple[str, str]]) -> Message:
    block = Message(policy=email_policy.SMTP)
    for name, value in pairs:
        if value:
            block[name] = value
    return block


def _one_line(text: str, limit: int) -> str:
    """Untrusted text as one line for the human-readable part: no control characters."""
    flat = " ".join("".join(" " if c.isspace() or not c.isprintable() else c for c in text).split())
    return flat[:limit]


def _ascii_text(text: str, limit: int) -> str:
    """Untrusted text as one line of printable US-ASCII, as RFC 3464 fields require."""
    chars = (c if " " <= c <= "~" else " " if c.isspace() or ord(c) < 32 else "?" for c in text)
    flat = " ".join("".join(chars).split())
    return flat[:limit]


def _boundary(*contents: str) -> str:
    seed = hashlib.sha256("\0".join(contents).encode("utf-8", "replace")).hexdigest()
    n = 0
    while True:
        boundary = f"=_{seed[:24]}_{n}"
        if not any(boundary in c for c in contents):
            return boundary
        n += 1


def bounce_message(
    routes: RouteSettings, master: MasterKey, to: str, content: bytes, about: str
) -> NewMessage:
    """
    A bounce ready to commit: sealed, from C{<>}, queued on the route for C{to};
    its delivery is recorded on the message it is C{about}.
    """
    return routed_mail(
        routes, master, kind="bounce", sender="", to=to, content=content, about=about
    )
