"""
What a message is: per recipient, relayed in the clear or kept as a secure letter,
and which route its mail (or, for secure recipients, its notification) takes.

Pure functions of the envelope, the subject and the settings, so the SMTP intake
can ask at C{RCPT TO} (L{check_recipient}) and again after C{DATA} (L{decide})
and every rule is testable without a network or a database.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from secmail.address import AddressError, Level, Recipient
from secmail.config import Route, Settings


@dataclass(frozen=True)
class Decision:
    """How one recipient is served and where its outbound mail goes."""

    recipient: Recipient
    route: Route

    @property
    def secure(self) -> bool:
        """Whether the content stays in the portal and only a notification is sent."""
        return self.recipient.level is not Level.PLAIN


@dataclass(frozen=True)
class MessagePolicy:
    """The decisions for one message, in the order of its recipients."""

    decisions: tuple[Decision, ...]
    subject_keyword_found: bool

    @property
    def secure_recipients(self) -> tuple[Decision, ...]:
        """Decisions for the recipients who get a notification instead of the message."""
        return tuple(d for d in self.decisions if d.secure)

    @property
    def plain_recipients(self) -> tuple[Decision, ...]:
        """Decisions for the recipients the message is relayed to unchanged."""
        return tuple(d for d in self.decisions if not d.secure)


def check_recipient(recipient: Recipient, settings: Settings) -> None:
    """
    Refuse at C{RCPT TO} what the mode does not let through.

    In mode C{"marked"} the mail server is meant to send only marked mail here;
    an unmarked outside recipient means a routing mistake upstream, and relaying
    it would silently send in the clear what may have been meant to be secure.
    Unmarked mail to our own (incoming) domains still passes, e.g. bounces and
    replies to our senders.
    """
    if settings.secure.mode != "marked" or recipient.level is not Level.PLAIN:
        return
    if settings.routes.is_incoming(recipient.domain):
        return
    local, _, domain = recipient.address.rpartition("@")
    marked = f"{local}@{domain}{settings.secure.extension}"
    raise AddressError(
        550,
        '5.7.1 Only marked secure mail is accepted here (mode "marked"); '
        f"to send securely write {marked}, or send plain mail through another route",
    )


def decide(
    recipients: Sequence[Recipient], subject: str | None, settings: Settings
) -> MessagePolicy:
    """
    Decide each recipient of one message.

    Recipients are expected to have passed L{check_recipient}; this does not
    refuse anything. In mode C{"all"} the subject keyword makes every unmarked
    outside recipient a letter; recipients in our own domains stay plain, as the
    mail never leaves the organisation.
    """
    keyword = settings.secure.subject_keyword
    found = (
        settings.secure.mode == "all" and subject is not None and _keyword_found(subject, keyword)
    )
    decisions = []
    for recipient in recipients:
        if (
            found
            and recipient.level is Level.PLAIN
            and not settings.routes.is_incoming(recipient.domain)
        ):
            recipient = replace(recipient, level=Level.LETTER)
        decisions.append(Decision(recipient, settings.routes.for_domain(recipient.domain)))
    return MessagePolicy(decisions=tuple(decisions), subject_keyword_found=found)


def strip_subject_keyword(subject: str, keyword: str) -> str:
    """
    Remove every occurrence of C{keyword} (any case) and the spaces it leaves.

    The keyword is an instruction to the gateway, not part of the message, and
    recipients should not see it in the portal.
    """
    pattern = _keyword_pattern(keyword)
    if pattern is None:
        return subject
    if pattern.search(subject) is None:
        return subject
    spaced = re.compile(rf"[ \t]*(?:{pattern.pattern}[ \t]*)+", pattern.flags)
    return spaced.sub(" ", subject).strip()


def _keyword_found(subject: str, keyword: str) -> bool:
    pattern = _keyword_pattern(keyword)
    return pattern is not None and pattern.search(subject) is not None


def _keyword_pattern(keyword: str) -> re.Pattern[str] | None:
    """
    The keyword as a case-insensitive pattern, or None when there is none.

    Where the keyword begins or ends with a word character it must not run into
    another one, so the keyword C{secure} does not match C{insecure} or
    C{securely}; a bracketed keyword such as C{[secure]} matches anywhere.
    """
    keyword = keyword.strip()
    if not keyword:
        return None
    text = re.escape(keyword)
    if re.match(r"\w", keyword[0]):
        text = r"(?<!\w)" + text
    if re.match(r"\w", keyword[-1]):
        text = text + r"(?!\w)"
    return re.compile(text, re.IGNORECASE)
