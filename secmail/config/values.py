"""
Small values made of bits of several sections, for the components that need them.

A component receives its own section or one of these, never the whole L{Settings}: what
it reads is then plain in its signature, and a tenant's own values (its domains, brand and
notification texts) can later be handed in without touching the component.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GatewayIdentity:
    """Who the gateway is when it speaks: in SMTP and on the mail it writes itself."""

    hostname: str
    #: The envelope sender of the gateway's own mail, so that failures come back to it.
    bounce_address: str
    #: The From of notifications and other mail the gateway writes.
    notification_from: str


@dataclass(frozen=True)
class Branding:
    """What a notification and a portal page show of the organisation (per tenant later)."""

    name: str
    colour: str
    logo_file: str
    logo_type: str
    #: Shown on every page and in every notification; a copy made by someone else lacks it.
    verification_phrase: str
    #: The portal's address, without a trailing slash; letter links start with it.
    portal_url: str
    #: The logo's bytes (read once at load time; b"" without a logo): notifications carry it.
    logo: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class Retention:
    """How long secure messages, and the audit trail of what happened to them, are kept."""

    retention_days: int
    #: At least retention_days (checked with the [secure] section).
    audit_days: int


@dataclass(frozen=True)
class NotificationTexts:
    """What a secure recipient's notification says besides the letter's own details."""

    identity: GatewayIdentity
    branding: Branding
    #: Told to the recipient: how long the letter can be read.
    retention_days: int
    #: Whether the letter's subject is shown (the notification travels in the clear).
    shows_subject: bool
