# -*- test-case-name: tests.test_admin_console -*-
"""
Who may see what, in one place: every console page and API endpoint is registered with
L{guarded}, naming its area and whether it needs C{view} or C{full}. The decorator finds the
admin (the console's session cookie for a page; C{Authorization: Bearer} for the API),
checks the role, and for a page's form the CSRF token, before the route runs:

- a page without a live session → 303 to C{/signin}; the API without a valid token → 401;
- a role without the right → 403 (the API's with a JSON C{error});
- a form whose CSRF token is not the session's → 403.

L{REGISTRY} lists them all, so a test walks every endpoint × none/view/full.
"""

from __future__ import annotations

import functools
import hmac
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from klein import Klein
from twisted.web.iweb import IRequest
from twisted.web.server import Request

from secmail.admin.accounts import AdminAccounts
from secmail.admin.roles import AREAS, FULL, VIEW, Role
from secmail.config import LANGUAGES, Settings
from secmail.web.forms import cookie_value, form_arg, same_secret
from secmail.web.i18n import N_
from secmail.web.layout import PageFrame, set_security_headers, template_page

app = Klein()

SESSION_COOKIE = b"__Host-secmail-admin"
#: The sign-in form's CSRF value (before there is a session), as in D-Compose.
FORM_COOKIE = b"__Host-secmail-admin-form"
FORM_COOKIE_AGE = 3600
API_CSP = b"default-src 'none'; frame-ancestors 'none'"

#: The console's pages that exist, in menu order: (area, path, name).
MENU = (
    ("trace", "/trace", N_("Message trace")),
    # ops13: the overview is the home page (/) of a role that may see it.
    ("queue", "/queue", N_("Queue")),
    ("sms", "/sms", N_("SMS outbox")),
    ("phones", "/phones", N_("Phone directory")),
    ("phones", "/compose-directory", N_("D-Compose directory")),
    # ops13 end
    ("settings", "/settings", N_("Settings")),
    ("admins", "/admins", N_("Admins and roles")),
    ("audit", "/audit", N_("Audit log")),
)
#: The areas' names, for the roles table.
AREA_NAMES = {
    "overview": N_("Overview"),
    "trace": N_("Message trace"),
    "actions": N_("Message actions"),
    "queue": N_("Queue"),
    "sms": N_("SMS outbox"),
    "phones": N_("Phone directory"),
    "settings": N_("Settings"),
    "admins": N_("Admins and roles"),
    "audit": N_("Audit log"),
}
LEVEL_NAMES = {"none": N_("none"), "view": N_("view"), "full": N_("full")}
assert set(AREA_NAMES) == set(AREAS)


@dataclass(frozen=True)
class Endpoint:
    """One guarded route: a page (C{api} false) or an API endpoint."""

    method: str
    path: str
    area: str
    need: str
    api: bool


REGISTRY: list[Endpoint] = []


@dataclass(frozen=True)
class SignedIn:
    """The admin a request acts for: name, role, and (for a page) the session's CSRF token."""

    name: str
    role: Role
    csrf: str = ""


def client_address(request: IRequest) -> str:
    return str(getattr(request.getClientAddress(), "host", "-"))


def set_strict_cookie(request: IRequest, name: bytes, value: str, max_age: int | None) -> None:
    """A __Host- cookie: Secure, HttpOnly, SameSite=Strict, Path=/ (the console's own)."""
    cast(Request, request).addCookie(
        name,
        value.encode("ascii"),
        path=b"/",
        secure=True,
        httpOnly=True,
        sameSite="strict",
        max_age=str(max_age).encode() if max_age is not None else None,
    )


def json_body(request: IRequest, value: Any, code: int = 200) -> bytes:
    request.setResponseCode(code)
    set_security_headers(request, API_CSP)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(value, ensure_ascii=False).encode()


def json_error(request: IRequest, code: int, message: str) -> bytes:
    if code == 401:
        request.setHeader(b"WWW-Authenticate", b'Bearer realm="secmail"')
    return json_body(request, {"error": message}, code)


Route = Callable[..., Awaitable[bytes]]


def guarded(
    path: str, area: str, need: str, *, methods: tuple[str, ...] = ("GET",), api: bool = False
) -> Callable[[Route], Any]:
    """Register a page or API route that needs C{need} (view or full) on C{area}."""
    if area not in AREAS or need not in (VIEW, FULL):
        raise ValueError(f"{path}: {area!r}/{need!r} is not an area and view/full")

    def decorate(route: Route) -> Any:
        for method in methods:
            REGISTRY.append(Endpoint(method, path, area, need, api))

        @functools.wraps(route)
        async def checked(self: ConsoleBase, request: IRequest, *args: Any, **kw: Any) -> bytes:
            if api:
                who = await self.api_admin(request)
                if who is None:
                    return json_error(request, 401, "a valid API token is needed (Bearer)")
                if not who.role.allows(area, need):
                    return json_error(
                        request, 403, f"role {who.role.name} has no {need} rights on {area}"
                    )
            else:
                who = await self.page_admin(request)
                if who is None:
                    return self.see_other(request, b"/signin")
                if not who.role.allows(area, need):
                    request.setResponseCode(403)
                    return self.page(request, who, "admin/forbidden.html")
                if request.method == b"POST" and not same_secret(
                    form_arg(request, b"csrf"), who.csrf
                ):
                    request.setResponseCode(403)
                    return self.page(request, who, "admin/bad_form.html")
            return await route(self, request, who, *args, **kw)

        return app.route(path, methods=list(methods))(checked)

    return decorate


class ConsoleBase:
    """What every console route shares: the accounts, the frame, sessions, tokens, pages."""

    app = app

    def __init__(
        self, settings: Settings, accounts: AdminAccounts, clock: Any, form_key: bytes
    ) -> None:
        self.settings = settings
        self.accounts = accounts
        self.clock = clock
        self._form_key = form_key
        self.frame = PageFrame(settings.branding, settings.gateway.hostname, LANGUAGES)

    async def page_admin(self, request: IRequest) -> SignedIn | None:
        session_id = cookie_value(request, SESSION_COOKIE)
        if not session_id:
            return None
        found = await self.accounts.session(session_id)
        if found is None:
            return None
        name, role, csrf = found
        return SignedIn(name, role, csrf)

    async def api_admin(self, request: IRequest) -> SignedIn | None:
        header = (request.getHeader(b"authorization") or b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        found = await self.accounts.token_role(token.strip())
        return None if found is None else SignedIn(found[0], found[1])

    def menu(self, who: SignedIn | None) -> list[tuple[str, str]]:
        """The pages that exist and that this admin's role may see: (path, name)."""
        if who is None:
            return []
        return [(path, name) for area, path, name in MENU if who.role.allows(area, VIEW)]

    def page(self, request: IRequest, who: SignedIn | None, name: str, /, **values: Any) -> bytes:
        return template_page(
            request,
            self.frame,
            name,
            me=who.name if who else "",
            role=who.role.name if who else "",
            csrf=who.csrf if who else "",
            menu=self.menu(who),
            here=request.path.decode("ascii", "replace"),
            **values,
        )

    def see_other(self, request: IRequest, location: bytes) -> bytes:
        request.setResponseCode(303)
        request.setHeader(b"Location", location)
        set_security_headers(request)
        return b""

    # --- the sign-in form's CSRF, before a session (as D-Compose's) ---------------------

    def form_token(self, request: IRequest) -> str:
        value = cookie_value(request, FORM_COOKIE) or secrets.token_urlsafe(24)
        set_strict_cookie(request, FORM_COOKIE, value, FORM_COOKIE_AGE)
        return self._form_csrf(value)

    def form_token_ok(self, request: IRequest) -> bool:
        value = cookie_value(request, FORM_COOKIE)
        return bool(value) and same_secret(form_arg(request, b"csrf"), self._form_csrf(value))

    def _form_csrf(self, value: str) -> str:
        return hmac.new(self._form_key, b"admin-sign-in:" + value.encode(), "sha256").hexdigest()
