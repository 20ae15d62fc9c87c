"""
The two ways sending an SMS can fail, shared by every backend and the dispatcher.

An error's text goes into log lines and message events: it may name the backend and a
masked number, but never the SMS text (it carries the PIN).
"""

from __future__ import annotations

from secmail.sms.at import ModemError


class SmsTemporaryError(Exception):
    """The SMS was not sent, but trying again later (or another gateway) may work."""


class SmsPermanentError(Exception):
    """The gateway refused the SMS; the same request will not work later either."""


def classify(error: BaseException) -> type[SmsTemporaryError] | type[SmsPermanentError]:
    """
    Whether a backend's failure may go away by itself. A modem error says so in its
    C{temporary} flag (timeouts and a lost link always do). Anything unexpected counts as
    temporary: a fault in one backend should move the SMS on, not drop it.
    """
    if isinstance(error, SmsPermanentError):
        return SmsPermanentError
    if isinstance(error, ModemError):
        return SmsTemporaryError if error.temporary else SmsPermanentError
    return SmsTemporaryError
