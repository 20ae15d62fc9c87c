"""The C{[portal]} table: the web portal's listener, address, branding and D-Compose limits."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from secmail.config._base import (
    LANGUAGES,
    ConfigError,
    Schema,
    as_endpoints,
    as_mailbox,
    as_nonempty,
    as_positive_int,
    as_str,
    as_str_list,
)
from secmail.config.routes import RouteSettings

#: Logo formats by their first bytes. Not SVG: an SVG can carry script.
LOGO_TYPES = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg"}
MAX_PHRASE_CHARS = 40
#: Every notification carries the logo inline, so it has to stay small.
MAX_LOGO_BYTES = 100_000


@dataclass(frozen=True)
class PortalSettings:
    listen: tuple[str, ...] = ("ssl:8443:interface=127.0.0.1",)
    url: str = "https://localhost:8443"
    compose_directory: tuple[str, ...] = ()
    max_upload_size: int = 10_240_000
    brand_name: str = "Secure mail"
    brand_colour: str = "#1f5fae"
    logo_file: str = ""
    #: The logo's media type (image/png or image/jpeg), found from its bytes at load time.
    logo_type: str = ""
    #: The logo's bytes, read once at load time: every notification carries them inline.
    logo: bytes = field(default=b"", repr=False)
    verification_phrase: str = ""
    languages: tuple[str, ...] = LANGUAGES
    #: D-Compose code mails: to one mailbox (lower-cased, +tag removed) in 24 hours, for
    #: one client (IPv4 address or IPv6 /64) in an hour, and to everyone in an hour / a day.
    compose_codes_per_mailbox: int = 5
    compose_codes_per_client: int = 10
    compose_codes_per_hour: int = 60
    compose_codes_per_day: int = 300


def _url(value: Any) -> str:
    text = as_nonempty(value).strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{text!r} must be a URL such as https://secmail.example.com")
    return text


def _colour(value: Any) -> str:
    text = as_str(value).strip()
    if not re.fullmatch(r"#[0-9a-fA-F]{6}", text):
        raise ValueError(f"{value!r} must be a colour written #rrggbb, such as #1f5fae")
    return text.lower()


def _brand_name(value: Any) -> str:
    text = " ".join(as_nonempty(value).split())
    if len(text) > 60 or not text.isprintable():
        raise ValueError(f"{value!r} must be one line of at most 60 printable characters")
    return text


def _phrase(value: Any) -> str:
    text = " ".join(as_str(value).split())
    if len(text) > MAX_PHRASE_CHARS or not text.isprintable():
        raise ValueError(
            f"must be one line of at most {MAX_PHRASE_CHARS} printable characters, "
            f"got {len(text)} characters"
        )
    return text


def _languages(value: Any) -> tuple[str, ...]:
    items = as_str_list(value)
    if not items:
        raise ValueError(f"must name at least one of {', '.join(LANGUAGES)}")
    for item in items:
        if item not in LANGUAGES:
            raise ValueError(f"{item!r} is not one of {', '.join(LANGUAGES)}")
    return tuple(dict.fromkeys(items))


def _directory(value: Any) -> tuple[str, ...]:
    return tuple(as_mailbox(a) for a in as_str_list(value))


def logo_type(path: str) -> str:
    """The logo's media type from its first bytes; ValueError unless it is a PNG or JPEG."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise ValueError(f"cannot read {path!r}: {e.strerror or e}") from None
    for magic, media_type in LOGO_TYPES.items():
        if head.startswith(magic):
            return media_type
    raise ValueError(f"{path!r} is not a PNG or JPEG image (SVG and other formats are refused)")


def _logo_bytes(path: str) -> bytes:
    """The logo's bytes; ValueError if it is too big to go inline in every notification."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_LOGO_BYTES + 1)
    except OSError as e:
        raise ValueError(f"cannot read {path!r}: {e.strerror or e}") from None
    if len(data) > MAX_LOGO_BYTES:
        raise ValueError(
            f"{path!r} is larger than {MAX_LOGO_BYTES // 1000} kB; every notification carries "
            "the logo, so use a smaller image (a logo 40 pixels high is enough)"
        )
    return data


SCHEMA: Schema = {
    "portal": {
        "listen": as_endpoints,
        "url": _url,
        "compose_directory": _directory,
        "max_upload_size": as_positive_int,
        "brand_name": _brand_name,
        "brand_colour": _colour,
        "logo_file": as_str,
        "verification_phrase": _phrase,
        "languages": _languages,
        "compose_codes_per_mailbox": as_positive_int,
        "compose_codes_per_client": as_positive_int,
        "compose_codes_per_hour": as_positive_int,
        "compose_codes_per_day": as_positive_int,
    },
}


def build_portal(values: dict[str, Any], routes: RouteSettings) -> PortalSettings:
    """
    The section from its checked keys: the logo read for its type, the code limits
    consistent, and the compose directory within the organisation's own domains.
    """
    portal = replace(PortalSettings(), **values)
    if portal.logo_file:
        try:
            portal = replace(
                portal,
                logo_file=os.path.abspath(portal.logo_file),
                logo_type=logo_type(portal.logo_file),
                logo=_logo_bytes(portal.logo_file),
            )
        except ValueError as e:
            raise ConfigError(f"portal.logo_file: {e}") from None
    if portal.compose_codes_per_day < portal.compose_codes_per_hour:
        raise ConfigError(
            f"portal.compose_codes_per_day: {portal.compose_codes_per_day} is less than "
            f"portal.compose_codes_per_hour ({portal.compose_codes_per_hour}); raise it"
        )
    outside = [a for a in portal.compose_directory if not routes.is_incoming(a.rpartition("@")[2])]
    if outside:
        raise ConfigError(
            f"portal.compose_directory: {', '.join(outside)} not in routes.incoming_domains; "
            "outsiders may only write to the organisation's own addresses"
        )
    return portal
