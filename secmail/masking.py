"""
Numbers and secrets as they may be shown: in log lines, events, the CLI and
C{secmail check-config}. Pure functions, imported by everyone who shows such a value,
so each secret is hidden one way everywhere.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

#: E.164 country codes shorter than three digits; every other code has three.
_SHORT_COUNTRY_CODES = frozenset(
    "1 7 20 27 30 31 32 33 34 36 39 40 41 43 44 45 46 47 48 49 51 52 53 54 55 56 57 58"
    " 60 61 62 63 64 65 66 81 82 84 86 90 91 92 93 94 95 98".split()
)
#: A template's placeholder, such as C{{to}}: shown, as it is no secret.
_PLACEHOLDER = re.compile(r"\{\w+\}")


def mask_number(number: str) -> str:
    """
    A phone number fit for a log line: country code, two digits and the last two,
    C{+358401234567} as C{+358 40 *** **67}. Anything not shaped like a number is
    hidden whole.
    """
    digits = number.replace(" ", "")
    if not re.fullmatch(r"\+[0-9]{4,15}", digits):
        return "***"
    digits = digits[1:]
    cc_len = next(n for n in (1, 2, 3) if n == 3 or digits[:n] in _SHORT_COUNTRY_CODES)
    cc, national = digits[:cc_len], digits[cc_len:]
    if len(national) < 5:
        return f"+{cc} ***"
    if len(national) < 7:
        return f"+{cc} ***" + national[-2:]
    hidden = len(national) - 4
    groups = ["*" * min(3, hidden - i) for i in range(0, hidden, 3)]
    groups[-1] += national[-2:]
    return f"+{cc} {national[:2]} " + " ".join(groups)


def mask_sms_recipients(recipients: Sequence[str], text: str = "") -> tuple[list[str], str]:
    """
    The addresses of an SMS sent by e-mail (C{358401234567@sms.example}) with the number
    masked as L{mask_number} does, and C{text} with those numbers masked too.
    """
    shown = []
    for address in recipients:
        local, at, domain = address.rpartition("@")
        if at and local.isdigit():
            masked = mask_number("+" + local)
            text = text.replace(local, masked)
            address = f"{masked}@{domain}"
        shown.append(address)
    return shown, text


def mask_pin(pin: Any) -> str:
    return "***" if pin else ""


def mask_dsn(dsn: str) -> str:
    """A database URL without its password."""
    parts = urlsplit(dsn)
    if parts.password:
        netloc = parts.netloc.replace(":" + parts.password + "@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return dsn


def mask_url(url: Any) -> str:
    """
    The URL without its password, or without its user when it stands alone (an API key), and
    without its query values (Kannel takes them there); placeholders kept.
    """
    parts = urlsplit(str(url))
    netloc = parts.netloc
    if "@" in netloc:
        credentials, _, host = netloc.rpartition("@")
        user, colon, _ = credentials.partition(":")
        # A user with a password is a name; alone before the @ it is usually an API key.
        netloc = (f"{user}:***@" if colon else "***@") + host
    return parts._replace(netloc=netloc, query=mask_form(parts.query)).geturl()


def mask_form(query: str) -> str:
    """C{name=value&...} with every value but a placeholder hidden."""
    shown = []
    for item in query.split("&") if query else []:
        name, eq, value = item.partition("=")
        shown.append(name + eq + (value if _PLACEHOLDER.fullmatch(value) or not eq else "***"))
    return "&".join(shown)


def mask_body(body: Any) -> Any:
    """A form or JSON body template, its values hidden (API keys go there), placeholders kept."""
    if not isinstance(body, str):
        return body
    if body.lstrip()[:1] not in ("{", "["):
        return mask_form(body)

    def hide(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: hide(v) for k, v in value.items()}
        if isinstance(value, list):
            return [hide(v) for v in value]
        if isinstance(value, str) and _PLACEHOLDER.fullmatch(value):
            return value
        return "***"

    try:
        return json.dumps(hide(json.loads(body)))
    except ValueError:
        return "***"


def mask_headers(headers: Any) -> dict[str, str]:
    """Every header value hidden: one is often an Authorization header."""
    return {name: "***" for name in headers}
