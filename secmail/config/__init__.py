"""
The TOML configuration file turned into typed, validated settings.

Every problem is reported as one L{ConfigError} whose text names the key and
what is wrong with it, so that C{twistd secmail} and C{secmail check-config}
can print one clear line and stop.

One module per section holds its dataclass, its keys' checkers, its part of
L{SCHEMA} and the cross-checks made when it is built; this module reads the file,
checks every key against the schema and composes the sections into L{Settings}.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

from secmail.config._base import LANGUAGES, Checker, ConfigError, check_endpoint, kind_of
from secmail.config.admin import SCHEMA as ADMIN_SCHEMA
from secmail.config.admin import AdminSettings, build_admin
from secmail.config.gateway import DEFAULT_DATA_DIR, GatewaySettings, build_gateway
from secmail.config.gateway import SCHEMA as GATEWAY_SCHEMA
from secmail.config.metrics import SCHEMA as METRICS_SCHEMA
from secmail.config.metrics import MetricsSettings, build_metrics
from secmail.config.monitoring import SCHEMA as MONITORING_SCHEMA
from secmail.config.monitoring import MonitoringSettings, build_monitoring
from secmail.config.portal import (
    LOGO_TYPES,
    MAX_LOGO_BYTES,
    MAX_PHRASE_CHARS,
    PortalSettings,
    build_portal,
    logo_type,
)
from secmail.config.portal import SCHEMA as PORTAL_SCHEMA
from secmail.config.queue import SCHEMA as QUEUE_SCHEMA
from secmail.config.queue import QueueSettings, build_queue
from secmail.config.routes import MX, Route, RouteSettings, build_routes, parse_route
from secmail.config.routes import SCHEMA as ROUTES_SCHEMA
from secmail.config.secure import SCHEMA as SECURE_SCHEMA
from secmail.config.secure import SecureSettings, build_secure
from secmail.config.sms import (
    PIN_TEXT_PLACEHOLDERS,
    SMS_BACKENDS,
    HttpGatewaySettings,
    ModemSettings,
    SmsSettings,
    build_sms,
)
from secmail.config.sms import SCHEMA as SMS_SCHEMA
from secmail.config.smtp import SCHEMA as SMTP_SCHEMA
from secmail.config.smtp import SmtpSettings, build_smtp
from secmail.config.store import SCHEMA as STORE_SCHEMA
from secmail.config.store import StoreSettings, build_store
from secmail.config.values import Branding, GatewayIdentity, NotificationTexts, Retention
from secmail.masking import mask_body, mask_dsn, mask_headers, mask_pin, mask_url

__all__ = [
    "DEFAULT_DATA_DIR",
    "DEFAULT_FILE",
    "LANGUAGES",
    "LOGO_TYPES",
    "MAX_LOGO_BYTES",
    "MAX_PHRASE_CHARS",
    "MX",
    "PIN_TEXT_PLACEHOLDERS",
    "SCHEMA",
    "SECRET_KEYS",
    "SMS_BACKENDS",
    "AdminSettings",
    "Branding",
    "Checker",
    "ConfigError",
    "GatewayIdentity",
    "GatewaySettings",
    "HttpGatewaySettings",
    "MetricsSettings",
    "MonitoringSettings",
    "ModemSettings",
    "NotificationTexts",
    "PortalSettings",
    "QueueSettings",
    "Retention",
    "Route",
    "RouteSettings",
    "SecureSettings",
    "Settings",
    "SmsSettings",
    "SmtpSettings",
    "StoreSettings",
    "check_endpoint",
    "default_path",
    "describe",
    "from_mapping",
    "load",
    "logo_type",
    "read_file",
    "parse_route",
]

#: Read by C{twistd secmail} and the C{secmail} command when no C{--config} is given and the
#: file exists; otherwise both run on the embedded defaults.
DEFAULT_FILE = "/etc/secmail/secmail.toml"


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
    metrics: MetricsSettings = MetricsSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    admin: AdminSettings = AdminSettings()

    @property
    def identity(self) -> GatewayIdentity:
        """Who the gateway is in SMTP and on the mail it writes."""
        gateway = self.gateway
        return GatewayIdentity(gateway.hostname, gateway.bounce_address, gateway.notification_from)

    @property
    def branding(self) -> Branding:
        portal = self.portal
        return Branding(
            name=portal.brand_name,
            colour=portal.brand_colour,
            logo_file=portal.logo_file,
            logo_type=portal.logo_type,
            verification_phrase=portal.verification_phrase,
            portal_url=portal.url,
            logo=portal.logo,
        )

    @property
    def retention(self) -> Retention:
        return Retention(self.secure.retention_days, self.secure.audit_days)

    @property
    def notification_texts(self) -> NotificationTexts:
        return NotificationTexts(
            identity=self.identity,
            branding=self.branding,
            retention_days=self.secure.retention_days,
            shows_subject=self.secure.notification_shows_subject,
        )

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


#: Every table and its keys' checkers, in the order the file's sections are documented.
SCHEMA: dict[str, dict[str, Checker]] = {
    **GATEWAY_SCHEMA,
    **SMTP_SCHEMA,
    **ROUTES_SCHEMA,
    **SECURE_SCHEMA,
    **PORTAL_SCHEMA,
    **STORE_SCHEMA,
    **QUEUE_SCHEMA,
    **SMS_SCHEMA,
    **METRICS_SCHEMA,
    **MONITORING_SCHEMA,
    **ADMIN_SCHEMA,
}


def default_path() -> str | None:
    """The configuration file used without C{--config}: L{DEFAULT_FILE} if it exists."""
    return DEFAULT_FILE if os.path.exists(DEFAULT_FILE) else None


def load(path: str | None) -> Settings:
    """Read and check the configuration file at C{path}, or the embedded defaults when None."""
    return from_mapping(read_file(path))


def read_file(path: str | None) -> dict[str, Any]:
    """The file at C{path} as parsed TOML, not yet checked ({} for the embedded defaults)."""
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
    return raw


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
        raise ConfigError(f"{section}: must be a table ([{section}]), not {kind_of(content)}")
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
    """The sections from their checked keys, each checked as a whole when it is built."""
    gateway = build_gateway(values.get("gateway", {}))
    smtp = build_smtp(values.get("smtp", {}))
    routes = build_routes(values.get("routes", {}))
    store = build_store(values.get("store", {}), gateway.data_dir)
    portal = build_portal(values.get("portal", {}), routes)
    queue = build_queue(values.get("queue", {}))
    secure = build_secure(values.get("secure", {}))
    return Settings(
        gateway=gateway,
        smtp=smtp,
        routes=routes,
        secure=secure,
        portal=portal,
        store=store,
        queue=queue,
        sms=build_sms(values),
        metrics=build_metrics(values.get("metrics", {})),
        monitoring=build_monitoring(values.get("monitoring", {})),
        admin=build_admin(values.get("admin", {}), portal.listen),
    )


#: Settings shown masked by L{describe}, with the function that masks each.
SECRET_KEYS: dict[tuple[str, str], Callable[[Any], Any]] = {
    ("store", "database"): lambda v: mask_dsn(str(v)),
    ("sms.modem", "sim_pin"): mask_pin,
    ("sms.http", "url"): mask_url,
    ("sms.http", "headers"): mask_headers,
    ("sms.http", "body"): mask_body,
    ("monitoring", "report_url"): mask_url,
    ("monitoring", "report_token"): lambda v: "***" if v else "",
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
        elif isinstance(value, bytes):  # the logo's bytes: only their size
            value = f"{len(value)} bytes"
        elif is_dataclass(value):  # a sub-table such as [sms.modem]
            _describe(f"{section}.{f.name}", value, lines)
            continue
        elif isinstance(value, tuple):
            value = [str(v) for v in value]
        elif isinstance(value, Mapping):
            value = {k: str(v) for k, v in value.items()}
        lines.append(f"{section}.{f.name} = {value!r}")
