"""
The C{[sms]} table and its sub-tables: how PINs go out by SMS (a modem, an HTTP(S)
gateway such as Kannel, an e-mail-to-SMS gateway) and the PIN text per language.

The C{[sms.http]} request templates are checked here, when the settings are built, so a
mistake stops the gateway at start-up with one line naming the key, not when a
recipient waits for a PIN.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from secmail.config._base import (
    LANGUAGES,
    ConfigError,
    Schema,
    as_mailbox,
    as_nonempty,
    as_positive_int,
    as_positive_number,
    as_str,
    as_str_list,
    as_str_table,
)

#: The ways of sending an SMS, as named in C{sms.order}.
SMS_BACKENDS = ("modem", "http", "smtp")
#: What an C{[sms.http]} template may use: the number and the message.
PLACEHOLDERS = ("to", "text")
#: A C{{name}} placeholder in a template.
PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
#: What a PIN text template may use, and an example of each for checking.
PIN_TEXT_PLACEHOLDERS = {"pin": "123456", "minutes": "10", "brand": "Example Ltd"}

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@dataclass(frozen=True)
class ModemSettings:
    """The C{[sms.modem]} table: a GSM modem on a serial port."""

    device: str
    baudrate: int = 115200
    #: Empty: the SIM asks for no PIN.
    sim_pin: str = field(default="", repr=False)


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
                _check_placeholders("sms.http.body", PLACEHOLDER.findall(self.body))
            else:
                raise ConfigError(
                    f'sms.http.body_type: must be "form" or "json", got {self.body_type!r}'
                )
        elif body_type is not None:
            raise ConfigError("sms.http.body_type: set, but there is no sms.http.body")
        object.__setattr__(self, "body_type", body_type)
        used = set(PLACEHOLDER.findall(self.url)) | set(PLACEHOLDER.findall(self.body or ""))
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


@dataclass(frozen=True)
class SmsSettings:
    """How PINs go out by SMS: the backends in C{order}, tried in turn. Empty: no SMS."""

    order: tuple[str, ...] = ()
    modem: ModemSettings | None = None
    http: HttpGatewaySettings | None = None
    #: Where an e-mail-to-SMS gateway takes mail, with C{{to}} for the digits of the number.
    smtp_address: str | None = None
    #: The PIN text by language, overriding the built-in one: C{{pin}}, C{{minutes}}, C{{brand}}.
    pin_text: Mapping[str, str] = field(default_factory=dict, hash=False)


# --- [sms.http]: the request templates ------------------------------------------------------


def _check_placeholders(key: str, names: list[str]) -> None:
    for name in names:
        if name not in PLACEHOLDERS:
            raise ConfigError(
                f"{key}: unknown placeholder {{{name}}}; only {{to}} and {{text}} are replaced"
            )


def _check_url(url: str) -> None:
    if not isinstance(url, str):
        raise ConfigError("sms.http.url: must be a string such as https://gw.example/send")
    _check_placeholders("sms.http.url", PLACEHOLDER.findall(url))
    try:
        parts = urlsplit(PLACEHOLDER.sub("x", url))
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
        return PLACEHOLDER.findall(value)
    if isinstance(value, list):
        return [name for item in value for name in _json_strings(item, key)]
    if isinstance(value, dict):
        names = []
        for k, v in value.items():
            if PLACEHOLDER.search(k):
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
        if PLACEHOLDER.search(value):
            raise ConfigError(
                f"sms.http.headers.{name}: placeholders are not replaced in headers;"
                " put {to} and {text} in sms.http.url or sms.http.body"
            )
    return headers


# --- the other keys ----------------------------------------------------------------------------


def _sms_order(value: Any) -> tuple[str, ...]:
    names = as_str_list(value)
    for name in names:
        if name not in SMS_BACKENDS:
            raise ValueError(f'{name!r} is not a backend; use "modem", "http" and "smtp"')
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{', '.join(repr(d) for d in duplicates)} listed more than once")
    return names


def _sim_pin(value: Any) -> str:
    text = as_str(value).strip()
    if text and not (text.isascii() and text.isdigit() and 4 <= len(text) <= 8):
        # The value itself is not repeated: it is a secret.
        raise ValueError('must be 4 to 8 digits, or "" for a SIM that asks for no PIN')
    return text


def _pin_text(value: Any) -> dict[str, str]:
    texts = as_str_table(value)
    for language, text in texts.items():
        if language not in LANGUAGES:
            raise ValueError(f"{language!r} is not one of {', '.join(LANGUAGES)}")
        names = re.findall(r"\{([^{}]*)\}", text)
        unknown = sorted({n for n in names if n not in PIN_TEXT_PLACEHOLDERS})
        if unknown:
            known = ", ".join("{" + n + "}" for n in PIN_TEXT_PLACEHOLDERS)
            raise ValueError(f"{language}: unknown placeholder {{{unknown[0]}}} (known: {known})")
        try:
            filled = text.format(**PIN_TEXT_PLACEHOLDERS)
        except (ValueError, IndexError, KeyError) as e:
            raise ValueError(f"{language}: not a valid template ({e})") from None
        if PIN_TEXT_PLACEHOLDERS["pin"] not in filled:  # {{pin}} is a literal "{pin}"
            raise ValueError(f"{language}: the text must hold {{pin}}")
    return texts


def _sms_address(value: Any) -> str:
    text = as_nonempty(value).strip()
    names = re.findall(r"\{([^{}]*)\}", text)
    if "to" not in names or any(name != "to" for name in names):
        raise ValueError(
            f"{text!r} must hold {{to}} (the number's digits) and no other placeholder,"
            ' such as "{to}@sms.example.net"'
        )
    try:
        as_mailbox(text.replace("{to}", "358401234567"))
    except ValueError:
        raise ValueError(
            f'{text!r} is not an e-mail address template such as "{{to}}@sms.example.net"'
        ) from None
    return text


SCHEMA: Schema = {
    # A dotted name is a sub-table: [sms.modem] arrives as raw["sms"]["modem"].
    "sms": {"order": _sms_order, "pin_text": _pin_text},
    "sms.modem": {"device": as_nonempty, "baudrate": as_positive_int, "sim_pin": _sim_pin},
    # HttpGatewaySettings checks the values' meaning; these check only their types.
    "sms.http": {
        "url": as_nonempty,
        "method": as_str,
        "body": as_str,
        "body_type": as_str,
        "headers": as_str_table,
        "success": as_str,
        "timeout": as_positive_number,
    },
    "sms.smtp": {"address": _sms_address},
}


def build_sms(values: dict[str, dict[str, Any]]) -> SmsSettings:
    """The section and its sub-tables; every backend in C{sms.order} has its table."""
    modem = http = smtp_address = None
    if "sms.modem" in values:
        m = values["sms.modem"]
        if "device" not in m:
            raise ConfigError(
                "sms.modem.device: missing; the modem's serial port, e.g. /dev/ttyUSB0"
            )
        modem = ModemSettings(**m)
    if "sms.http" in values:
        h = values["sms.http"]
        if "url" not in h:
            raise ConfigError(
                "sms.http.url: missing; the gateway's URL, e.g. "
                "https://gw.example/send?to={to}&text={text}"
            )
        http = HttpGatewaySettings(**h)
    if "sms.smtp" in values:
        if "address" not in values["sms.smtp"]:
            raise ConfigError('sms.smtp.address: missing; e.g. "{to}@sms.example.net"')
        smtp_address = values["sms.smtp"]["address"]
    order = values.get("sms", {}).get("order", ())
    sections = {"modem": modem, "http": http, "smtp": smtp_address}
    for name in order:
        if sections[name] is None:
            raise ConfigError(f'sms.order: "{name}" needs an [sms.{name}] section')
    return SmsSettings(
        order=order,
        modem=modem,
        http=http,
        smtp_address=smtp_address,
        pin_text=values.get("sms", {}).get("pin_text", {}),
    )
