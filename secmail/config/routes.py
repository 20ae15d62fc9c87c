"""The C{[routes]} table: where outgoing and incoming mail goes."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from secmail.config._base import (
    ConfigError,
    Schema,
    as_domain,
    as_domains,
    as_nonempty,
    as_str,
    kind_of,
)


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


def parse_route(value: Any) -> Route:
    """C{"mx"} or C{"smtp://host:port"}."""
    text = as_nonempty(value).strip()
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
        raise ValueError(f"must be a table of domain = route, not {kind_of(value)}")
    routes = {}
    for domain, route in value.items():
        try:
            routes[as_domain(domain)] = parse_route(route)
        except ValueError as e:
            raise ValueError(f"domain {domain!r}: {e}") from None
    return routes


SCHEMA: Schema = {
    "routes": {
        "outgoing": parse_route,
        "incoming": parse_route,
        "incoming_domains": as_domains,
        "domains": _route_map,
        "relay_ca_file": as_str,
    },
}


def build_routes(values: dict[str, Any]) -> RouteSettings:
    """The section from its checked keys; every incoming domain has somewhere to go."""
    routes = replace(RouteSettings(), **values)
    if routes.relay_ca_file and not os.path.isfile(routes.relay_ca_file):
        raise ConfigError(f"routes.relay_ca_file: file {routes.relay_ca_file!r} not found")
    missing = [d for d in routes.incoming_domains if d not in routes.domains]
    if missing and routes.incoming is None:
        raise ConfigError(
            f"routes.incoming: needed for incoming_domains {', '.join(missing)}; "
            'set it to the internal mail server, e.g. "smtp://mail.example.com:25"'
        )
    return routes
