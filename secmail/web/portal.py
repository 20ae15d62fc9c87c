# -*- test-case-name: tests.test_portal -*-
"""
The recipient portal: the link from the notification, opening, reading and downloading.

The link (C{/m/<token>}) only shows a landing page: link scanners fetch every
link, so a GET changes nothing. "Open" is a POST with a CSRF token; it swaps the
link token for a session cookie and redirects (303) to C{/read}, a URL without
the token. A letter is bound to the first browser that opens it; another browser
needs a one-time code sent to the recipient's address. From the reading page the reader
can reply, reply to all or forward inside the organisation (L{secmail.web.reply}); request bodies
stay in memory and are limited to C{[portal] max_upload_size} (L{secmail.web.site.BoundedRequest}).

One Klein app, its routes in modules by role: L{secmail.web.landing} (the link, open, e-mail
codes), L{secmail.web.pin} (registered letters), L{secmail.web.reading} (reading and downloads),
L{secmail.web.reply_page} (replies); what they share in L{secmail.web.access}, errors in
L{secmail.web.errors}, the page frame and its templates in L{secmail.web.layout}. Here:
the home page, sign-out, the D-Compose mount, the style sheet, the logo, the icon and the
language switch.
"""

from __future__ import annotations

from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from secmail.web import errors, i18n
from secmail.web.access import SESSION_COOKIE
from secmail.web.errors import add_error_handling
from secmail.web.forms import cookie_value, form_arg, same_secret, set_cookie
from secmail.web.landing import LandingRoutes
from secmail.web.layout import RESOURCE_CSP, favicon, style_sheet
from secmail.web.reading import ReadingRoutes

app = LandingRoutes.app


class Portal(LandingRoutes, ReadingRoutes):
    """The recipient portal's Klein app (L{secmail.web.site.make_site} serves it)."""

    @app.route("/logout", methods=["POST"])
    async def logout(self, request: IRequest) -> bytes:
        session_id = cookie_value(request, SESSION_COOKIE)
        session = await self._session(request)
        if session is not None and session_id:
            if not same_secret(form_arg(request, b"csrf"), session.csrf):
                return self._bad_form(request)
            await self.sessions.end_session(session_id)
        set_cookie(request, SESSION_COOKIE, "", max_age=0)
        return self._template(request, "signed_out.html")

    @app.route("/", methods=["GET"])
    def home(self, request: IRequest) -> bytes:
        """The site's own name, typed in: how to open a message, and D-Compose when it is on."""
        return self._template(request, "home.html", compose=self.compose is not None)

    @app.route("/favicon.ico", methods=["GET"])
    def favicon(self, request: IRequest) -> bytes:
        """The tab's icon: an envelope in the organisation's colour (SVG, nothing remote)."""
        self._headers(request, csp=RESOURCE_CSP)
        request.setHeader(b"Content-Type", b"image/svg+xml")
        request.setHeader(b"Cache-Control", b"public, max-age=3600")
        return favicon(self.frame.branding)

    @app.route("/compose/", methods=["GET"])
    def compose_slash(self, request: IRequest) -> bytes:
        """C{/compose/} (as people type it) is C{/compose}: the branch needs a name after it."""
        request.setResponseCode(301)
        request.setHeader(b"Location", b"/compose")
        self._headers(request)
        return b""

    @app.route("/compose", branch=True)
    def compose_branch(self, request: IRequest) -> IResource | bytes:
        """Outsiders writing to the organisation (D-Compose): its own app, see web/compose.py."""
        if self.compose is None:
            return errors.show(request, self.frame, errors.NO_SUCH_PAGE)
        return self.compose

    @app.route("/static/portal.css", methods=["GET"])
    def style(self, request: IRequest) -> bytes:
        self._headers(request, csp=RESOURCE_CSP)
        request.setHeader(b"Content-Type", b"text/css; charset=utf-8")
        request.setHeader(b"Cache-Control", b"public, max-age=3600")
        return style_sheet(self.frame.branding)

    @app.route("/static/logo", methods=["GET"])
    async def logo(self, request: IRequest) -> bytes:
        """
        The organisation's logo (PNG or JPEG), as read and checked with the configuration: the
        same bytes as the notifications carry, never the file read again per request.
        """
        self._headers(request, csp=RESOURCE_CSP)
        portal = self.settings.portal
        if not portal.logo:
            request.setResponseCode(404)
            return b""
        request.setHeader(b"Content-Type", portal.logo_type.encode("ascii"))
        request.setHeader(b"Cache-Control", b"public, max-age=3600")
        return portal.logo

    @app.route("/lang/<code>", methods=["GET"])
    def choose_language(self, request: IRequest, code: str) -> bytes:
        """The language switch: remember the choice and go back to the page (on this site)."""
        target = i18n.safe_next(form_arg(request, b"next", 2000))
        if code in self.settings.portal.languages:
            set_cookie(request, i18n.LANG_COOKIE, code, max_age=i18n.LANG_COOKIE_AGE)
        request.setResponseCode(303)
        request.setHeader(b"Location", target.encode("ascii"))
        self._headers(request)
        return b""


add_error_handling(
    app,
    log_as="Portal request failed",
    page_not_found="page_not_found",
    temporary="temporary_problem",
)
