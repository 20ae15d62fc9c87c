"""The C{[admin]} table: where the admin console and its JSON API listen (never the portal's)."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from secmail.config._base import ConfigError, Schema, as_endpoints


@dataclass(frozen=True)
class AdminSettings:
    #: The console and the API are served only here. An C{ssl:} endpoint without key files
    #: uses the gateway's certificate (C{[smtp] tls_certificate}), like the portal's.
    listen: tuple[str, ...] = ("ssl:9443:interface=127.0.0.1",)


SCHEMA: Schema = {"admin": {"listen": as_endpoints}}


def _any_port(endpoint: str) -> bool:
    """Port 0: each listener gets a free port of its own, so the same string is no clash."""
    return re.match(r"(ssl|tcp):(port=)?0(:|$)", endpoint) is not None


def build_admin(values: dict[str, Any], portal_listen: tuple[str, ...]) -> AdminSettings:
    """The section from its checked keys; no endpoint may be one of the portal's."""
    admin = replace(AdminSettings(), **values)
    shared = [e for e in admin.listen if e in portal_listen and not _any_port(e)]
    if shared:
        raise ConfigError(
            f"admin.listen: {', '.join(shared)} is also in portal.listen; the console needs "
            "an address or port of its own"
        )
    return admin
