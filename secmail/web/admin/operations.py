# -*- test-case-name: tests.test_admin_ops -*-
"""
The queue, the SMS outbox, the phone directory and the D-Compose directory: console pages and
their API endpoints. Pages and API call the same store methods as C{secmail queue},
C{secmail sms outbox} and C{secmail phones}, with the same checks; every change writes its
audit row in the change's own transaction. An SMS's number is shown masked, as the CLI does.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from twisted.web.iweb import IRequest

from secmail.address import AddressError, directory_address, parse_phone
from secmail.admin.roles import FULL, VIEW
from secmail.masking import mask_number, mask_sms_recipients
from secmail.store.audit import AuditRow
from secmail.store.queue_rows import QueueItem
from secmail.store.sms import OutboxItem
from secmail.web.admin.access import (
    ConsoleBase,
    SignedIn,
    client_address,
    guarded,
    json_body,
    json_error,
)
from secmail.web.admin.overview import Operations, age_parts, rfc3339
from secmail.web.forms import form_arg

#: The largest JSON body the phone API reads.
MAX_BODY = 4096


def queue_json(item: QueueItem) -> dict[str, Any]:
    """A queue row as the API gives it (an SMS by e-mail: its number masked)."""
    recipients, last_error = list(item.recipients), item.last_error
    if item.kind == "sms":
        recipients, last_error = mask_sms_recipients(recipients, last_error)
    return {
        "id": item.id,
        "message_id": item.message_id,
        "kind": item.kind,
        "state": item.state,
        "sender": item.sender,
        "recipients": recipients,
        "route": item.route,
        "created": rfc3339(item.created),
        "next_attempt": None if item.quarantined is not None else rfc3339(item.next_attempt),
        "attempts": item.attempts,
        "last_error": last_error,
        "quarantined": None if item.quarantined is None else rfc3339(item.quarantined),
    }


def masked_error(number: str, text: str) -> str:
    """An outbox row's last error with its number masked (a backend may quote it)."""
    masked = mask_number(number)
    for form in (number, number.lstrip("+")):
        if form:
            text = text.replace(form, masked)
    return text


def outbox_json(item: OutboxItem, next_attempt: int, last_error: str) -> dict[str, Any]:
    return {
        "id": item.id,
        "message_id": item.message_id,
        "number": mask_number(item.number),
        "created": rfc3339(item.created),
        "next_attempt": rfc3339(next_attempt),
        "expires": rfc3339(item.expires),
        "attempts": item.attempts,
        "last_error": masked_error(item.number, last_error),
    }


def phone_json(address: str, number: str, updated: int) -> dict[str, Any]:
    return {"address": address, "number": number, "changed": rfc3339(updated)}


def request_json(request: IRequest) -> Any:
    """The request's JSON body; ValueError when it is too long or not JSON."""
    content = request.content
    if content is None:
        raise ValueError("the body is empty")
    content.seek(0)
    body = content.read(MAX_BODY + 1)
    if len(body) > MAX_BODY:
        raise ValueError(f"the body is longer than {MAX_BODY} bytes")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ValueError('the body is not JSON such as {"number": "+358 40 1234567"}') from None


def queue_id(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) < 19 else None


class OperationsPages(ConsoleBase):
    """Queue, SMS outbox, phone directory and D-Compose directory."""

    ops: Operations

    def audit_row(self, request: IRequest, who: SignedIn) -> AuditRow:
        """The audit row a change fills in (the store sets action, before and after)."""
        return AuditRow(int(self.clock.seconds()), who.name, client_address(request), "")

    def phone_entry(self, address: str, number: str) -> tuple[str, str]:
        """The address and number as C{secmail phones add} checks them; AddressError else."""
        return directory_address(address), parse_phone(
            number, self.ops.settings.secure.default_country_code
        )

    # --- the queue ----------------------------------------------------------------------

    @guarded("/queue", "queue", VIEW)
    async def queue(self, request: IRequest, who: SignedIn) -> bytes:
        return await self._queue_page(request, who)

    async def _queue_page(self, request: IRequest, who: SignedIn, problem: str = "") -> bytes:
        now = int(self.clock.seconds())
        items = await self.ops.queue.queue_list()
        can_change = who.role.allows("queue", FULL)
        confirm = queue_id(form_arg(request, b"delete", 20)) if can_change else None
        notices = {}
        for name in ("retried", "deleted", "missing"):
            found = queue_id(form_arg(request, name.encode(), 20))
            if found is not None:
                notices[name] = found
        rows = []
        for item in items:
            shown = queue_json(item)
            rows.append((item, shown, age_parts(now - item.created)))
        return self.page(
            request,
            who,
            "admin/queue.html",
            rows=rows,
            can_change=can_change,
            confirm=next((r for r in rows if r[0].id == confirm), None),
            notices=notices,
            problem=problem,
        )

    async def _queue_form(self, request: IRequest, who: SignedIn) -> int | None:
        return queue_id(form_arg(request, b"id", 20))

    @guarded("/queue/retry", "queue", FULL, methods=("POST",))
    async def queue_retry(self, request: IRequest, who: SignedIn) -> bytes:
        row = await self._queue_form(request, who)
        if row is None:
            request.setResponseCode(400)
            return await self._queue_page(request, who, "id")
        item = await self.ops.queue.queue_retry(
            row, int(self.clock.seconds()), self.audit_row(request, who)
        )
        done = "retried" if item is not None else "missing"
        return self.see_other(request, f"/queue?{done}={row}".encode())

    @guarded("/queue/delete", "queue", FULL, methods=("POST",))
    async def queue_delete(self, request: IRequest, who: SignedIn) -> bytes:
        row = await self._queue_form(request, who)
        if row is None:
            request.setResponseCode(400)
            return await self._queue_page(request, who, "id")
        deleted = await self.ops.queue.queue_delete(
            row, int(self.clock.seconds()), self.audit_row(request, who)
        )
        done = "deleted" if deleted else "missing"
        return self.see_other(request, f"/queue?{done}={row}".encode())

    @guarded("/api/v1/queue", "queue", VIEW, api=True)
    async def api_queue(self, request: IRequest, who: SignedIn) -> bytes:
        return json_body(request, [queue_json(item) for item in await self.ops.queue.queue_list()])

    @guarded("/api/v1/queue/<int:row>/retry", "queue", FULL, methods=("POST",), api=True)
    async def api_queue_retry(self, request: IRequest, who: SignedIn, row: int) -> bytes:
        item = await self.ops.queue.queue_retry(
            row, int(self.clock.seconds()), self.audit_row(request, who)
        )
        if item is None:
            return json_error(request, 404, f"queue row {row} does not exist")
        return json_body(
            request, {"id": row, "retried": True, "released": item.quarantined is not None}
        )

    @guarded("/api/v1/queue/<int:row>", "queue", FULL, methods=("DELETE",), api=True)
    async def api_queue_delete(self, request: IRequest, who: SignedIn, row: int) -> bytes:
        deleted = await self.ops.queue.queue_delete(
            row, int(self.clock.seconds()), self.audit_row(request, who)
        )
        if not deleted:
            return json_error(request, 404, f"queue row {row} does not exist")
        return json_body(request, {"id": row, "deleted": True})

    # --- the SMS outbox -----------------------------------------------------------------

    @guarded("/sms", "sms", VIEW)
    async def sms_outbox(self, request: IRequest, who: SignedIn) -> bytes:
        rows = [outbox_json(*row) for row in await self.ops.sms.outbox()]
        return self.page(request, who, "admin/sms.html", rows=rows)

    @guarded("/api/v1/sms", "sms", VIEW, api=True)
    async def api_sms(self, request: IRequest, who: SignedIn) -> bytes:
        return json_body(request, [outbox_json(*row) for row in await self.ops.sms.outbox()])

    # --- the phone directory ------------------------------------------------------------

    @guarded("/phones", "phones", VIEW)
    async def phones(self, request: IRequest, who: SignedIn) -> bytes:
        return await self._phones_page(request, who)

    async def _phones_page(
        self,
        request: IRequest,
        who: SignedIn,
        problem: str = "",
        detail: str = "",
        draft: tuple[str, str] = ("", ""),
    ) -> bytes:
        entries = [phone_json(*entry) for entry in await self.ops.sms.phones()]
        listed = {entry["address"] for entry in entries}
        can_change = who.role.allows("phones", FULL)
        asked = form_arg(request, b"remove", 300)
        notices = {}
        for name in ("saved", "removed", "missing"):
            given = form_arg(request, name.encode(), 300)
            try:
                address = directory_address(given) if given else ""
            except AddressError:
                continue
            if address and (address in listed) == (name == "saved"):
                notices[name] = address
        return self.page(
            request,
            who,
            "admin/phones.html",
            entries=entries,
            can_change=can_change,
            confirm=asked if can_change and asked in listed else "",
            notices=notices,
            problem=problem,
            detail=detail,
            draft=draft,
            country=self.ops.settings.secure.default_country_code,
        )

    @guarded("/phones", "phones", FULL, methods=("POST",))
    async def phone_add(self, request: IRequest, who: SignedIn) -> bytes:
        address = form_arg(request, b"address", 300)
        number = form_arg(request, b"number", 60)
        try:
            address, number = self.phone_entry(address, number)
        except AddressError as e:
            request.setResponseCode(400)
            return await self._phones_page(request, who, "entry", e.text, (address, number))
        await self.ops.sms.set_phone(
            address, number, int(self.clock.seconds()), self.audit_row(request, who)
        )
        return self.see_other(request, f"/phones?saved={quote(address, safe='@')}".encode())

    @guarded("/phones/remove", "phones", FULL, methods=("POST",))
    async def phone_remove(self, request: IRequest, who: SignedIn) -> bytes:
        try:
            address = directory_address(form_arg(request, b"address", 300))
        except AddressError as e:
            request.setResponseCode(400)
            return await self._phones_page(request, who, "remove", e.text)
        removed = await self.ops.sms.remove_phone(address, self.audit_row(request, who))
        done = "removed" if removed else "missing"
        return self.see_other(request, f"/phones?{done}={quote(address, safe='@')}".encode())

    @guarded("/api/v1/phones", "phones", VIEW, api=True)
    async def api_phones(self, request: IRequest, who: SignedIn) -> bytes:
        return json_body(request, [phone_json(*entry) for entry in await self.ops.sms.phones()])

    @guarded("/api/v1/phones/<address>", "phones", FULL, methods=("PUT",), api=True)
    async def api_phone_put(self, request: IRequest, who: SignedIn, address: str) -> bytes:
        try:
            body = request_json(request)
        except ValueError as e:
            return json_error(request, 400, str(e))
        if not isinstance(body, dict) or not isinstance(body.get("number"), str):
            return json_error(request, 400, 'the body must be {"number": "+358 40 1234567"}')
        try:
            address, number = self.phone_entry(address, body["number"])
        except AddressError as e:
            return json_error(request, 400, e.text)
        now = int(self.clock.seconds())
        added = await self.ops.sms.set_phone(address, number, now, self.audit_row(request, who))
        return json_body(request, {**phone_json(address, number, now), "added": added})

    @guarded("/api/v1/phones/<address>", "phones", FULL, methods=("DELETE",), api=True)
    async def api_phone_delete(self, request: IRequest, who: SignedIn, address: str) -> bytes:
        try:
            address = directory_address(address)
        except AddressError as e:
            return json_error(request, 400, e.text)
        if not await self.ops.sms.remove_phone(address, self.audit_row(request, who)):
            return json_error(request, 404, f"{address} is not in the phone directory")
        return json_body(request, {"address": address, "removed": True})

    # --- the D-Compose directory --------------------------------------------------------

    @guarded("/compose-directory", "phones", VIEW)
    async def compose_directory(self, request: IRequest, who: SignedIn) -> bytes:
        return self.page(
            request,
            who,
            "admin/compose_directory.html",
            addresses=self.ops.settings.portal.compose_directory,
            can_see_settings=who.role.allows("settings", VIEW),
        )
