"""The C{[smtp]} table: the listener, who may relay, limits and TLS."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, replace
from typing import Any

from secmail.config._base import (
    ConfigError,
    NodeOnly,
    Schema,
    as_bool,
    as_endpoints,
    as_positive_int,
    as_str,
    as_str_list,
)


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


def _networks(value: Any) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    nets = []
    for item in as_str_list(value):
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(
                f"{item!r} is not a network in CIDR form such as 127.0.0.0/8"
            ) from None
    return tuple(nets)


SCHEMA: Schema = {
    "smtp": {
        "listen": NodeOnly(as_endpoints),
        "accepted_networks": _networks,
        "max_message_size": as_positive_int,
        "max_header_size": as_positive_int,
        "max_recipients": as_positive_int,
        "max_line_length": as_positive_int,
        "max_hops": as_positive_int,
        "idle_timeout": as_positive_int,
        "max_connections_per_client": as_positive_int,
        "soft_error_limit": as_positive_int,
        "hard_error_limit": as_positive_int,
        "transaction_timeout": as_positive_int,
        "min_data_rate": as_positive_int,
        "junk_command_limit": as_positive_int,
        "tls_certificate": NodeOnly(as_str),
        "tls_key": NodeOnly(as_str),
        "starttls": as_bool,
    },
}


def build_smtp(values: dict[str, Any]) -> SmtpSettings:
    """The section from its checked keys; the certificate and key exist and come together."""
    smtp = replace(SmtpSettings(), **values)
    for key in ("tls_certificate", "tls_key"):
        path = getattr(smtp, key)
        if path and not os.path.isfile(path):
            raise ConfigError(f"smtp.{key}: file {path!r} not found")
    if bool(smtp.tls_certificate) != bool(smtp.tls_key):
        raise ConfigError("smtp.tls_certificate and smtp.tls_key must be set together")
    return smtp
