# -*- test-case-name: tests.test_admin_settings -*-
"""
The settings page and C{/api/v1/settings}: the cluster settings of L{secmail.settings}, shown
and changed through L{ClusterSettings} (the same checks as C{secmail check-config}, one audit
row a changed key in the same transaction).

Node settings (L{secmail.config.cluster.Key.node_only}: data directory, database, listen
addresses, certificate and key files, [monitoring]) are listed too, with this node's value and
source (C{file} or C{default}): they are this node's, the database never holds them, so the
page shows them read-only saying why and the API answers 409 for a change, as for a key fixed
by the node's file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from twisted.web.iweb import IRequest

from secmail.admin.roles import FULL, VIEW
from secmail.config import ConfigError
from secmail.config.cluster import KEYS, FixedByFile, check_change, read_value, to_toml
from secmail.settings import DATABASE, DEFAULT, FILE, ClusterSettings
from secmail.web import i18n
from secmail.web.admin.access import (
    ConsoleBase,
    SignedIn,
    client_address,
    guarded,
    json_body,
    json_error,
)
from secmail.web.admin.settings_help import HELP, SECTION_HELP, SECTIONS
from secmail.web.forms import form_arg
from secmail.web.i18n import N_

#: The largest PATCH body read, in bytes (every key with a long value fits many times).
MAX_BODY = 256 * 1024
#: What a masked secret shows in place of the secret (secmail.config.SECRET_KEYS).
MASK = "***"
SOURCE_NAMES = {DEFAULT: N_("default"), FILE: N_("file"), DATABASE: N_("database")}
BAD_BODY = (
    'the body must be a JSON object of settings, such as {"portal.verification_phrase": "..."}'
)

Shown = dict[str, tuple[Any, str]]


class SettingsRefused(Exception):
    """A change refused: the HTTP code (400 or 409) and the one-line error naming the key."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class SettingsPages(ConsoleBase):
    """The settings page and API; the console gives it C{self.cluster}."""

    cluster: ClusterSettings

    async def change_settings(
        self, request: IRequest, who: SignedIn, changes: Mapping[str, Any]
    ) -> Shown:
        """Store C{changes} (None: the default) as C{who}, or raise L{SettingsRefused}."""
        for name, value in changes.items():
            key = KEYS.get(name)
            if key is not None and key.node_only:
                try:
                    check_change(name, self.cluster.file_raw, self.cluster.origin)
                except ConfigError as e:
                    raise SettingsRefused(409, str(e)) from None
            if key is not None and key.secret and value is not None and MASK in to_toml_or(value):
                raise SettingsRefused(
                    400, f"{name}: this is the masked value ({MASK}); send the real one"
                )
        try:
            return await self.cluster.set(
                changes,
                admin=who.name,
                address=client_address(request),
                now=int(self.clock.seconds()),
            )
        except FixedByFile as e:
            raise SettingsRefused(409, str(e)) from None
        except ConfigError as e:
            raise SettingsRefused(400, str(e)) from None

    # --- the API --------------------------------------------------------------------------

    @guarded("/api/v1/settings", "settings", VIEW, api=True)
    async def api_settings(self, request: IRequest, who: SignedIn) -> bytes:
        return json_body(request, settings_json(await self.cluster.show()))

    @guarded("/api/v1/settings", "settings", FULL, methods=("PATCH",), api=True)
    async def api_change_settings(self, request: IRequest, who: SignedIn) -> bytes:
        """A JSON object of changes; an empty body changes nothing (the answer of a GET)."""
        raw = request.content.read(MAX_BODY + 1) if request.content is not None else b""
        if len(raw) > MAX_BODY:
            return json_error(request, 400, f"the body is larger than {MAX_BODY} bytes")
        try:
            changes = json.loads(raw) if raw.strip() else {}
        except (ValueError, UnicodeDecodeError):
            return json_error(request, 400, BAD_BODY)
        if not isinstance(changes, dict):
            return json_error(request, 400, BAD_BODY)
        try:
            shown = await self.change_settings(request, who, changes)
        except SettingsRefused as e:
            return json_error(request, e.code, e.message)
        return json_body(request, settings_json(shown))

    # --- the page -------------------------------------------------------------------------

    @guarded("/settings", "settings", VIEW)
    async def settings_page(self, request: IRequest, who: SignedIn) -> bytes:
        saved = form_arg(request, b"saved", 100)
        return await self._settings_page(request, who, saved=saved if saved in KEYS else "")

    @guarded("/settings", "settings", FULL, methods=("POST",))
    async def change_setting(self, request: IRequest, who: SignedIn) -> bytes:
        """One key's form: C{do=set} with its C{value}, or C{do=reset} to the default."""
        name = form_arg(request, b"key", 100)
        if name not in KEYS:
            return self.see_other(request, b"/settings")
        text = form_arg(request, b"value", 64 * 1024)
        value: Any = None
        if form_arg(request, b"do", 10) != "reset":
            value = await self._typed(name, text)
        try:
            await self.change_settings(request, who, {name: value})
        except SettingsRefused as e:
            request.setResponseCode(e.code)
            return await self._settings_page(request, who, problem=(name, e.message, text))
        return self.see_other(request, f"/settings?saved={name}#k-{name}".encode("ascii"))

    async def _typed(self, name: str, text: str) -> Any:
        """The text of a key's field as a value: text keys take it as it is, others as TOML."""
        current, _ = (await self.cluster.show())[name]
        if isinstance(current, str):
            return text
        return read_value(text)

    async def _settings_page(
        self,
        request: IRequest,
        who: SignedIn,
        saved: str = "",
        problem: tuple[str, str, str] | None = None,
    ) -> bytes:
        shown = await self.cluster.show()
        can_change = who.role.allows("settings", FULL)
        # Plain text for the template to escape: the file's texts show <hostname> and such.
        translate = i18n.translator(i18n.request_language(request, self.frame.languages))
        sections = []
        for section in SECTIONS:
            rows = []
            for name, help_text in HELP.items():
                key = KEYS[name]
                if key.section != section:
                    continue
                value, source = shown[name]
                why = ""
                if key.node_only:
                    why = "node"
                elif source == FILE:
                    why = "file"
                draft = problem[2] if problem and problem[0] == name else None
                rows.append(
                    {
                        "name": name,
                        "key": key.key,
                        "help": translate(help_text) if help_text else "",
                        "value": "" if value is None else field_text(value),
                        "unset": value is None,
                        "secret": key.secret,
                        "source": source,
                        "source_name": SOURCE_NAMES[source],
                        "why": why,
                        "draft": draft,
                        "error": problem[1] if problem and problem[0] == name else "",
                    }
                )
            section_help = SECTION_HELP.get(section, "")
            sections.append((section, translate(section_help) if section_help else "", rows))
        return self.page(
            request,
            who,
            "admin/settings.html",
            sections=sections,
            can_change=can_change,
            origin=self.cluster.origin,
            saved=saved,
        )


def settings_json(shown: Shown) -> dict[str, dict[str, Any]]:
    """L{ClusterSettings.show}'s answer as the API gives it."""
    return {name: {"value": value, "source": source} for name, (value, source) in shown.items()}


def field_text(value: Any) -> str:
    """A value as its field shows it: text as it is, anything else as TOML."""
    return value if isinstance(value, str) else to_toml(value)


def to_toml_or(value: Any) -> str:
    """The value as TOML, or its repr when it cannot be one (the set call then says why)."""
    try:
        return to_toml(value)
    except ValueError:
        return repr(value)
