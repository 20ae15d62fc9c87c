# -*- test-case-name: tests.test_portal,tests.test_compose -*-
"""
Error pages, and one error handler for a Klein app (the model: Tahoe-LAFS's
C{_add_error_handling}): a routing error (no such page, wrong method) is the visitor's
mistake and answered with its own status; a letter that cannot be shown gets a page
saying why; anything else is logged once and answered with a "temporary problem" page
that shows no traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException

from secmail.config import Settings
from secmail.store.messages import Envelope
from web.i18n import N_, Translate
from web.portal import render_page, translation

log = Logger()


class CannotShow(Exception):
    """The letter cannot be shown: C{reason} is "damaged" or "complex" (L{cannot_show})."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def card(text: str) -> str:
    """One paragraph (already translated and escaped) in a card."""
    return '<div class="card"><p>' + text + "</p></div>"


def notice(request: IRequest, settings: Settings, code: int, title: str, text: str) -> bytes:
    """A page that only tells the reader something (an error or an end), translated."""
    request.setResponseCode(code)
    _ = translation(request, settings)
    return render_page(request, settings, _(title), card(_(text)))


#: The portal's notices: status, title and text (N_ texts, translated when shown).
NOT_FOUND = (
    404,
    N_("Message not found"),
    N_(
        "This link is not valid, or the message has expired and been deleted. "
        "Please contact the sender if you still need it."
    ),
)
GONE = (
    410,
    N_("Message deleted"),
    N_(
        "This message has expired and been deleted. Please contact the sender if you still need it."
    ),
)
SIGNED_OUT = (
    401,
    N_("Please open the link again"),
    N_(
        "Your session has ended (after 30 minutes without use, or 12 hours in all). "
        "Open the link in the e-mail again to read the message."
    ),
)
BAD_FORM = (
    403,
    N_("Please try again"),
    N_("The form had expired or did not come from this site. Open the link in the e-mail again."),
)


def not_found(request: IRequest, settings: Settings) -> bytes:
    return notice(request, settings, *NOT_FOUND)


def gone(request: IRequest, settings: Settings) -> bytes:
    return notice(request, settings, *GONE)


def signed_out(request: IRequest, settings: Settings) -> bytes:
    return notice(request, settings, *SIGNED_OUT)


def bad_form(request: IRequest, settings: Settings) -> bytes:
    return notice(request, settings, *BAD_FORM)


def cannot_show(request: IRequest, settings: Settings, problem: CannotShow) -> bytes:
    """The page for a letter that cannot be shown, saying why and what the reader can do."""
    _ = translation(request, settings)
    if problem.reason == "damaged":
        request.setResponseCode(500)
        return render_page(
            request,
            settings,
            _("Message damaged"),
            '<div class="card" role="alert"><p>'
            + _(
                "This message is damaged and cannot be shown: what is stored is no longer "
                "what arrived. This has been recorded for the administrators. Please ask "
                "the sender to send the message again."
            )
            + "</p></div>",
        )
    request.setResponseCode(422)
    return render_page(
        request,
        settings,
        _("Message too complex to show"),
        '<div class="card" role="alert"><p>'
        + _(
            "This message is built in too complex a way to be shown here (parts inside "
            "parts too deeply, or too many parts). You can save the whole message and open "
            "it in your own e-mail program."
        )
        + '</p><p><a class="button" href="/read/eml">'
        + _("Save the whole message (.eml)")
        + "</a></p></div>",
    )


def add_error_handling(
    app: Klein, *, log_as: str, no_such_page: Callable[[Translate], str], temporary: str
) -> None:
    """
    The app's one error handler. Its instance has C{settings}; C{no_such_page} is the body
    (translated HTML) of the "Page not found" page, C{temporary} (an N_ text) the
    paragraph of the "Temporary problem" page.
    """

    @app.handle_errors(Exception)
    def failed(self: Any, request: IRequest, failure: Failure) -> bytes:
        settings: Settings = self.settings
        _ = translation(request, settings)
        if failure.check(HTTPException):
            # Klein's routing errors (no such page, wrong method) come here too: the
            # visitor's mistake, answered with its own status, not a failure to log.
            error: Any = failure.value
            request.setResponseCode(error.code or 404)
            for name, value in error.get_response().headers:
                if name in ("Location", "Allow"):
                    request.setHeader(name.encode("ascii"), value.encode("ascii", "replace"))
            return render_page(request, settings, _("Page not found"), no_such_page(_))
        if failure.check(CannotShow):
            return cannot_show(request, settings, cast(CannotShow, failure.value))
        log.failure(log_as, failure)
        request.setResponseCode(500)
        return render_page(request, settings, _("Temporary problem"), card(_(temporary)))


def locked(request: IRequest, settings: Settings, envelope: Envelope) -> bytes:
    """A letter locked after too many wrong codes or PINs, and who can still open it."""
    if envelope.level == "letter":
        # Locked for codes: the browser it was first opened in still opens it.
        text = (
            N_(
                "A wrong code was typed too many times, so this message can no longer "
                "be opened with a code. It still opens in the browser where it was "
                "first opened. The sender has been told; please contact them."
            )
            if envelope.sender
            else N_(
                "A wrong code was typed too many times, so this message can no longer "
                "be opened with a code. It still opens in the browser where it was "
                "first opened. Please contact the sender."
            )
        )
    elif envelope.sender:
        text = N_(
            "A wrong PIN was typed too many times, so this message can no longer be "
            "opened. The sender has been told; please contact them."
        )
    else:
        text = N_(
            "A wrong PIN was typed too many times, so this message can no longer be "
            "opened. Please contact the sender."
        )
    return notice(request, settings, 403, N_("This message is locked"), text)
