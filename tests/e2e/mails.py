"""Mail in the sinks: unique names for a test's messages; notifications and their link."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable

from tests.e2e.harness import Gateway, SinkMessage


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


def msgid(prefix: str) -> str:
    return f"<{unique(prefix)}@corp.example>"


def is_notification_sender(gw: Gateway, sender: str) -> bool:
    """Notifications come from the bounce address, tagged with their envelope (VERP)."""
    return (
        re.fullmatch(rf"secmail-bounces\+[0-9a-f]{{32}}@{re.escape(gw.hostname)}", sender)
        is not None
    )


def notification_for(gw: Gateway, address: str) -> Callable[[SinkMessage], bool]:
    def match(m: SinkMessage) -> bool:
        return is_notification_sender(gw, m.mail_from) and m.rcpt_tos == (address,)

    return match


def text_parts(message: SinkMessage) -> list[str]:
    """Every text part, decoded (quoted-printable can hide a string from a byte search)."""
    texts = []
    for part in message.parsed().walk():
        if part.get_content_maintype() == "text":
            texts.append(str(part.get_content()))
    return texts


def link_token(gw: Gateway, notification: SinkMessage) -> str:
    pattern = re.compile(re.escape(gw.portal_url) + r"/m/([A-Za-z0-9_-]+)")
    for text in text_parts(notification):
        m = pattern.search(text)
        if m:
            return m.group(1)
    raise AssertionError(f"no {gw.portal_url}/m/<token> link in the notification")
