"""
Sending a PIN through an HTTP(S) SMS gateway, such as a Kannel smsbox C{sendsms} URL.

The administrator writes the request as templates with two placeholders, C{{to}} and
C{{text}}. Each is encoded for where it stands (percent-encoded in the URL, form-encoded
in a form body, a JSON string in a JSON body), so a message with C{&}, C{=}, C{#}, quotes,
backslashes, newlines or non-ASCII letters cannot change the request's shape.

The text carries the PIN: it is never logged, and the gateway's reply is cleaned of it
before it goes into a log line, an error or the returned reference (some gateways echo
the message back). The URL is never logged either: it often carries a password.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import quote, quote_plus, urlsplit

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError, ConnectionClosed, DNSLookupError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.client import ResponseFailed, ResponseNeverReceived
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from secmail.config import ConfigError
from secmail.sms.errors import SmsPermanentError as SmsPermanentError  # re-exported
from secmail.sms.errors import SmsTemporaryError as SmsTemporaryError  # re-exported

log = Logger()

PLACEHOLDERS = ("to", "text")
#: Longest gateway reply kept for a log line, an error or the returned reference.
MAX_REPLY_CHARS = 120

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_NUMBER = re.compile(r"\+[1-9][0-9]{6,14}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: E.164 country codes shorter than three digits; every other code has three.
_SHORT_COUNTRY_CODES = frozenset(
    "1 7 20 27 30 31 32 33 34 36 39 40 41 43 44 45 46 47 48 49 51 52 53 54 55 56 57 58"
    " 60 61 62 63 64 65 66 81 82 84 86 90 91 92 93 94 95 98".split()
)
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


@dataclass(frozen=True)
class HttpGatewaySettings:
    """
    The C{[sms.http]} table. Checked when built: a mistake raises L{ConfigError} with one
    line naming the key, so the gateway fails at start-up, not when a recipient waits.
    """

    #: Not in the repr (nor the headers): a URL may carry the gateway's password.
    url: str = field(repr=False)
    method: str = "GET"
    #: Not in the repr either: a body may carry an API key.
    body: str | None = field(default=None, repr=False)
    #: C{None}: a body starting with C{{} or C{[} is JSON, any other body is a form.
    body_type: Literal["form", "json"] | None = None
    headers: Mapping[str, str] = field(default_factory=dict, hash=False, repr=False)
    success: str | None = None
    timeout: float = 30.0

    def __post_init__(self) -> None:
        method = self.method.upper() if isinstance(self.method, str) else self.method
        if method not in ("GET", "POST"):
            raise ConfigError(f'sms.http.method: must be "GET" or "POST", got {self.method!r}')
        object.__setattr__(self, "method", method)
        _check_url(self.url)
        body_type = self.body_type
        if self.body is not None:
            if not isinstance(self.body, str):
                raise ConfigError("sms.http.body: must be a string (a form or JSON template)")
            if method == "GET":
                raise ConfigError('sms.http.body: a body needs method = "POST"')
            if body_type is None:
                body_type = "json" if self.body.lstrip()[:1] in ("{", "[") else "form"
            if body_type == "json":
                _check_json_body(self.body)
            elif body_type == "form":
                _check_placeholders("sms.http.body", _PLACEHOLDER.findall(self.body))
            else:
                raise ConfigError(
                    f'sms.http.body_type: must be "form" or "json", got {self.body_type!r}'
                )
        elif body_type is not None:
            raise ConfigError("sms.http.body_type: set, but there is no sms.http.body")
        object.__setattr__(self, "body_type", body_type)
        used = set(_PLACEHOLDER.findall(self.url)) | set(_PLACEHOLDER.findall(self.body or ""))
        for name in PLACEHOLDERS:
            if name not in used:
                raise ConfigError(
                    f"sms.http: {{{name}}} appears in neither sms.http.url nor sms.http.body;"
                    " the gateway would not get the " + ("number" if name == "to" else "message")
                )
        object.__setattr__(self, "headers", dict(_check_headers(self.headers)))
        if self.success is not None:
            try:
                re.compile(self.success)
            except (re.error, TypeError) as e:
                raise ConfigError(
                    f"sms.http.success: not a valid regular expression ({e})"
                ) from None
        if (
            isinstance(self.timeout, bool)
            or not isinstance(self.timeout, int | float)
            or not 0 < self.timeout < float("inf")
        ):
            raise ConfigError(
                f"sms.http.timeout: must be a positive number of seconds, got {self.timeout!r}"
            )


def _check_placeholders(key: str, names: list[str]) -> None:
    for name in names:
        if name not in PLACEHOLDERS:
            raise ConfigError(
                f"{key}: unknown placeholder {{{name}}}; only {{to}} and {{text}} are replaced"
            )


def _check_url(url: str) -> None:
    if not isinstance(url, str):
        raise ConfigError("sms.http.url: must be a string such as https://gw.example/send")
    _check_placeholders("sms.http.url", _PLACEHOLDER.findall(url))
    try:
        parts = urlsplit(_PLACEHOLDER.sub("x", url))
        host = parts.hostname
    except ValueError:
        host = None
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not host:
        raise ConfigError(
            "sms.http.url: must be http(s), such as https://gw.example/send?to={to}&text={text}"
        )
    for name in PLACEHOLDERS:
        if f"{{{name}}}" in parts.netloc:
            raise ConfigError(f"sms.http.url: {{{name}}} may not stand in the host name")


def _json_strings(value: Any, key: str) -> list[str]:
    """The placeholder names in a parsed JSON template's string values; none in keys."""
    if isinstance(value, str):
        return _PLACEHOLDER.findall(value)
    if isinstance(value, list):
        return [name for item in value for name in _json_strings(item, key)]
    if isinstance(value, dict):
        names = []
        for k, v in value.items():
            if _PLACEHOLDER.search(k):
                raise ConfigError(f"{key}: placeholders go in JSON values, not in keys ({k!r})")
            names.extend(_json_strings(v, key))
        return names
    return []


def _check_json_body(body: str) -> None:
    try:
        template = json.loads(body)
    except ValueError as e:
        raise ConfigError(
            f'sms.http.body: not valid JSON ({e}); placeholders go inside quotes: "{{text}}"'
        ) from None
    _check_placeholders("sms.http.body", _json_strings(template, "sms.http.body"))


def _check_headers(headers: Any) -> Mapping[str, str]:
    if not isinstance(headers, Mapping):
        raise ConfigError("sms.http.headers: must be a table of name = value")
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise ConfigError(f"sms.http.headers: {name!r} is not a header name")
        if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
            raise ConfigError(f"sms.http.headers.{name}: must be one line of text")
        if _PLACEHOLDER.search(value):
            raise ConfigError(
                f"sms.http.headers.{name}: placeholders are not replaced in headers;"
                " put {to} and {text} in sms.http.url or sms.http.body"
            )
    return headers


def mask_number(number: str) -> str:
    """
    A phone number fit for a log line: country code, two digits and the last two,
    C{+358401234567} as C{+358 40 *** **67}. Anything not shaped like a number is
    hidden whole.
    """
    digits = number.replace(" ", "")
    if not re.fullmatch(r"\+[0-9]{4,15}", digits):
        return "***"
    digits = digits[1:]
    cc_len = next(n for n in (1, 2, 3) if n == 3 or digits[:n] in _SHORT_COUNTRY_CODES)
    cc, national = digits[:cc_len], digits[cc_len:]
    if len(national) < 5:
        return f"+{cc} ***"
    if len(national) < 7:
        return f"+{cc} ***" + national[-2:]
    hidden = len(national) - 4
    groups = ["*" * min(3, hidden - i) for i in range(0, hidden, 3)]
    groups[-1] += national[-2:]
    return f"+{cc} {national[:2]} " + " ".join(groups)


def mask_sms_recipients(recipients: Sequence[str], text: str = "") -> tuple[list[str], str]:
    """
    The addresses of an SMS sent by e-mail (C{358401234567@sms.example}) with the number
    masked as L{mask_number} does, and C{text} with those numbers masked too.
    """
    shown = []
    for address in recipients:
        local, at, domain = address.rpartition("@")
        if at and local.isdigit():
            masked = mask_number("+" + local)
            text = text.replace(local, masked)
            address = f"{masked}@{domain}"
        shown.append(address)
    return shown, text


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
    return _PLACEHOLDER.sub(lambda m: encode(values[m.group(1)]), template)


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
