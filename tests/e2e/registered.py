"""Registered letters (PIN by SMS): sending one, the recipient's number, the PIN text."""

from __future__ import annotations

import re
from dataclasses import dataclass

from tests.e2e.harness import Gateway, SmtpSink, make_message
from tests.e2e.mails import link_token, msgid, notification_for, unique

SENDER = "alice@corp.example"
#: The national number in the registered-letter address, in international form, and masked
#: as the portal shows it (default_country_code 358).
NATIONAL = "0401234567"
NUMBER = "+358401234567"
MASKED = "+358 40 *** **67"
#: The built-in English PIN text, with "Secure mail" the default brand_name.
PIN_TEXT = re.compile(
    r"Secure mail: your PIN is (\d{6})\. It works for 10 minutes\. Do not share it\."
)


@dataclass(frozen=True)
class RegisteredLetter:
    recipient: str  # the real address, without the number and the marking
    subject: str
    body: str
    token: str


def send_registered(gw: Gateway, internet: SmtpSink, name: str = "carol") -> RegisteredLetter:
    """Send a registered letter to <name>@partner.example.0401234567.s; its link's token."""
    local = unique(name)
    recipient = f"{local}@partner.example"
    subject = unique("Registered subject Tapir")
    body = unique("The registered body says Quetzal")
    refused = gw.send(
        SENDER,
        [f"{local}@partner.example.{NATIONAL}.s"],
        make_message(
            sender=SENDER, to=recipient, subject=subject, message_id=msgid("reg"), body=body
        ),
    )
    assert refused == {}
    notification = internet.wait_for_message(
        notification_for(gw, recipient), what=f"the notification to {recipient}"
    )
    for secret in (subject, body):
        assert secret.encode() not in notification.data
    return RegisteredLetter(recipient, subject, body, link_token(gw, notification))


def pin_of(text: str) -> str:
    """The PIN in an SMS text, which must be exactly the built-in English text."""
    found = PIN_TEXT.fullmatch(text)
    assert found is not None, f"unexpected SMS text {text!r}"
    return found.group(1)


def wrong(pin: str) -> str:
    return f"{(int(pin) + 1) % 10**6:06d}"
