# -*- test-case-name: tests.test_admin_trace -*-
"""
Message trace in the console and the API: find a message by sender, recipient, date range,
message or envelope id; each recipient's level, state and event history (never subject,
body, attachment names or link tokens: L{secmail.store.trace} holds none of them); and the
message actions, revoke (L{MessageTrace.revoke}) and resend (L{LetterResend.resend}), each
with its audit row in the same transaction as the change.

Pages: C{/trace} (search form and results), C{/trace/ID} (one message), C{/trace/ID/revoke}
(a confirmation, then the POST), C{/trace/ID/resend} (POST). API: C{GET /api/v1/messages},
C{POST /api/v1/messages/ID/revoke} and C{.../resend}.
"""

from __future__ import annotations

import datetime
import json
from typing import Any
from urllib.parse import quote

from twisted.web.iweb import IRequest

from secmail.admin.roles import FULL, VIEW
from secmail.resend import LetterResend
from secmail.store.audit import AuditRow
from secmail.store.trace import (
    LetterConflict,
    MessageTrace,
    TracedMessage,
    TraceError,
    TraceEvent,
    UnknownMessage,
)
from secmail.web.admin.access import (
    ConsoleBase,
    SignedIn,
    client_address,
    guarded,
    json_body,
    json_error,
)
from secmail.web.forms import form_arg
from secmail.web.i18n import N_

#: At most this many messages in one answer (the API's C{limit} may ask for fewer or more).
SEARCH_LIMIT = 100
MAX_LIMIT = 1000
#: The API's search parameters.
SEARCH_PARAMETERS = ("recipient", "sender", "since", "until", "id", "limit")
#: A POST body larger than this is not a C{{"recipient": ...}}.
MAX_ACTION_BODY = 4096
#: Events a helpdesk looks for first ("I never got my PIN"): codes, PINs and their SMS.
PIN_KINDS = ("PIN ", "sms ", "code ")
PIN_EXACT = ("locked", "notification returned", "resent")
#: Events that say something went wrong.
BAD_WORDS = ("failed", "not sent", "expired", "wrong", "refused", "locked", "bounced", "returned")

LEVEL_NAMES = {
    "letter": N_("letter"),
    "registered": N_("registered letter"),
    "relay": N_("relayed"),
    "compose": N_("written in D-Compose"),
}
STATE_NAMES = {
    "notified": N_("notified"),
    "notification queued": N_("notification queued"),
    "notification deferred": N_("notification deferred"),
    "notification quarantined": N_("notification quarantined"),
    "notification returned": N_("notification returned"),
    "opened": N_("opened"),
    "locked": N_("locked"),
    "revoked": N_("withdrawn"),
    "expired": N_("expired"),
    "deleted": N_("deleted"),
    "queued": N_("queued"),
    "deferred": N_("deferred"),
    "quarantined": N_("quarantined"),
    "delivered": N_("delivered"),
    "bounced": N_("bounced"),
    "deleted by admin": N_("deleted by admin"),
    "unknown": N_("unknown"),
}


def utc(at: int) -> str:
    """RFC 3339 in UTC, as every API time."""
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def shown_time(at: int) -> str:
    return utc(at).replace("T", " ").removesuffix("Z")


def parse_time(name: str, text: str, *, end_of_day: bool = False) -> int:
    """An RFC 3339 time or a date (its first second, or its last with C{end_of_day}), UTC."""
    text = text.strip()
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise TraceError(
            f"{name}: {text[:40]!r} is not an RFC 3339 time such as 2026-12-01T00:00:00Z "
            "or a date such as 2026-12-01"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    if end_of_day and len(text) == 10:
        when += datetime.timedelta(days=1, seconds=-1)
    return int(when.timestamp())


def event_json(event: TraceEvent) -> dict[str, Any]:
    return {"at": utc(event.at), "kind": event.kind, "detail": event.detail}


def message_json(message: TracedMessage) -> dict[str, Any]:
    """One message as the API gives it: ids, times, addresses, states and events only."""
    return {
        "id": message.id,
        "received": utc(message.received),
        "sender": message.sender,
        "recipients": [
            {
                "address": r.address,
                "level": r.level,
                "state": r.state,
                "events": [event_json(e) for e in r.events],
            }
            for r in message.recipients
        ],
        "events": [event_json(e) for e in message.events],
    }


def is_pin_event(event: TraceEvent) -> bool:
    return event.kind.startswith(PIN_KINDS) or event.kind in PIN_EXACT


def is_bad_event(event: TraceEvent) -> bool:
    return any(word in event.kind for word in BAD_WORDS)


def _addresses(message: TracedMessage, envelope_ids: list[str]) -> list[str]:
    """The recipients' addresses of the envelopes an action changed, in the message's order."""
    return [r.address for r in message.recipients if r.envelope_id in envelope_ids]


def _back_to(message_id: str, done: str) -> bytes:
    """The message's page after an action (the id as checked: hex digits, quoted anyway)."""
    return f"/trace/{quote(message_id.strip().lower(), safe='')}?done={done}".encode("ascii")


def action_status(error: TraceError) -> int:
    if isinstance(error, UnknownMessage):
        return 404
    if isinstance(error, LetterConflict):
        return 409
    return 400


class TracePages(ConsoleBase):
    """The message trace pages and API (a mixin of L{secmail.web.admin.console.Console})."""

    trace: MessageTrace
    #: None: this console cannot resend (every resend answers 409 saying so).
    resender: LetterResend | None = None

    async def _resend(self, request: IRequest, who: SignedIn, message_id: str) -> list[str]:
        recipient = (
            self._action_recipient(request)
            if request.path.startswith(b"/api/")
            else (form_arg(request, b"recipient", 300).strip() or None)
        )
        if self.resender is None:
            raise LetterConflict("this console cannot resend: it has no notification settings")
        return await self.resender.resend(
            message_id, recipient, audit=self._actor(request, who, "resent")
        )

    def _actor(self, request: IRequest, who: SignedIn, action: str) -> AuditRow:
        return AuditRow(
            at=int(self.clock.seconds()),
            admin=who.name,
            address=client_address(request),
            action=action,
        )

    # --- search ---------------------------------------------------------------------

    async def _search(self, fields: dict[str, str], limit: int) -> list[TracedMessage]:
        """@raise TraceError: a field that cannot be used."""
        given = {name: value.strip() for name, value in fields.items() if value.strip()}
        return await self.trace.search(
            recipient=given.get("recipient"),
            sender=given.get("sender"),
            since=parse_time("since", given["since"]) if "since" in given else None,
            until=(
                parse_time("until", given["until"], end_of_day=True) if "until" in given else None
            ),
            message_id=given.get("id"),
            limit=limit,
        )

    @guarded("/api/v1/messages", "trace", VIEW, api=True)
    async def api_messages(self, request: IRequest, who: SignedIn) -> bytes:
        args = request.args or {}
        names = [k.decode("utf-8", "replace") for k in args]
        unknown = sorted(name for name in names if name not in SEARCH_PARAMETERS)
        if unknown:
            return json_error(
                request,
                400,
                f"unknown parameter {unknown[0][:40]}: use {', '.join(SEARCH_PARAMETERS)}",
            )
        fields = {name: form_arg(request, name.encode(), 300) for name in SEARCH_PARAMETERS}
        limit = SEARCH_LIMIT
        if fields.pop("limit"):
            text = form_arg(request, b"limit", 10)
            if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LIMIT:
                return json_error(request, 400, f"limit: {text!r} is not a number from 1 to 1000")
            limit = int(text)
        try:
            found = await self._search(fields, limit)
        except TraceError as e:
            return json_error(request, 400, str(e))
        return json_body(request, [message_json(m) for m in found])

    @guarded("/trace", "trace", VIEW)
    async def trace_page(self, request: IRequest, who: SignedIn) -> bytes:
        fields = {
            name: form_arg(request, name.encode(), 300).strip()
            for name in ("recipient", "sender", "since", "until", "id")
        }
        problem = ""
        found: list[TracedMessage] = []
        try:
            found = await self._search(fields, SEARCH_LIMIT)
        except TraceError as e:
            problem = str(e)
            request.setResponseCode(400)
        return self.page(
            request,
            who,
            "admin/trace.html",
            fields=fields,
            searched=any(fields.values()),
            problem=problem,
            results=[self._row(m) for m in found],
            limit=SEARCH_LIMIT,
            level_names=LEVEL_NAMES,
            state_names=STATE_NAMES,
        )

    def _row(self, message: TracedMessage) -> dict[str, Any]:
        return {
            "id": message.id,
            "short": message.short_id,
            "received": shown_time(message.received),
            "sender": message.sender or "<>",
            "recipients": [(r.address, r.level, r.state) for r in message.recipients],
        }

    # --- one message ----------------------------------------------------------------

    @guarded("/trace/<message_id>", "trace", VIEW)
    async def trace_message(self, request: IRequest, who: SignedIn, message_id: str) -> bytes:
        done = form_arg(request, b"done", 20)
        return await self._message_page(
            request, who, message_id, done=done if done in ("revoked", "resent") else ""
        )

    async def _message_page(
        self,
        request: IRequest,
        who: SignedIn,
        message_id: str,
        *,
        done: str = "",
        problem: str = "",
    ) -> bytes:
        try:
            message = await self.trace.message(message_id)
        except TraceError as e:
            request.setResponseCode(action_status(e))
            return self.page(request, who, "admin/trace_missing.html", problem=str(e))
        pin = [
            (shown_time(e.at), e, r.address)
            for r in message.recipients
            for e in r.events
            if is_pin_event(e)
        ] + [(shown_time(e.at), e, "") for e in message.events if is_pin_event(e)]
        pin.sort(key=lambda item: item[1].at)
        return self.page(
            request,
            who,
            "admin/trace_message.html",
            message=message,
            received=shown_time(message.received),
            pin=pin,
            shown_time=shown_time,
            is_bad=is_bad_event,
            is_pin=is_pin_event,
            can_act=who.role.allows("actions", FULL),
            secure=[r for r in message.recipients if r.secure and r.state != "revoked"],
            done=done,
            problem=problem,
            level_names=LEVEL_NAMES,
            state_names=STATE_NAMES,
        )

    # --- revoke and resend ----------------------------------------------------------

    @guarded("/trace/<message_id>/revoke", "actions", FULL)
    async def revoke_confirm(self, request: IRequest, who: SignedIn, message_id: str) -> bytes:
        """The confirmation step: what a revoke does, and the button that does it."""
        try:
            message = await self.trace.message(message_id)
        except TraceError as e:
            request.setResponseCode(action_status(e))
            return self.page(request, who, "admin/trace_missing.html", problem=str(e))
        recipient = form_arg(request, b"recipient", 300).strip()
        secure = [r for r in message.recipients if r.secure and r.state != "revoked"]
        if recipient:
            secure = [r for r in secure if r.address == recipient.lower()]
        return self.page(
            request,
            who,
            "admin/trace_revoke.html",
            message=message,
            recipient=recipient,
            addresses=[r.address for r in secure],
        )

    @guarded("/trace/<message_id>/revoke", "actions", FULL, methods=("POST",))
    async def revoke_page(self, request: IRequest, who: SignedIn, message_id: str) -> bytes:
        recipient = form_arg(request, b"recipient", 300).strip() or None
        try:
            await self.trace.revoke(
                message_id,
                recipient,
                now=int(self.clock.seconds()),
                audit=self._actor(request, who, "revoked"),
            )
        except TraceError as e:
            request.setResponseCode(action_status(e))
            return await self._message_page(request, who, message_id, problem=str(e))
        return self.see_other(request, _back_to(message_id, "revoked"))

    @guarded("/trace/<message_id>/resend", "actions", FULL, methods=("POST",))
    async def resend_page(self, request: IRequest, who: SignedIn, message_id: str) -> bytes:
        try:
            await self._resend(request, who, message_id)
        except TraceError as e:
            request.setResponseCode(action_status(e))
            return await self._message_page(request, who, message_id, problem=str(e))
        return self.see_other(request, _back_to(message_id, "resent"))

    def _action_recipient(self, request: IRequest) -> str | None:
        """The JSON body's C{recipient} (None without a body). @raise TraceError."""
        content = request.content
        body = b"" if content is None else content.read(MAX_ACTION_BODY + 1)
        if not body.strip():
            return None
        if len(body) > MAX_ACTION_BODY:
            raise TraceError('the body is too long: send {} or {"recipient": ADDRESS}')
        try:
            value = json.loads(body)
        except ValueError:
            raise TraceError('the body is not JSON: send {} or {"recipient": ADDRESS}') from None
        if not isinstance(value, dict) or set(value) - {"recipient"}:
            raise TraceError('the body may hold only "recipient": {"recipient": ADDRESS}')
        recipient = value.get("recipient")
        if recipient is None:
            return None
        if not isinstance(recipient, str) or not recipient.strip():
            raise TraceError('"recipient" must be an address such as bob@partner.example')
        return recipient

    @guarded("/api/v1/messages/<message_id>/revoke", "actions", FULL, methods=("POST",), api=True)
    async def api_revoke(self, request: IRequest, who: SignedIn, message_id: str) -> bytes:
        try:
            recipient = self._action_recipient(request)
            revoked = await self.trace.revoke(
                message_id,
                recipient,
                now=int(self.clock.seconds()),
                audit=self._actor(request, who, "revoked"),
            )
            message = await self.trace.message(message_id)
        except TraceError as e:
            return json_error(request, action_status(e), str(e))
        body: dict[str, Any] = {"revoked": _addresses(message, revoked)}
        if who.role.allows("trace", VIEW):  # the trail is the trace area's to show
            body["message"] = message_json(message)
        return json_body(request, body)

    @guarded("/api/v1/messages/<message_id>/resend", "actions", FULL, methods=("POST",), api=True)
    async def api_resend(self, request: IRequest, who: SignedIn, message_id: str) -> bytes:
        try:
            resent = await self._resend(request, who, message_id)
            message = await self.trace.message(message_id)
        except TraceError as e:
            return json_error(request, action_status(e), str(e))
        body: dict[str, Any] = {"resent": _addresses(message, resent)}
        if who.role.allows("trace", VIEW):
            body["message"] = message_json(message)
        return json_body(request, body)
