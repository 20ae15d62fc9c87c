# -*- test-case-name: tests.test_cli_messages -*-
"""
C{secmail messages}: find a message by sender, recipient or time, show one message's
recipients and event trail (never its content), withdraw a letter (C{revoke}); and
C{secmail queue show ID}. The work is L{secmail.store.trace.MessageTrace}'s, which the
admin API calls too; this module reads the arguments and prints.
"""

from __future__ import annotations

import argparse
import datetime
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from secmail.cli_db import NO_KEY, CommandError, load_settings, open_db, system_user, wait
from secmail.crypto import MasterKey
from secmail.masking import mask_sms_recipients
from secmail.store.audit import AuditRow
from secmail.store.messages import MessageStore
from secmail.store.rows import short_id
from secmail.store.trace import MessageTrace, TracedMessage, TraceError

#: Relative times: C{--since 2h} is two hours ago.
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
TIME_HELP = (
    "an ISO date or date and time (local time unless it has an offset), or 30m, 2h, 3d, 1w ago"
)


def local_time(timestamp: int) -> str:
    """A time as C{messages} shows it: ISO 8601 in the local time zone, to the second."""
    return datetime.datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


def parse_time(text: str, *, end_of_day: bool = False, now: float | None = None) -> int:
    """
    Unix seconds for an ISO date/time (local time unless it has an offset) or a time ago
    (C{2h}). A date alone is its first second, or with C{end_of_day} its last.
    """
    text = text.strip()
    relative = re.fullmatch(r"(\d+)\s*([smhdw])", text.lower())
    if relative:
        ago = int(relative.group(1)) * _UNITS[relative.group(2)]
        return int((time.time() if now is None else now) - ago)
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time: give {TIME_HELP}") from None
    if end_of_day and re.fullmatch(r"\d{4}-?\d{2}-?\d{2}", text):
        when += datetime.timedelta(days=1, seconds=-1)
    return int(when.timestamp())  # a naive time is local time


def _since(text: str) -> int:
    return parse_time(text)


def _until(text: str) -> int:
    return parse_time(text, end_of_day=True)


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of messages (1 or more)")
    return value


@contextmanager
def _open_trace(args: argparse.Namespace) -> Iterator[MessageTrace]:
    settings = load_settings(args)
    with open_db(args, settings) as db:
        yield MessageTrace(
            db,
            extension=settings.secure.extension,
            default_country_code=settings.secure.default_country_code,
        )


def _traced(call: Any) -> Any:
    """Run a trace call; its refusal is the command's one-line error."""
    try:
        return wait(call)
    except TraceError as e:
        raise CommandError(str(e)) from None


def _summary(message: TracedMessage) -> str:
    states: list[str] = []
    for recipient in message.recipients:
        if recipient.state not in states:
            states.append(recipient.state)
    return ", ".join(states) or "-"


def messages_search(args: argparse.Namespace) -> int:
    with _open_trace(args) as trace:
        found: list[TracedMessage] = _traced(
            trace.search(
                recipient=args.recipient,
                sender=args.sender,
                since=args.since,
                until=args.until,
                limit=args.limit,
            )
        )
    if not found:
        print("No message matches.")
        return 0
    width = max(len("SENDER"), *(len(m.sender or "<>") for m in found))
    print(
        f"{'ID':<10}  {'RECEIVED':<25}  {'SENDER':<{width}}  {'RCPTS':>5}  "
        "FIRST RECIPIENT  [STATES]"
    )
    for m in found:
        first = m.recipients[0].address if m.recipients else "-"
        print(
            f"{m.short_id:<10}  {local_time(m.received):<25}  {m.sender or '<>':<{width}}  "
            f"{len(m.recipients):>5}  {first}  [{_summary(m)}]"
        )
    if len(found) == args.limit:
        print(f"(the newest {args.limit}; --limit N shows more)")
    return 0


def messages_show(args: argparse.Namespace) -> int:
    with _open_trace(args) as trace:
        message: TracedMessage = _traced(trace.message(args.id))
    print(f"Message   {message.id} ({message.short_id})")
    print(f"Received  {local_time(message.received)}")
    print(f"Sender    <{message.sender}>")
    print(f"Kind      {message.kind}")
    for event in message.events:
        print(f"  {local_time(event.at)}  {event.kind}: {event.detail}")
    for recipient in message.recipients:
        print()
        print(f"Recipient {recipient.address}")
        print(f"  level {recipient.level}, state {recipient.state}")
        if recipient.envelope_id is not None:
            print(f"  envelope {recipient.envelope_id}")
        for event in recipient.events:
            print(f"  {local_time(event.at)}  {event.kind}: {event.detail}")
    return 0


def messages_revoke(args: argparse.Namespace) -> int:
    now = int(time.time())
    audit = AuditRow(at=now, admin=system_user(), address="local", action="revoked")
    with _open_trace(args) as trace:
        revoked: list[str] = _traced(trace.revoke(args.id, args.recipient, now=now, audit=audit))
        message: TracedMessage = _traced(trace.message(args.id))
    secure = [r for r in message.recipients if r.secure]
    if not revoked:
        print(f"Message {message.short_id} was already withdrawn from those recipients.")
        return 0
    for recipient in secure:
        if recipient.envelope_id in revoked:
            print(f"Withdrawn: {recipient.address} ({recipient.level}); the link now says so.")
    if any(e.kind == "content deleted" for e in message.events):
        print(f"Message {message.short_id}: its content is deleted.")
    elif any(r.state != "revoked" for r in secure):
        print(f"Message {message.short_id}: kept for the recipients who can still read it.")
    else:
        print(
            f"Message {message.short_id}: its content is deleted when its relayed copy "
            "has been delivered."
        )
    return 0


def queue_show(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    with open_db(args, settings) as db:
        found = wait(MessageStore(db, MasterKey(NO_KEY)).queue_row(args.id))
    if found is None:
        raise CommandError(f"queue row {args.id} does not exist (see: secmail queue list)")
    item, lease_owner, lease_until = found
    recipients, last_error = list(item.recipients), item.last_error
    if item.kind == "sms":  # an SMS by e-mail: the address is the phone number
        recipients, last_error = mask_sms_recipients(recipients, last_error)
    about = "" if item.about == item.message_id else f" (about message {short_id(item.about)})"
    lease = "-"
    if lease_owner is not None and lease_until is not None:
        lease = f"{lease_owner} until {local_time(lease_until)}"
    for name, value in (
        ("Row", str(item.id)),
        ("Message", f"{short_id(item.message_id)}{about}"),
        ("Kind", item.kind),
        ("State", item.state),
        ("Sender", f"<{item.sender}>"),
        ("Recipients", ", ".join(recipients)),
        ("Route", item.route + (f" (domain {item.domain})" if item.domain else "")),
        ("Queued", f"{local_time(item.created)} ({age(int(time.time()) - item.created)} ago)"),
        ("Attempts", str(item.attempts)),
        ("Next try", "-" if item.quarantined is not None else local_time(item.next_attempt)),
        ("Last error", last_error or "-"),
        ("Lease", lease),
        ("Quarantined", "-" if item.quarantined is None else local_time(item.quarantined)),
        ("Failures to", item.notify or "nobody"),
    ):
        print(f"{name + ':':<13}{value}")
    return 0


def age(seconds: int) -> str:
    """A short age for tables: 45s, 12m, 3h, 2d."""
    seconds = max(seconds, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def add_messages_command(sub: Any, own: list[argparse.ArgumentParser]) -> None:
    """C{secmail messages [show ID | revoke ID]} on the command's subparsers."""
    m = sub.add_parser(
        "messages",
        parents=own,
        help="find messages by sender, recipient or time; show one's trail; withdraw a letter",
        description="Without a subcommand: the newest messages that match, newest first.",
    )
    m.add_argument("--sender", metavar="ADDRESS", help="the envelope sender (<> for none)")
    m.add_argument(
        "--recipient", metavar="ADDRESS", help="a recipient: the real address or its marked form"
    )
    m.add_argument(
        "--since", metavar="TIME", type=_since, help=f"received at or after: {TIME_HELP}"
    )
    m.add_argument(
        "--until", metavar="TIME", type=_until, help="received at or before (a date: its end)"
    )
    m.add_argument("--limit", metavar="N", type=_limit, default=100, help="at most N (100)")
    m.set_defaults(run=messages_search)
    msub = m.add_subparsers(dest="action", required=False)
    show = msub.add_parser(
        "show", parents=own, help="one message's recipients and event trail (never content)"
    )
    show.add_argument("id", help="the short id, the full message id or an envelope id")
    show.set_defaults(run=messages_show)
    revoke = msub.add_parser(
        "revoke",
        parents=own,
        help="withdraw a letter: its link says so, its content is deleted",
    )
    revoke.add_argument("id", help="the short id, the full message id or an envelope id")
    # SUPPRESS: "messages --recipient A revoke ID" keeps A, never widens to every recipient.
    revoke.add_argument(
        "--recipient",
        metavar="ADDRESS",
        default=argparse.SUPPRESS,
        help="only this recipient (default: every secure one)",
    )
    revoke.set_defaults(run=messages_revoke)


def add_queue_show(qsub: Any, own: list[argparse.ArgumentParser]) -> None:
    s = qsub.add_parser("show", parents=own, help="one queue row whole")
    s.add_argument("id", type=int)
    s.set_defaults(run=queue_show)
