# -*- test-case-name: tests.test_admin_console -*-
"""
The admin console's pages and its JSON API (C{/api/v1/}), on the admin listener only.

Built so far: sign-in (password and TOTP code) and sign-out, the frame and menu (only pages
that exist and that the role may see), admins and roles (an admin with full rights on the
admins page makes roles), the audit log, and C{GET /api/v1/audit}. Every route but sign-in,
sign-out, the home page and the static files is registered with L{guarded}.
"""

from __future__ import annotations

import datetime
import os
import re
from functools import cache
from typing import Any

from twisted.web.iweb import IRequest

from secmail.admin.accounts import AdminAccounts, SignIn
from secmail.admin.roles import AREAS, BUILT_IN, FULL, LEVELS, VIEW, Role, RoleError, check_name
from secmail.config import Settings
from secmail.resend import LetterResend
from secmail.settings import ClusterSettings
from secmail.store.admins import Actor
from secmail.store.audit import AuditRow, AuditTrail
from secmail.store.trace import MessageTrace
from secmail.web import i18n
from secmail.web.admin.access import (
    AREA_NAMES,
    FORM_COOKIE,
    LEVEL_NAMES,
    REGISTRY,
    SESSION_COOKIE,
    SignedIn,
    app,
    client_address,
    guarded,
    json_body,
    json_error,
    set_strict_cookie,
)
from secmail.web.admin.operations import OperationsPages
from secmail.web.admin.overview import Operations, OverviewPages
from secmail.web.admin.settings_pages import SettingsPages
from secmail.web.admin.trace import TracePages
from secmail.web.errors import add_error_handling
from secmail.web.forms import cookie_value, form_arg, same_secret
from secmail.web.layout import RESOURCE_CSP, STATIC_DIR, set_security_headers, style_sheet

#: The audit page and API without C{since}: the last week. At most this many rows.
DEFAULT_SINCE = 7 * 24 * 3600
AUDIT_LIMIT = 1000


def rfc3339(at: int) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_since(text: str) -> int:
    """An RFC 3339 time (or a date: its midnight, UTC) as unix seconds; ValueError else."""
    try:
        when = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"since: {text[:40]!r} is not an RFC 3339 time such as 2026-12-01T00:00:00Z"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return int(when.timestamp())


def audit_json(row: AuditRow) -> dict[str, Any]:
    """One audit row as the API gives it; C{key}, C{before}, C{after} only where they apply."""
    item: dict[str, Any] = {
        "at": rfc3339(row.at),
        "admin": row.admin,
        "address": row.address,
        "action": row.action,
    }
    for name, value in (("key", row.setting), ("before", row.before), ("after", row.after)):
        if value is not None:
            item[name] = value
    return item


@cache
def _admin_css() -> str:
    with open(os.path.join(STATIC_DIR, "admin.css"), encoding="utf-8") as f:
        return f.read()


class Console(SettingsPages, TracePages, OverviewPages, OperationsPages):
    """The console's Klein app (L{secmail.web.site.make_site} serves it on C{[admin] listen})."""

    def __init__(
        self,
        settings: Settings,
        accounts: AdminAccounts,
        trail: AuditTrail,
        clock: Any,
        form_key: bytes,
        *,
        ops: Operations,
        cluster: ClusterSettings,
        trace: MessageTrace | None = None,
        resender: LetterResend | None = None,
    ) -> None:
        super().__init__(settings, accounts, clock, form_key)
        self.trail = trail
        self.ops = ops
        self.cluster = cluster
        # Message trace and actions (secmail/web/admin/trace.py): the audit trail's database.
        self.trace = trace or MessageTrace(trail.db)
        if resender is not None:
            self.resender = resender

    def now(self) -> int:
        return int(self.clock.seconds())

    # --- sign-in, sign-out, home --------------------------------------------------------

    @app.route("/", methods=["GET"])
    async def home(self, request: IRequest) -> bytes:
        who = await self.page_admin(request)
        if who is None:
            return self.see_other(request, b"/signin")
        if who.role.allows("overview", VIEW):  # the overview is the home page of who may see it
            return await self.overview_page(request, who)
        return self.page(request, who, "admin/home.html")

    @app.route("/signin", methods=["GET"])
    async def sign_in_form(self, request: IRequest) -> bytes:
        if await self.page_admin(request) is not None:
            return self.see_other(request, b"/")
        return self._sign_in_page(request)

    def _sign_in_page(self, request: IRequest, problem: str = "", name: str = "") -> bytes:
        return self.page(
            request,
            None,
            "admin/signin.html",
            form_csrf=self.form_token(request),
            problem=problem,
            name=name,
            signed_out=form_arg(request, b"out") == "1",
        )

    @app.route("/signin", methods=["POST"])
    async def sign_in(self, request: IRequest) -> bytes:
        if not self.form_token_ok(request):
            request.setResponseCode(403)
            return self.page(request, None, "admin/bad_form.html")
        name = form_arg(request, b"name", 64).strip()
        result = await self.accounts.sign_in(
            name,
            form_arg(request, b"password", 1024),
            form_arg(request, b"code", 16),
            client_address(request),
            replaces=cookie_value(request, SESSION_COOKIE) or None,
        )
        if result.outcome == SignIn.OK:
            set_strict_cookie(request, SESSION_COOKIE, result.session, None)
            set_strict_cookie(request, FORM_COOKIE, "", 0)
            return self.see_other(request, b"/")
        request.setResponseCode(403 if result.outcome == SignIn.LOCKED else 401)
        return self._sign_in_page(request, result.outcome, name)

    @app.route("/signout", methods=["POST"])
    async def sign_out(self, request: IRequest) -> bytes:
        session_id = cookie_value(request, SESSION_COOKIE)
        who = await self.page_admin(request)
        if who is not None:
            if not same_secret(form_arg(request, b"csrf"), who.csrf):
                request.setResponseCode(403)
                return self.page(request, who, "admin/bad_form.html")
            await self.accounts.sign_out(session_id, client_address(request))
        set_strict_cookie(request, SESSION_COOKIE, "", 0)
        return self.see_other(request, b"/signin?out=1")

    # --- admins and roles ---------------------------------------------------------------

    @guarded("/admins", "admins", VIEW)
    async def admins(self, request: IRequest, who: SignedIn) -> bytes:
        return await self._admins_page(request, who)

    async def _admins_page(
        self, request: IRequest, who: SignedIn, problem: str = "", draft: Role | None = None
    ) -> bytes:
        now = self.now()
        admins = await self.accounts.store.admins()
        roles = await self.accounts.store.roles()
        return self.page(
            request,
            who,
            "admin/admins.html",
            admins=[
                (a.name, a.role, rfc3339(a.created)[:10], a.locked_until > now, a.tokens)
                for a in admins
            ],
            roles=[(r.name, r.built_in, [r.level(area) for area in AREAS]) for r in roles],
            areas=[(area, AREA_NAMES[area]) for area in AREAS],
            levels=[(level, LEVEL_NAMES[level]) for level in LEVELS],
            level_names=LEVEL_NAMES,
            can_change=who.role.allows("admins", FULL),
            problem=problem,
            draft=draft or Role("", {}),
        )

    @guarded("/admins/roles", "admins", FULL, methods=("POST",))
    async def make_role(self, request: IRequest, who: SignedIn) -> bytes:
        name = form_arg(request, b"name", 40).strip()
        rights = {area: form_arg(request, area.encode(), 10) or "none" for area in AREAS}
        rights = {area: level if level in LEVELS else "none" for area, level in rights.items()}
        draft = Role(name, rights)
        try:
            check_name(name)
        except RoleError:
            request.setResponseCode(400)
            return await self._admins_page(request, who, "name", draft)
        if name in BUILT_IN:
            request.setResponseCode(400)
            return await self._admins_page(request, who, "built_in", draft)
        # No admin makes rights they do not hold, nor changes the role they act with: full
        # rights on "admins" are not full rights on everything.
        if name == who.role.name or any(
            level != "none" and not who.role.allows(area, level) for area, level in rights.items()
        ):
            request.setResponseCode(403)
            return await self._admins_page(request, who, "beyond_own", draft)
        await self.accounts.store.save_role(
            draft, self.now(), Actor(who.name, client_address(request))
        )
        return self.see_other(request, b"/admins")

    # --- the audit log ------------------------------------------------------------------

    @guarded("/audit", "audit", VIEW)
    async def audit(self, request: IRequest, who: SignedIn) -> bytes:
        given = form_arg(request, b"since", 40).strip()
        problem = False
        since = self.now() - DEFAULT_SINCE
        if given:
            try:
                since = parse_since(given)
            except ValueError:
                problem = True
        rows = [] if problem else await self.trail.newest(since, AUDIT_LIMIT)
        return self.page(
            request,
            who,
            "admin/audit.html",
            since=given or rfc3339(since)[:10],
            problem=problem,
            rows=[(rfc3339(r.at).replace("T", " ").removesuffix("Z"), r) for r in rows],
            limit=AUDIT_LIMIT,
        )

    @guarded("/api/v1/audit", "audit", VIEW, api=True)
    async def api_audit(self, request: IRequest, who: SignedIn) -> bytes:
        given = form_arg(request, b"since", 40)
        since = self.now() - DEFAULT_SINCE
        if given:
            try:
                since = parse_since(given)
            except ValueError as e:
                return json_error(request, 400, str(e))
        rows = await self.trail.since(since, AUDIT_LIMIT)
        return json_body(request, [audit_json(r) for r in rows])

    @app.route("/api/", branch=True)
    def api_unknown(self, request: IRequest) -> bytes:
        """Any other API path or method: a JSON 404 (or 405 naming the methods), not a page."""
        path = (request.path or b"").decode("ascii", "replace")
        allowed = sorted({e.method for e in REGISTRY if e.api and _route_matches(e.path, path)})
        if allowed:
            request.setHeader(b"Allow", ", ".join(allowed).encode("ascii"))
            return json_error(request, 405, f"{path} takes {', '.join(allowed)}")
        return json_error(request, 404, "no such API endpoint (see docs/admin-api.md)")

    # --- style sheet, language ----------------------------------------------------------

    @app.route("/static/admin.css", methods=["GET"])
    def style(self, request: IRequest) -> bytes:
        set_security_headers(request, RESOURCE_CSP)
        request.setHeader(b"Content-Type", b"text/css; charset=utf-8")
        request.setHeader(b"Cache-Control", b"public, max-age=3600")
        return style_sheet(self.frame.branding) + _admin_css().encode()

    @app.route("/lang/<code>", methods=["GET"])
    def choose_language(self, request: IRequest, code: str) -> bytes:
        target = i18n.safe_next(form_arg(request, b"next", 2000))
        if code in self.frame.languages:
            set_strict_cookie(request, i18n.LANG_COOKIE, code, i18n.LANG_COOKIE_AGE)
        return self.see_other(request, target.encode("ascii"))


add_error_handling(
    app,
    log_as="Admin console request failed",
    json_under=b"/api/",
    page_not_found="admin_not_found",
    temporary="admin_problem",
    me="",
    role="",
    csrf="",
    menu=(),
    here="",
)


def _route_matches(route: str, path: str) -> bool:
    """Whether a registered path (with <placeholders>) names C{path}."""
    pattern = re.sub(r"<[^>]+>", "[^/]+", re.escape(route).replace(r"\<", "<").replace(r"\>", ">"))
    return re.fullmatch(pattern, path.rstrip("/") or "/") is not None
