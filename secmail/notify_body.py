"""
What a notification says, and how its HTML part looks in a mail client.

Both parts tell the same L{Facts} in the same order. The HTML is laid out as mail clients
need it (nested tables, inline styles, at most 600 pixels wide) in the portal's colours,
with the organisation's logo as an inline part of the mail: nothing is fetched from
anywhere but the portal link itself.
"""

from __future__ import annotations

import base64
import hashlib
import html
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from secmail.config import PortalSettings

# The portal's colours (web/static/portal.css), and the notification's logo size.
_TEXT = "#1d2330"
_MUTED = "#5b6474"
_FONT = "-apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"
LOGO_HEIGHT = 40
LOGO_MAX_WIDTH = 200
DEFAULT_BRAND = PortalSettings().brand_name
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


@dataclass(frozen=True)
class Facts:
    """What a notification tells, in the order both its parts tell it (plain strings)."""

    brand: str
    #: Who vouches for the verification phrase: the brand, or "the sender's organisation".
    organisation: str
    sent_by: str
    link: str
    instructions: str
    until: str
    phrase: str
    hostname: str


def text_body(facts: Facts) -> str:
    return "\n".join(
        [
            facts.brand,
            "",
            "Hello,",
            "",
            f"{facts.sent_by} a secure message. It is not delivered by e-mail but kept "
            "encrypted for you, and you can read it on the secure web page:",
            "",
            facts.link,
            "",
            facts.instructions,
            "",
            f"You can read the message until {facts.until}. It is then deleted. "
            "You can reply to it securely on the same page.",
            "",
            *(
                [f"The sender's verification phrase: «{facts.phrase}»", vouch(facts), ""]
                if facts.phrase
                else []
            ),
            "We never ask for your password. If you did not expect this message, "
            "you can ignore this e-mail.",
            "",
            "-- ",
            f"This notification was sent by the secure e-mail gateway {facts.hostname}.",
            "",
        ]
    )


def html_body(facts: Facts, colour: str, logo: InlineLogo | None) -> str:
    """
    The same facts as the text part, in the same order, laid out as mail clients show
    HTML: nested tables, inline styles only, at most 600 pixels wide, the brand colour as
    a header bar and a button; the logo (if any) from the mail itself, nothing remote.
    """
    return "\n".join(lines for lines, _ in html_lines(facts, colour, logo))


def html_lines(facts: Facts, colour: str, logo: InlineLogo | None) -> list[tuple[str, bool]]:
    """
    L{html_body} as runs of lines (to be joined with line breaks), each with whether it is
    the same in every notification of the organisation (then its encoding can be kept: it
    holds nothing of one letter).
    """
    frame = _html_frame(facts.brand, vouch(facts), facts.phrase, facts.hostname, colour, logo)
    e = html.escape
    own = {
        "sent_by": e(facts.sent_by),
        "link": e(facts.link),
        "instructions": e(facts.instructions),
        # The date and the time each one unit: a line may break only between them.
        "until": e(facts.until).replace(" ", "\u00a0").replace(",\u00a0", ", "),
    }
    # A line with places alternates fixed markup with the names of this mail's facts.
    return [
        (lines, True)
        if places is None
        else ("".join(own[piece] if i % 2 else piece for i, piece in enumerate(places)), False)
        for lines, places in frame
    ]


@lru_cache(maxsize=8)
def _html_frame(
    brand: str, vouched: str, phrase: str, hostname: str, colour: str, logo: InlineLogo | None
) -> tuple[tuple[str, tuple[str, ...] | None], ...]:
    """
    The page of an organisation's notifications, made once: runs of fixed lines, and each
    line with places for one mail's own (escaped) facts also split at them, their names at
    the odd positions. The configuration's values never hold a NUL (they are printable),
    so it marks the places.
    """
    e = html.escape
    on = _text_on(colour)
    font = f"font-family: {_FONT};"
    image = (
        f'<img src="cid:{e(logo.cid)}" width="{logo.width}" height="{logo.height}" alt="" '
        f'style="display: inline-block; vertical-align: middle; border: 0; '
        f'width: {logo.width}px; height: {logo.height}px; margin-right: 12px;">'
        if logo is not None
        else ""
    )
    phrase_box = (
        [
            '<table role="presentation" width="100%" cellpadding="0" cellspacing="0" '
            'border="0" style="margin: 0 0 16px;"><tr>'
            f'<td style="background-color: #f4f5f7; border-left: 4px solid {colour}; '
            f'padding: 12px 16px; {font} font-size: 15px; line-height: 22px; color: {_TEXT};">'
            f"The sender's verification phrase: <strong>«{e(phrase)}»</strong><br>"
            f'<span style="color: {_MUTED};">{e(vouched)}</span>'
            "</td></tr></table>"
        ]
        if phrase
        else []
    )
    paragraph = '<p style="margin: 0 0 16px;">'
    page = "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            '<head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            '<meta name="color-scheme" content="light">',
            f"<title>Secure message from {e(brand)}</title></head>",
            '<body style="margin: 0; padding: 0; background-color: #f4f5f7;">',
            '<table role="presentation" width="100%" cellpadding="0" cellspacing="0" '
            'border="0" style="background-color: #f4f5f7;"><tr>',
            '<td align="center" style="padding: 24px 12px;">',
            '<table role="presentation" width="600" cellpadding="0" cellspacing="0" border="0" '
            'style="width: 100%; max-width: 600px; background-color: #ffffff; '
            'border: 1px solid #dfe3ea;">',
            f'<tr><td bgcolor="{colour}" style="background-color: {colour}; padding: 16px 24px; '
            f'{font} font-size: 20px; line-height: 28px; font-weight: bold; color: {on};">'
            f'{image}<span style="vertical-align: middle;">{e(brand)}</span></td></tr>',
            f'<tr><td style="padding: 24px; {font} font-size: 16px; line-height: 24px; '
            f'color: {_TEXT};">',
            f"{paragraph}Hello,</p>",
            # A letter's own facts stand on short lines of their own (a line break is a
            # space to HTML): only those lines are encoded for each mail.
            paragraph,
            "\0sent_by\0 a secure message.",
            "It is not delivered by e-mail but kept encrypted for you, and you can read it "
            "on the secure web page:</p>",
            '<table role="presentation" cellpadding="0" cellspacing="0" border="0" '
            'style="margin: 0 0 16px;"><tr>'
            f'<td bgcolor="{colour}" style="background-color: {colour}; border-radius: 6px;">',
            '<a href="\0link\0"',
            f'style="display: inline-block; padding: 12px 24px; {font} font-size: 16px; '
            f'font-weight: bold; color: {on}; text-decoration: none; border-radius: 6px;">'
            "Open the secure message</a></td></tr></table>",
            f'<p style="margin: 0 0 16px; font-size: 14px; line-height: 20px; color: {_MUTED};">'
            "If the button does not work, copy this address into your browser:<br>"
            f'<span style="color: {_TEXT}; word-break: break-all;">',
            "\0link\0</span></p>",
            paragraph,
            "\0instructions\0</p>",
            paragraph,
            "<strong>You can read the message until \0until\0.</strong>",
            "It is then deleted. You can reply to it securely on the same page.</p>",
            *phrase_box,
            '<p style="margin: 0;">We never ask for your password. If you did not expect '
            "this message, you can ignore this e-mail.</p>",
            "</td></tr>",
            '<tr><td style="padding: 16px 24px; border-top: 1px solid #dfe3ea; '
            f'{font} font-size: 13px; line-height: 18px; color: {_MUTED};">'
            "This notification was sent by the secure e-mail gateway "
            f"{e(hostname)}.</td></tr>",
            "</table>",
            "</td></tr></table>",
            "</body>",
            "</html>",
            "",
        ]
    )
    if page.count("\0") != 10:  # five places: only a NUL in a configured value adds one
        raise ValueError("the brand name, phrase and host name must not contain a NUL")
    frame: list[tuple[str, tuple[str, ...] | None]] = []
    fixed: list[str] = []
    for line in page.split("\n"):
        if "\0" in line:
            if fixed:
                frame.append(("\n".join(fixed), None))
                fixed = []
            frame.append((line, tuple(line.split("\0"))))
        else:
            fixed.append(line)
    frame.append(("\n".join(fixed), None))
    return tuple(frame)


def vouch(facts: Facts) -> str:
    """What the verification phrase proves, said to an outsider."""
    return (
        f"A genuine message from {facts.organisation} shows this phrase, here and on the "
        "secure web page."
    )


def readable_until(date: datetime, days: int) -> str:
    """
    The moment a letter made at C{date} is deleted, C{days} later, as an English date and
    time in UTC (the retention job deletes it within the following hour).
    """
    end = date.astimezone(UTC) + timedelta(days=days)
    return f"{end.day} {_MONTHS[end.month - 1]} {end.year}, {end:%H:%M} UTC"


@lru_cache(maxsize=8)
def _text_on(colour: str) -> str:
    """White, or the text colour, whichever stands out more on C{colour} (#rrggbb)."""
    return _TEXT if _contrast(colour, "#ffffff") < _contrast(colour, _TEXT) else "#ffffff"


def _contrast(a: str, b: str) -> float:
    """The WCAG contrast ratio of two #rrggbb colours."""
    la, lb = sorted((_luminance(a), _luminance(b)))
    return (lb + 0.05) / (la + 0.05)


def _luminance(colour: str) -> float:
    def channel(hex_digits: str) -> float:
        c = int(hex_digits, 16) / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(colour[i : i + 2]) for i in (1, 3, 5))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


@dataclass(frozen=True)
class InlineLogo:
    """The logo as a part of a C{multipart/related}: its Content-ID and shown size."""

    cid: str
    width: int
    height: int
    part: str


@lru_cache(maxsize=8)
def inline_logo(data: bytes, media_type: str, hostname: str) -> InlineLogo:
    """
    The logo's MIME part (base64, CRLF), made once per logo rather than per mail: the
    bytes were read at load time and their hash is kept by the bytes object.
    """
    cid = f"logo.{hashlib.sha256(data).hexdigest()[:16]}@{hostname}"
    width, height = shown_size(image_size(data))
    subtype = media_type.partition("/")[2]
    part = (
        f"Content-Type: {media_type}\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        f"Content-ID: <{cid}>\r\n"
        f'Content-Disposition: inline; filename="logo.{subtype}"\r\n\r\n'
        + base64.encodebytes(data).decode("ascii").replace("\n", "\r\n")
    )
    return InlineLogo(cid, width, height, part)


def shown_size(size: tuple[int, int] | None) -> tuple[int, int]:
    """The logo's size in the header bar: 40 pixels high, at most 200 wide, its proportions."""
    if size is None:
        return LOGO_HEIGHT, LOGO_HEIGHT
    width, height = size
    shown = (max(1, round(width * LOGO_HEIGHT / height)), LOGO_HEIGHT)
    if shown[0] > LOGO_MAX_WIDTH:
        shown = (LOGO_MAX_WIDTH, max(1, round(height * LOGO_MAX_WIDTH / width)))
    return shown


def image_size(data: bytes) -> tuple[int, int] | None:
    """A PNG's or JPEG's (width, height) from its header; None if it cannot be found."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return (width, height) if width and height else None
    if not data.startswith(b"\xff\xd8"):
        return None
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return (width, height) if width and height else None
        else:
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None
