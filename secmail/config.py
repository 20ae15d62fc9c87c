"""
The TOML configuration file turned into typed, validated settings.

Every problem is reported as one L{ConfigError} whose text names the key and
what is wrong with it, so that C{twistd secmail} and C{secmail check-config}
can print one clear line and stop.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from secmail.sms.http import HttpGatewaySettings

DEFAULT_DATA_DIR = "secmail-data"
#: Read by C{twistd secmail} and the C{secmail} command when no C{--config} is given and the
#: file exists; otherwise both run on the embedded defaults.
DEFAULT_FILE = "/etc/secmail/secmail.toml"
#: The portal's languages (gettext catalogues in web/locale); English is built in.
LANGUAGES = ("en", "fi", "sv")
#: Logo formats by their first bytes. Not SVG: an SVG can carry script.
LOGO_TYPES = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg"}
MAX_PHRASE_CHARS = 40
#: The ways of sending an SMS, as named in C{sms.order}.
SMS_BACKENDS = ("modem", "http", "smtp")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and the problem."""


@dataclass(frozen=True)
class Route:
    """Where mail goes: direct to the Internet by MX lookup, or to one SMTP host."""

    mx: bool
    host: str = ""
    port: int = 25

    def __str__(self) -> str:
        return "mx" if self.mx else f"smtp://{self.host}:{self.port}"


MX = Route(mx=True)


@dataclass(frozen=True)
class GatewaySettings:
    hostname: str
    data_dir: str
    bounce_address: str
    notification_from: str


@dataclass(frozen=True)
class SmtpSettings:
    listen: tuple[str, ...] = ("tcp:2525:interface=127.0.0.1",)
    accepted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_message_size: int = 10_240_000
    max_header_size: int = 102_400
    max_recipients: int = 1000
    max_line_length: int = 2048
    max_hops: int = 50
    idle_timeout: int = 300
    max_connections_per_client: int = 50
    soft_error_limit: int = 10
    hard_error_limit: int = 20
    transaction_timeout: int = 3600
    min_data_rate: int = 500
    junk_command_limit: int = 100
    tls_certificate: str = ""
    tls_key: str = ""
    starttls: bool = True


@dataclass(frozen=True)
class RouteSettings:
    outgoing: Route = MX
    incoming: Route | None = None
    incoming_domains: tuple[str, ...] = ()
    domains: Mapping[str, Route] = field(default_factory=dict)
    relay_ca_file: str = ""

    def is_incoming(self, domain: str) -> bool:
        domain = domain.lower()
        return domain in self.incoming_domains or domain in self.domains

    def for_domain(self, domain: str) -> Route:
        """The route for mail to C{domain}: its own, the incoming route or the outgoing one."""
        domain = domain.lower()
        if domain in self.domains:
            return self.domains[domain]
        if domain in self.incoming_domains and self.incoming is not None:
            return self.incoming
        return self.outgoing


@dataclass(frozen=True)
class SecureSettings:
    mode: str = "marked"
    extension: str = ".s"
    default_country_code: str = "358"
    retention_days: int = 30
    #: Days the audit trail (message events) is kept; at least retention_days.
    audit_days: int = 365
    subject_keyword: str = "[secure]"
    notification_shows_subject: bool = False


@dataclass(frozen=True)
class PortalSettings:
    listen: tuple[str, ...] = ("ssl:8443:interface=127.0.0.1",)
    url: str = "https://localhost:8443"
    compose_directory: tuple[str, ...] = ()
    max_upload_size: int = 10_240_000
    brand_name: str = "Secure mail"
    brand_colour: str = "#1f5fae"
    logo_file: str = ""
    #: The logo's media type (image/png or image/jpeg), found from its bytes at load time.
    logo_type: str = ""
    verification_phrase: str = ""
    languages: tuple[str, ...] = LANGUAGES
    #: D-Compose code mails: to one mailbox (lower-cased, +tag removed) in 24 hours, for
    #: one client (IPv4 address or IPv6 /64) in an hour, and to everyone in an hour / a day.
    compose_codes_per_mailbox: int = 5
    compose_codes_per_client: int = 10
    compose_codes_per_hour: int = 60
    compose_codes_per_day: int = 300


@dataclass(frozen=True)
class StoreSettings:
    database: str
    master_key_file: str
    master_key_generated: bool


@dataclass(frozen=True)
class QueueSettings:
    retry_initial: int = 300
    retry_max: int = 4000
    lifetime: int = 5 * 24 * 3600
    poll_interval: float = 5.0
    concurrency: int = 20
    connect_timeout: int = 30


@dataclass(frozen=True)
class ModemSettings:
    """The C{[sms.modem]} table: a GSM modem on a serial port."""

    device: str
    baudrate: int = 115200
    #: Empty: the SIM asks for no PIN.
    sim_pin: str = field(default="", repr=False)


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


@dataclass(frozen=True)
class Settings:
    gateway: GatewaySettings
    smtp: SmtpSettings
    routes: RouteSettings
    secure: SecureSettings
    portal: PortalSettings
    store: StoreSettings
    queue: QueueSettings
    sms: SmsSettings = SmsSettings()

    @property
    def tls_generated(self) -> bool:
        """Whether the certificate is the self-signed one kept in the data directory."""
        return not self.smtp.tls_certificate

    @property
    def tls_certificate(self) -> str:
        return self.smtp.tls_certificate or os.path.join(self.gateway.data_dir, "tls", "cert.pem")

    @property
    def tls_key(self) -> str:
        return self.smtp.tls_key or os.path.join(self.gateway.data_dir, "tls", "key.pem")


# --- value checkers: each returns the converted value or raises ValueError ----------------


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {_kind(value)}")
    return value


def _nonempty(value: Any) -> str:
    text = _str(value)
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {_kind(value)}")
    return value


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be a whole number, not {_kind(value)}")
    if value <= 0:
        raise ValueError(f"must be greater than 0, got {value}")
    return value


def _positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number, not {_kind(value)}")
    if value <= 0:
        raise ValueError(f"must be greater than 0, got {value}")
    return float(value)


def _str_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f"must be a list of strings, not {_kind(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ValueError(f"item {i + 1} must be a string, not {_kind(item)}")
    return tuple(value)


def _endpoints(value: Any) -> tuple[str, ...]:
    items = _str_list(value)
    for item in items:
        check_endpoint(item)
    return items


def _networks(value: Any) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    nets = []
    for item in _str_list(value):
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(
                f"{item!r} is not a network in CIDR form such as 127.0.0.0/8"
            ) from None
    return tuple(nets)


def _domain(value: Any) -> str:
    text = _nonempty(value).strip().lower().rstrip(".")
    labels = text.split(".")
    if not all(labels) or any(not _label_ok(label) for label in labels):
        raise ValueError(f"{value!r} is not a domain name")
    return text


def _label_ok(label: str) -> bool:
    return len(label) <= 63 and all(c.isalnum() or c == "-" for c in label)


def _domains(value: Any) -> tuple[str, ...]:
    return tuple(_domain(item) for item in _str_list(value))


def _mailbox(value: Any) -> str:
    text = _nonempty(value).strip()
    local, at, domain = text.rpartition("@")
    if not at or not local or any(c in text for c in " <>\r\n\t,"):
        raise ValueError(f"{value!r} is not an e-mail address such as secmail@example.com")
    _domain(domain)
    return text


def parse_route(value: Any) -> Route:
    """C{"mx"} or C{"smtp://host:port"}."""
    text = _nonempty(value).strip()
    if text.lower() == "mx":
        return MX
    parts = urlsplit(text)
    if parts.scheme != "smtp" or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(f'{text!r} must be "mx" or "smtp://host:port"')
    if parts.username or parts.password or parts.query:
        raise ValueError(
            f"{text!r} must be plain smtp://host:port, without user, password or query"
        )
    try:
        port = parts.port or 25
    except ValueError:
        raise ValueError(f"{text!r} has an invalid port") from None
    return Route(mx=False, host=parts.hostname, port=port)


def _route_map(value: Any) -> dict[str, Route]:
    if not isinstance(value, dict):
        raise ValueError(f"must be a table of domain = route, not {_kind(value)}")
    routes = {}
    for domain, route in value.items():
        try:
            routes[_domain(domain)] = parse_route(route)
        except ValueError as e:
            raise ValueError(f"domain {domain!r}: {e}") from None
    return routes


def _mode(value: Any) -> str:
    text = _str(value)
    if text not in ("marked", "all"):
        raise ValueError(f'must be "marked" or "all", got {text!r}')
    return text


def _extension(value: Any) -> str:
    text = _nonempty(value).strip().lower()
    if not text.startswith("."):
        text = "." + text
    if not _label_ok(text[1:]) or not text[1:] or text[1:].isdigit():
        raise ValueError(f"{value!r} must be a domain label such as .s")
    return text


def _country_code(value: Any) -> str:
    text = _str(value).strip().lstrip("+")
    if not (text.isdigit() and 1 <= len(text) <= 3):
        raise ValueError(f"{value!r} must be a country calling code such as 358")
    return text


def _url(value: Any) -> str:
    text = _nonempty(value).strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{text!r} must be a URL such as https://secmail.example.com")
    return text


def _colour(value: Any) -> str:
    text = _str(value).strip()
    if not re.fullmatch(r"#[0-9a-fA-F]{6}", text):
        raise ValueError(f"{value!r} must be a colour written #rrggbb, such as #1f5fae")
    return text.lower()


def _brand_name(value: Any) -> str:
    text = " ".join(_nonempty(value).split())
    if len(text) > 60 or not text.isprintable():
        raise ValueError(f"{value!r} must be one line of at most 60 printable characters")
    return text


def _phrase(value: Any) -> str:
    text = " ".join(_str(value).split())
    if len(text) > MAX_PHRASE_CHARS or not text.isprintable():
        raise ValueError(
            f"must be one line of at most {MAX_PHRASE_CHARS} printable characters, "
            f"got {len(text)} characters"
        )
    return text


def _languages(value: Any) -> tuple[str, ...]:
    items = _str_list(value)
    if not items:
        raise ValueError(f"must name at least one of {', '.join(LANGUAGES)}")
    for item in items:
        if item not in LANGUAGES:
            raise ValueError(f"{item!r} is not one of {', '.join(LANGUAGES)}")
    return tuple(dict.fromkeys(items))


def logo_type(path: str) -> str:
    """The logo's media type from its first bytes; ValueError unless it is a PNG or JPEG."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise ValueError(f"cannot read {path!r}: {e.strerror or e}") from None
    for magic, media_type in LOGO_TYPES.items():
        if head.startswith(magic):
            return media_type
    raise ValueError(f"{path!r} is not a PNG or JPEG image (SVG and other formats are refused)")


def _database(value: Any) -> str:
    text = _nonempty(value).strip()
    if not (text.startswith("sqlite:") or text.startswith(("postgresql://", "postgres://"))):
        raise ValueError(f'{text!r} must be "sqlite:PATH" or "postgresql://..."')
    if text.startswith("sqlite:") and not text[len("sqlite:") :]:
        raise ValueError(
            "sqlite: needs a file path, such as sqlite:/var/lib/secmail/secmail.sqlite"
        )
    return text


def _kind(value: Any) -> str:
    return {
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "true/false",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def check_endpoint(description: str) -> None:
    """Raise ValueError unless C{description} is a server endpoint Twisted can listen on."""
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    if description.startswith("ssl:") and "privateKey=" not in description:
        # Our own certificate is filled in at start-up; check the rest of the string.
        description = "tcp:" + description[4:]
    try:
        serverFromString(MemoryReactor(), description)
    except Exception as e:
        raise ValueError(f"{description!r} is not a valid endpoint: {e}") from None


def _sms_order(value: Any) -> tuple[str, ...]:
    names = _str_list(value)
    for name in names:
        if name not in SMS_BACKENDS:
            raise ValueError(f'{name!r} is not a backend; use "modem", "http" and "smtp"')
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{', '.join(repr(d) for d in duplicates)} listed more than once")
    return names


def _sim_pin(value: Any) -> str:
    text = _str(value).strip()
    if text and not (text.isascii() and text.isdigit() and 4 <= len(text) <= 8):
        # The value itself is not repeated: it is a secret.
        raise ValueError('must be 4 to 8 digits, or "" for a SIM that asks for no PIN')
    return text


def _str_table(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError(f'must be a table of name = "value", not {_kind(value)}')
    for name, item in value.items():
        if not isinstance(item, str):
            raise ValueError(f"{name}: must be a string, not {_kind(item)}")
    return dict(value)


#: What a PIN text template may use, and an example of each for checking.
PIN_TEXT_PLACEHOLDERS = {"pin": "123456", "minutes": "10", "brand": "Example Ltd"}


def _pin_text(value: Any) -> dict[str, str]:
    texts = _str_table(value)
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
    text = _nonempty(value).strip()
    names = re.findall(r"\{([^{}]*)\}", text)
    if "to" not in names or any(name != "to" for name in names):
        raise ValueError(
            f"{text!r} must hold {{to}} (the number's digits) and no other placeholder,"
            ' such as "{to}@sms.example.net"'
        )
    try:
        _mailbox(text.replace("{to}", "358401234567"))
    except ValueError:
        raise ValueError(
            f'{text!r} is not an e-mail address template such as "{{to}}@sms.example.net"'
        ) from None
    return text


# --- the schema ---------------------------------------------------------------------------

Checker = Callable[[Any], Any]

SCHEMA: dict[str, dict[str, Checker]] = {
    "gateway": {
        "hostname": _domain,
        "data_dir": _nonempty,
        "bounce_address": _mailbox,
        "notification_from": _mailbox,
    },
    "smtp": {
        "listen": _endpoints,
        "accepted_networks": _networks,
        "max_message_size": _positive_int,
        "max_header_size": _positive_int,
        "max_recipients": _positive_int,
        "max_line_length": _positive_int,
        "max_hops": _positive_int,
        "idle_timeout": _positive_int,
        "max_connections_per_client": _positive_int,
        "soft_error_limit": _positive_int,
        "hard_error_limit": _positive_int,
        "transaction_timeout": _positive_int,
        "min_data_rate": _positive_int,
        "junk_command_limit": _positive_int,
        "tls_certificate": _str,
        "tls_key": _str,
        "starttls": _bool,
    },
    "routes": {
        "outgoing": parse_route,
        "incoming": parse_route,
        "incoming_domains": _domains,
        "domains": _route_map,
        "relay_ca_file": _str,
    },
    "secure": {
        "mode": _mode,
        "extension": _extension,
        "default_country_code": _country_code,
        "retention_days": _positive_int,
        "audit_days": _positive_int,
        "subject_keyword": _str,
        "notification_shows_subject": _bool,
    },
    "portal": {
        "listen": _endpoints,
        "url": _url,
        "compose_directory": lambda v: tuple(_mailbox(a) for a in _str_list(v)),
        "max_upload_size": _positive_int,
        "brand_name": _brand_name,
        "brand_colour": _colour,
        "logo_file": _str,
        "verification_phrase": _phrase,
        "languages": _languages,
        "compose_codes_per_mailbox": _positive_int,
        "compose_codes_per_client": _positive_int,
        "compose_codes_per_hour": _positive_int,
        "compose_codes_per_day": _positive_int,
    },
    "store": {"database": _database, "master_key_file": _nonempty},
    "queue": {
        "retry_initial": _positive_int,
        "retry_max": _positive_int,
        "lifetime": _positive_int,
        "poll_interval": _positive_number,
        "concurrency": _positive_int,
        "connect_timeout": _positive_int,
    },
    # A dotted name is a sub-table: [sms.modem] arrives as raw["sms"]["modem"].
    "sms": {"order": _sms_order, "pin_text": _pin_text},
    "sms.modem": {"device": _nonempty, "baudrate": _positive_int, "sim_pin": _sim_pin},
    # HttpGatewaySettings checks the values' meaning; these check only their types.
    "sms.http": {
        "url": _nonempty,
        "method": _str,
        "body": _str,
        "body_type": _str,
        "headers": _str_table,
        "success": _str,
        "timeout": _positive_number,
    },
    "sms.smtp": {"address": _sms_address},
}


def default_path() -> str | None:
    """The configuration file used without C{--config}: L{DEFAULT_FILE} if it exists."""
    return DEFAULT_FILE if os.path.exists(DEFAULT_FILE) else None


def load(path: str | None) -> Settings:
    """Read and check the configuration file at C{path}, or the embedded defaults when None."""
    if path is None:
        raw: dict[str, Any] = {}
    else:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{path}: configuration file not found") from None
        except PermissionError:
            raise ConfigError(f"{path}: permission denied reading the configuration file") from None
        except IsADirectoryError:
            raise ConfigError(f"{path}: is a directory, not a configuration file") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return from_mapping(raw)


def from_mapping(raw: Mapping[str, Any]) -> Settings:
    """Check a parsed TOML document and build the settings from it and the defaults."""
    values: dict[str, dict[str, Any]] = {}
    for section, content in raw.items():
        if section not in SCHEMA or "." in section:
            known = ", ".join(f"[{s}]" for s in SCHEMA)
            raise ConfigError(f"[{section}]: unknown section (known sections: {known})")
        _check_table(section, content, values)
    return _build(values)


def _check_table(section: str, content: Any, values: dict[str, dict[str, Any]]) -> None:
    """Check one table's keys into C{values[section]}; sub-tables go to their own sections."""
    if not isinstance(content, dict):
        raise ConfigError(f"{section}: must be a table ([{section}]), not {_kind(content)}")
    checked = values.setdefault(section, {})
    for key, value in content.items():
        if f"{section}.{key}" in SCHEMA:
            _check_table(f"{section}.{key}", value, values)
            continue
        checker = SCHEMA[section].get(key)
        if checker is None:
            subtables = [f"[{s}]" for s in SCHEMA if s.startswith(section + ".")]
            known = ", ".join([*SCHEMA[section], *subtables])
            raise ConfigError(f"{section}.{key}: unknown key (known in [{section}]: {known})")
        try:
            checked[key] = checker(value)
        except ValueError as e:
            raise ConfigError(f"{section}.{key}: {e}") from None


def _build(values: dict[str, dict[str, Any]]) -> Settings:
    g = values.get("gateway", {})
    hostname = g.get("hostname") or _default_hostname()
    data_dir = os.path.abspath(g.get("data_dir", DEFAULT_DATA_DIR))
    gateway = GatewaySettings(
        hostname=hostname,
        data_dir=data_dir,
        bounce_address=g.get("bounce_address", f"secmail-bounces@{hostname}"),
        notification_from=g.get("notification_from", f"secmail@{hostname}"),
    )
    smtp = replace(SmtpSettings(), **values.get("smtp", {}))
    for key in ("tls_certificate", "tls_key"):
        path = getattr(smtp, key)
        if path and not os.path.isfile(path):
            raise ConfigError(f"smtp.{key}: file {path!r} not found")
    if bool(smtp.tls_certificate) != bool(smtp.tls_key):
        raise ConfigError("smtp.tls_certificate and smtp.tls_key must be set together")

    routes = replace(RouteSettings(), **values.get("routes", {}))
    if routes.relay_ca_file and not os.path.isfile(routes.relay_ca_file):
        raise ConfigError(f"routes.relay_ca_file: file {routes.relay_ca_file!r} not found")
    missing = [d for d in routes.incoming_domains if d not in routes.domains]
    if missing and routes.incoming is None:
        raise ConfigError(
            f"routes.incoming: needed for incoming_domains {', '.join(missing)}; "
            'set it to the internal mail server, e.g. "smtp://mail.example.com:25"'
        )

    s = values.get("store", {})
    key_file = s.get("master_key_file")
    if key_file is not None and not os.path.isfile(key_file):
        raise ConfigError(
            f"store.master_key_file: file {key_file!r} not found "
            "(create one with: secmail keys generate FILE)"
        )
    store = StoreSettings(
        database=s.get("database", "sqlite:" + os.path.join(data_dir, "secmail.sqlite")),
        master_key_file=os.path.abspath(key_file or os.path.join(data_dir, "master.key")),
        master_key_generated=key_file is None,
    )

    portal = replace(PortalSettings(), **values.get("portal", {}))
    if portal.logo_file:
        try:
            portal = replace(
                portal,
                logo_file=os.path.abspath(portal.logo_file),
                logo_type=logo_type(portal.logo_file),
            )
        except ValueError as e:
            raise ConfigError(f"portal.logo_file: {e}") from None
    if portal.compose_codes_per_day < portal.compose_codes_per_hour:
        raise ConfigError(
            f"portal.compose_codes_per_day: {portal.compose_codes_per_day} is less than "
            f"portal.compose_codes_per_hour ({portal.compose_codes_per_hour}); raise it"
        )
    outside = [a for a in portal.compose_directory if not routes.is_incoming(a.rpartition("@")[2])]
    if outside:
        raise ConfigError(
            f"portal.compose_directory: {', '.join(outside)} not in routes.incoming_domains; "
            "outsiders may only write to the organisation's own addresses"
        )

    queue = replace(QueueSettings(), **values.get("queue", {}))
    if queue.retry_max < queue.retry_initial:
        raise ConfigError("queue.retry_max: must not be smaller than queue.retry_initial")

    secure = replace(SecureSettings(), **values.get("secure", {}))
    if secure.audit_days < secure.retention_days:
        raise ConfigError(
            f"secure.audit_days: {secure.audit_days} is less than secure.retention_days "
            f"({secure.retention_days}); the audit trail must outlive the messages"
        )
    return Settings(
        gateway=gateway,
        smtp=smtp,
        routes=routes,
        secure=secure,
        portal=portal,
        store=store,
        queue=queue,
        sms=_build_sms(values),
    )


def _build_sms(values: dict[str, dict[str, Any]]) -> SmsSettings:
    from secmail.sms.http import HttpGatewaySettings  # it imports this module

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


def _default_hostname() -> str:
    name = socket.getfqdn().lower()
    try:
        return _domain(name)
    except ValueError:
        return "localhost"


def _mask_pin(pin: Any) -> str:
    return "***" if pin else ""


def _mask_url(url: Any) -> str:
    """The URL without its password or query values (Kannel takes them there), placeholders kept."""
    parts = urlsplit(str(url))
    netloc = parts.netloc
    if parts.password:
        netloc = netloc.replace(":" + parts.password + "@", ":***@")
    return parts._replace(netloc=netloc, query=_mask_form(parts.query)).geturl()


def _mask_form(query: str) -> str:
    """C{name=value&...} with every value but a placeholder hidden."""
    shown = []
    for item in query.split("&") if query else []:
        name, eq, value = item.partition("=")
        shown.append(name + eq + (value if re.fullmatch(r"\{\w+\}", value) or not eq else "***"))
    return "&".join(shown)


def _mask_body(body: Any) -> Any:
    """A form or JSON body template, its values hidden (API keys go there), placeholders kept."""
    if not isinstance(body, str):
        return body
    if body.lstrip()[:1] not in ("{", "["):
        return _mask_form(body)

    def hide(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: hide(v) for k, v in value.items()}
        if isinstance(value, list):
            return [hide(v) for v in value]
        if isinstance(value, str) and re.fullmatch(r"\{\w+\}", value):
            return value
        return "***"

    try:
        return json.dumps(hide(json.loads(body)))
    except ValueError:
        return "***"


def _mask_headers(headers: Any) -> dict[str, str]:
    return {name: "***" for name in headers}  # often an Authorization header


#: Settings shown masked by L{describe}, with the function that masks each.
SECRET_KEYS: dict[tuple[str, str], Callable[[Any], Any]] = {
    ("store", "database"): lambda v: _mask_dsn(str(v)),
    ("sms.modem", "sim_pin"): _mask_pin,
    ("sms.http", "url"): _mask_url,
    ("sms.http", "headers"): _mask_headers,
    ("sms.http", "body"): _mask_body,
}


def describe(settings: Settings) -> list[str]:
    """The effective settings as C{section.key = value} lines, secrets masked."""
    lines: list[str] = []
    for section_field in fields(settings):
        _describe(section_field.name, getattr(settings, section_field.name), lines)
    return lines


def _describe(section: str, settings: Any, lines: list[str]) -> None:
    for f in fields(settings):
        value = getattr(settings, f.name)
        masker = SECRET_KEYS.get((section, f.name))
        if masker is not None:
            value = masker(value)
        if isinstance(value, Route):
            value = str(value)
        elif is_dataclass(value):  # a sub-table such as [sms.modem]
            _describe(f"{section}.{f.name}", value, lines)
            continue
        elif isinstance(value, tuple):
            value = [str(v) for v in value]
        elif isinstance(value, Mapping):
            value = {k: str(v) for k, v in value.items()}
        lines.append(f"{section}.{f.name} = {value!r}")


def _mask_dsn(dsn: str) -> str:
    parts = urlsplit(dsn)
    if parts.password:
        netloc = parts.netloc.replace(":" + parts.password + "@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return dsn
