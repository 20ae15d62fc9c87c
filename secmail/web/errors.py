# -*- test-case-name: tests.test_portal,tests.test_compose,tests.test_layout -*-
"""
Error pages, and one error handler for a Klein app (the model: Tahoe-LAFS's
C{_add_error_handling}): a routing error (no such page, wrong method) is the visitor's
mistake and answered with its own status; a letter that cannot be shown gets a page
saying why; anything else is logged once and answered with a "temporary problem" page
that shows no traceback.

Every error page is a template in C{web/templates/errors/} shown by
L{secmail.web.layout.error_page} with its status; the functions here name the portal's.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple, cast

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException

from secmail.store.messages import Envelope
from secmail.web.layout import PageFrame, error_page

log = Logger()


class CannotShow(Exception):
    """The letter cannot be shown: C{reason} is "damaged" or "complex" (L{cannot_show})."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ErrorPage(NamedTuple):
    """An error page that takes no values: its status and its template in C{errors/}."""

    code: int
    template: str


#: A link token that names no letter (or one already removed).
NOT_FOUND = ErrorPage(404, "message_not_found")
#: The session's letter has expired and been deleted.
GONE = ErrorPage(410, "message_deleted")
#: The sender withdrew the letter (C{secmail messages revoke}, the admin API).
WITHDRAWN = ErrorPage(410, "message_withdrawn")
#: A page after sign-in without a (live) session.
SIGNED_OUT = ErrorPage(401, "signed_out")
#: A form whose CSRF token is missing, old or from elsewhere.
BAD_FORM = ErrorPage(403, "bad_form")
#: A registered letter, and no SMS backend (or no number) to send its PIN.
PIN_UNAVAILABLE = ErrorPage(503, "pin_unavailable")
#: An attachment number the letter does not have.
NO_SUCH_ATTACHMENT = ErrorPage(404, "no_such_attachment")
#: C{/compose} when D-Compose is not enabled.
NO_SUCH_PAGE = ErrorPage(404, "no_such_page")


def show(request: IRequest, frame: PageFrame, page: ErrorPage) -> bytes:
    """One of the error pages above, with its status."""
    return error_page(request, frame, page.code, page.template)


def locked(request: IRequest, frame: PageFrame, envelope: Envelope) -> bytes:
    """A letter locked after too many wrong codes or PINs, and who can still open it."""
    # Locked for codes (a letter): the browser it was first opened in still opens it.
    return error_page(
        request,
        frame,
        403,
        "message_locked",
        pin=envelope.level != "letter",
        sender_told=bool(envelope.sender),
    )


def cannot_show(request: IRequest, frame: PageFrame, problem: CannotShow) -> bytes:
    """The page for a letter that cannot be shown, saying why and what the reader can do."""
    if problem.reason == "damaged":
        return error_page(request, frame, 500, "message_damaged")
    return error_page(request, frame, 422, "message_too_complex")


def add_error_handling(
    app: Klein,
    *,
    log_as: str,
    page_not_found: str,
    temporary: str,
    json_under: bytes | None = None,
    **context: Any,
) -> None:
    """
    The app's one error handler. Its instance has C{frame} (a L{PageFrame}); C{page_not_found} and
    C{temporary} name the app's error templates for a routing error and for anything
    unexpected; C{context} is what those templates need besides the frame. Under the path
    prefix C{json_under} (an API) the answer is JSON C{{"error": ...}} instead of a page.
    """

    def as_json(request: IRequest, code: int, message: str) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        return json.dumps({"error": message}).encode("utf-8")

    @app.handle_errors(Exception)
    def failed(self: Any, request: IRequest, failure: Failure) -> bytes:
        frame: PageFrame = self.frame
        api = json_under is not None and bytes(request.path or b"").startswith(json_under)
        if api and failure.check(HTTPException):
            routing = cast(HTTPException, failure.value)
            for name, value in routing.get_response().headers:
                if name == "Allow":
                    request.setHeader(b"Allow", value.encode("ascii", "replace"))
            code = routing.code or 404
            return as_json(request, code, "method not allowed" if code == 405 else "not found")
        if api:
            log.failure(log_as, failure)
            return as_json(request, 500, "a temporary problem on the gateway; try again")
        if failure.check(HTTPException):
            # Klein's routing errors (no such page, wrong method) come here too: the
            # visitor's mistake, answered with its own status, not a failure to log.
            error: Any = failure.value
            for name, value in error.get_response().headers:
                if name in ("Location", "Allow"):
                    request.setHeader(name.encode("ascii"), value.encode("ascii", "replace"))
            return error_page(request, frame, error.code or 404, page_not_found, **context)
        if failure.check(CannotShow):
            return cannot_show(request, frame, cast(CannotShow, failure.value))
        log.failure(log_as, failure)
        return error_page(request, frame, 500, temporary, **context)
