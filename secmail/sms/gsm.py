"""SMS text encoding: the GSM 03.38 default alphabet, part counts and UCS-2 hex.

Pure functions, no I/O. They decide how a text travels to the modem and whether it
fits in one SMS; the AT dialogue in `secmail.sms.at` uses them.
"""

from __future__ import annotations

# GSM 03.38 default alphabet, in code order (0x00..0x7F). 0x1B is the escape to the
# extension table and is not a character of its own, so it is left out here.
_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
assert len(_BASIC) == 128

GSM7_BASIC = frozenset(_BASIC) - {"\x1b"}
"""Characters of the default alphabet: one septet each."""

GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")
"""Characters of the extension table: an escape plus one septet, so two septets each."""

# Characters whose GSM code equals their ASCII code and is printable. Only these can go
# to the modem byte-for-byte after AT+CSCS="GSM": the rest would arrive as control bytes
# (0x1A ends the text, 0x1B cancels it) or as a different character ("$" is 0x02 in GSM,
# 0x24 is "¤").
SAFE_GSM_ASCII = frozenset(
    c for code, c in enumerate(_BASIC) if 0x20 <= code < 0x7F and ord(c) == code
)

GSM7_SINGLE_SEPTETS = 160
GSM7_PART_SEPTETS = 153
UCS2_SINGLE_UNITS = 70
UCS2_PART_UNITS = 67


def is_gsm7(text: str) -> bool:
    """Whether `text` can be written in the GSM 7-bit default alphabet (with extension)."""
    return all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text)


def septets(text: str) -> int:
    """Septets `text` takes in GSM 7-bit: extension characters count double."""
    return sum(2 if c in GSM7_EXTENSION else 1 for c in text)


def ucs2_units(text: str) -> int:
    """UTF-16 code units: characters outside the BMP (emoji) take two."""
    return len(text.encode("utf-16-be")) // 2


def parts_needed(text: str) -> int:
    """How many SMS parts `text` needs: 160/153 septets in GSM 7-bit, 70/67 units in UCS-2.

    Splitting never breaks an extension escape or a surrogate pair in real
    concatenation; this count ignores that edge (it can be one part short when a
    two-unit character straddles a part boundary), which is harmless for the
    one-part check done today.
    """
    if is_gsm7(text):
        length, single, part = septets(text), GSM7_SINGLE_SEPTETS, GSM7_PART_SEPTETS
    else:
        length, single, part = ucs2_units(text), UCS2_SINGLE_UNITS, UCS2_PART_UNITS
    if length <= single:
        return 1
    return -(-length // part)


def is_safe_gsm_ascii(text: str) -> bool:
    """Whether `text` can be typed to the modem as plain ASCII bytes after AT+CSCS="GSM"."""
    return all(c in SAFE_GSM_ASCII for c in text)


def ucs2_hex(text: str) -> str:
    """UTF-16-BE as upper-case hex, the form a modem expects after AT+CSCS="UCS2"."""
    return text.encode("utf-16-be").hex().upper()
