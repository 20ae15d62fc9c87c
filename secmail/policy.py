"""
What a message is: per recipient, relayed in the clear or kept as a secure letter,
and which route its mail (or, for secure recipients, its notification) takes.

Pure functions of the envelope, the subject and the C{[routes]} and C{[secure]} sections,
so the SMTP intake can ask at C{RCPT TO} (L{check_recipient}) and again after C{DATA}
(L{decide}) and every rule is testable without a network or a database.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from secmail.address import AddressError, Level, Recipient
from secmail.config import Route, RouteSettings, SecureSettings


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


def check_recipient(recipient: Recipient, routes: RouteSettings, secure: SecureSettings) -> None:
    """
    Refuse at C{RCPT TO} what the mode does not let through.

    In mode C{"marked"} the mail server is meant to send only marked mail here;
    an unmarked outside recipient means a routing mistake upstream, and relaying
    it would silently send in the clear what may have been meant to be secure.
    Unmarked mail to our own (incoming) domains still passes, e.g. bounces and
    replies to our senders, and so does the bare C{postmaster} (RFC 5321 section
    4.5.1), which is ours and goes to the internal mail server, if there is one.
    """
    if not recipient.domain:
        incoming = routes.incoming
        if incoming is None or incoming.mx:
            raise AddressError(
                550,
                "5.1.1 <postmaster> without a domain goes to the internal mail server, and "
                "none is set up here ([routes] incoming); write postmaster@your.domain",
            )
        return
    if secure.mode != "marked" or recipient.level is not Level.PLAIN:
        return
    if routes.is_incoming(recipient.domain):
        return
    local, _, domain = recipient.address.rpartition("@")
    marked = f"{local}@{domain}{secure.extension}"
    raise AddressError(
        550,
        '5.7.1 Only marked secure mail is accepted here (mode "marked"); '
        f"to send securely write {marked}, or send plain mail through another route",
    )


def decide(
    recipients: Sequence[Recipient],
    subject: str | Sequence[str] | None,
    routes: RouteSettings,
    secure: SecureSettings,
) -> MessagePolicy:
    """
    Decide each recipient of one message.

    Recipients are expected to have passed L{check_recipient}; this does not
    refuse anything. In mode C{"all"} the subject keyword makes every unmarked
    outside recipient a letter; recipients in our own domains stay plain, as the
    mail never leaves the organisation. C{subject} is the Subject, or several
    texts: a message may carry several Subject fields, each read more than one
    way, and the keyword in any of them counts, since some reader may show it.
    """
    keyword = secure.subject_keyword
    subjects = [] if subject is None else [subject] if isinstance(subject, str) else subject
    found = secure.mode == "all" and any(_keyword_found(s, keyword) for s in subjects)
    decisions = []
    for recipient in recipients:
        if found and recipient.level is Level.PLAIN and not _internal(recipient, routes):
            recipient = replace(recipient, level=Level.LETTER)
        decisions.append(Decision(recipient, _route(recipient, routes)))
    return MessagePolicy(decisions=tuple(decisions), subject_keyword_found=found)


def _internal(recipient: Recipient, routes: RouteSettings) -> bool:
    """Mail that stays in the organisation: our domains, and the bare C{postmaster}."""
    return not recipient.domain or routes.is_incoming(recipient.domain)


def _route(recipient: Recipient, routes: RouteSettings) -> Route:
    """The bare C{postmaster} has no domain to route by: it is the internal mail server's."""
    if not recipient.domain and routes.incoming is not None:
        return routes.incoming
    return routes.for_domain(recipient.domain)


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
