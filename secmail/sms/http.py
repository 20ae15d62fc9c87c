"""
Sending a PIN through an HTTP(S) SMS gateway, such as a Kannel smsbox C{sendsms} URL.

The administrator writes the request as templates with two placeholders, C{{to}} and
C{{text}}. Each is encoded for where it stands (percent-encoded in the URL, form-encoded
in a form body, a JSON string in a JSON body), so a message with C{&}, C{=}, C{#}, quotes,
backslashes, newlines or non-ASCII letters cannot change the request's shape.

The templates are checked when the configuration is read (L{HttpGatewaySettings} in
L{secmail.config.sms}). The text carries the PIN: it is never logged, and the gateway's
reply is cleaned of it before it goes into a log line, an error or the returned
reference (some gateways echo the message back). The URL is never logged either: it
often carries a password.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import quote, quote_plus

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError, ConnectionClosed, DNSLookupError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.client import ResponseFailed, ResponseNeverReceived
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from secmail.config.sms import PLACEHOLDER, HttpGatewaySettings
from secmail.masking import mask_number
from secmail.sms.errors import SmsPermanentError as SmsPermanentError  # re-exported
from secmail.sms.errors import SmsTemporaryError as SmsTemporaryError  # re-exported

log = Logger()

#: Longest gateway reply kept for a log line, an error or the returned reference.
MAX_REPLY_CHARS = 120

_NUMBER = re.compile(r"\+[1-9][0-9]{6,14}")
#: Failures reaching the gateway or reading its answer: worth trying again later.
_TRANSPORT_ERRORS = (
    ConnectError,
    DNSLookupError,
    ConnectionClosed,
    ResponseFailed,
    ResponseNeverReceived,
    PotentialDataLoss,
    OSError,
)


class HttpResponse(Protocol):
    """What is read from a treq response."""

    code: int

    def content(self) -> Deferred[bytes]: ...


class HttpClient(Protocol):
    """A treq C{HTTPClient} (or the C{treq} module, or C{StubTreq})."""

    def request(
        self,
        method: str,
        url: str,
        *,
        data: bytes | None = ...,
        headers: Headers | None = ...,
    ) -> Deferred[Any]: ...


class HttpSmsGateway:
    """
    Sends one SMS per call through the configured gateway. TLS verification is the HTTP
    client's: production passes C{HTTPClient(Agent(reactor))}, which verifies by default.
    """

    name = "http"

    def __init__(
        self, settings: HttpGatewaySettings, http_client: HttpClient, clock: IReactorTime
    ) -> None:
        self._settings = settings
        self._http = http_client
        self._clock = clock
        self._success = re.compile(settings.success) if settings.success is not None else None

    def build_request(
        self, number: str, text: str
    ) -> tuple[str, str, bytes | None, dict[str, str]]:
        """The method, URL, body and headers that send C{text} to C{number}."""
        s = self._settings
        values = {"to": number, "text": text}
        url = _substitute(s.url, values, lambda v: quote(v, safe=""))
        headers: dict[str, str] = {}
        data: bytes | None = None
        if s.body is not None:
            if s.body_type == "json":
                data = json.dumps(_fill_json(json.loads(s.body), values)).encode("ascii")
                headers["Content-Type"] = "application/json"
            else:
                data = _substitute(s.body, values, lambda v: quote_plus(v, safe="")).encode("ascii")
                headers["Content-Type"] = "application/x-www-form-urlencoded"
        own = {name.lower() for name in s.headers}
        headers = {k: v for k, v in headers.items() if k.lower() not in own}
        headers.update(s.headers)
        return s.method, url, data, headers

    async def send(self, number: str, text: str) -> str:
        """
        Send C{text} to C{number} (international, C{+<digits>}). Returns the gateway's
        reference: the first line of its answer, or C{HTTP <code>} when it said nothing.

        @raise SmsTemporaryError: no connection, no answer in time, 5xx, 408 or 429.
        @raise SmsPermanentError: a bad number, another 4xx or 3xx, or an answer not
            matching C{success}.
        """
        masked = mask_number(number)
        if not _NUMBER.fullmatch(number):
            raise SmsPermanentError(
                f"{masked} is not an international number such as +358401234567"
            )
        try:
            code, body = await self._exchange(number, text)
        except SmsTemporaryError as e:
            log.warn("SMS to {number} not sent, will retry: {reason}", number=masked, reason=str(e))
            raise
        reply = _first_line(body, text)
        where = f"HTTP {code}" + (f": {reply}" if reply else "")
        if code == 429 or code == 408 or 500 <= code <= 599:
            log.warn("SMS to {number} not sent, will retry: {reason}", number=masked, reason=where)
            raise SmsTemporaryError(f"gateway busy or failing ({where})")
        if not 200 <= code <= 299:
            log.error(
                "SMS to {number} refused by the gateway: {reason}", number=masked, reason=where
            )
            raise SmsPermanentError(f"gateway refused the message ({where})")
        if self._success is not None and not self._success.search(body.decode("utf-8", "replace")):
            log.error(
                "SMS to {number}: the gateway's answer does not match sms.http.success: {reason}",
                number=masked,
                reason=where,
            )
            raise SmsPermanentError(f"gateway answer does not match sms.http.success ({where})")
        log.info("SMS to {number} accepted by the gateway: {reply}", number=masked, reply=where)
        return reply or f"HTTP {code}"

    async def _exchange(self, number: str, text: str) -> tuple[int, bytes]:
        """The status and body of the gateway's answer, all within the timeout."""
        method, url, data, headers = self.build_request(number, text)
        wire_headers = Headers({name: [value] for name, value in headers.items()})

        async def exchange() -> tuple[int, bytes]:
            response: HttpResponse = await self._http.request(
                method, url, data=data, headers=wire_headers
            )
            return response.code, await response.content()

        timeout = self._settings.timeout
        timed_out = False

        def give_up() -> None:
            nonlocal timed_out
            timed_out = True
            attempt.cancel()

        attempt = Deferred.fromCoroutine(exchange())
        timer = self._clock.callLater(timeout, give_up)
        try:
            return await attempt
        except (CancelledError, *_TRANSPORT_ERRORS) as e:
            if timed_out:
                raise SmsTemporaryError(
                    f"no answer from the gateway within {timeout:g} s"
                ) from None
            if _is_cancellation(e):
                raise CancelledError() from None  # the caller gave up: not the gateway's fault
            raise SmsTemporaryError(f"gateway not reached: {_redact(_describe(e), text)}") from None
        finally:
            if timer.active():
                timer.cancel()


def _substitute(template: str, values: Mapping[str, str], encode: Any) -> str:
    """Replace the placeholders in one pass, so a text containing C{{to}} stays as it is."""
    return PLACEHOLDER.sub(lambda m: encode(values[m.group(1)]), template)


def _fill_json(value: Any, values: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return _substitute(value, values, lambda v: v)
    if isinstance(value, list):
        return [_fill_json(item, values) for item in value]
    if isinstance(value, dict):
        return {k: _fill_json(v, values) for k, v in value.items()}
    return value


def _redact(reply: str, text: str) -> str:
    """The reply without the message text in any of the forms a gateway may echo it."""
    if not text:
        return reply
    forms = {text, quote(text, safe=""), quote_plus(text, safe=""), json.dumps(text)[1:-1]}
    forms.update(text.splitlines())
    forms.update(re.findall(r"[0-9]+", text))  # the PIN, echoed on its own
    for form in sorted((f for f in forms if len(f) >= 4), key=len, reverse=True):
        reply = reply.replace(form, "[message]")
    return reply


def _first_line(body: bytes, text: str) -> str:
    lines = _redact(body.decode("utf-8", "replace"), text).strip().splitlines()
    first = lines[0].strip() if lines else ""
    if len(first) > MAX_REPLY_CHARS:
        first = first[: MAX_REPLY_CHARS - 1] + "…"
    return first


def _is_cancellation(error: BaseException) -> bool:
    if isinstance(error, ResponseFailed | ResponseNeverReceived):
        return any(r.check(CancelledError) for r in error.reasons)
    return isinstance(error, CancelledError)


def _describe(error: BaseException) -> str:
    if isinstance(error, ResponseFailed | ResponseNeverReceived):
        reasons = [r.value for r in error.reasons if r.value is not None]
        if reasons:
            return "; ".join(_describe(r) for r in reasons)
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
