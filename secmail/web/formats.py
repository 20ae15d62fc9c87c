# -*- test-case-name: tests.test_formats -*-
"""
How the portal and D-Compose write a date and a size: one way each, on every page and in
every message, in the reader's language (Babel's data for the locale, our catalogues for
the units).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import cache

from babel import Locale
from babel.dates import format_datetime
from babel.numbers import format_decimal

from secmail.web.i18n import N_, translator

KB = 1_000
MB = 1_000_000
#: The units, translated where they are shown (Finnish writes kt and Mt).
_KB = N_("{size} kB")
_MB = N_("{size} MB")


def size_text(size: int, language: str, *, limit: bool = False) -> str:
    """
    A size in bytes as the reader reads it: decimal units (1 MB = 1,000,000 bytes, as disks,
    phones and most mail programs count), whole kilobytes below a megabyte, megabytes with
    one decimal above, the number written the language's way ("9.8 MB", "9,8 Mt").

    A size is rounded up, so that a file never looks smaller than it is; a C{limit} is
    rounded down, so that what fits under the limit as shown always fits under the limit.
    """
    _ = translator(language)
    step = math.floor if limit else math.ceil
    if size < MB:
        return _(_KB).format(size=format_decimal(step(size / KB), locale=language))
    tenths = step(size * 10 / MB) / 10
    return _(_MB).format(size=format_decimal(tenths, format="#,##0.0", locale=language))


@cache
def _pattern(language: str) -> str:
    """The language's long date and short time, as its own long date-time pattern joins them."""
    locale = Locale.parse(language)
    joined = str(locale.datetime_formats["long"])
    date = locale.date_formats["long"].pattern
    time = locale.time_formats["short"].pattern
    return joined.replace("{1}", date).replace("{0}", time) + " z"


def date_text(when: datetime, language: str) -> str:
    """
    A moment as the reader reads it: the language's long date and short time, in UTC and
    saying so ("December 8, 2026, 2:32 PM UTC", "8. joulukuuta 2026 14.32 UTC").
    """
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return format_datetime(when, _pattern(language), tzinfo=UTC, locale=language)


def timestamp_text(seconds: float, language: str) -> str:
    """L{date_text} of a Unix time (the store's dates)."""
    return date_text(datetime.fromtimestamp(seconds, UTC), language)


def header_date_text(value: str, language: str) -> str:
    """L{date_text} of a mail's C{Date:} header; the header as it came if it is no date."""
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return value
    if when is None:
        return value
    return date_text(when, language)
