"""The C{[gateway]} table: the gateway's own name, data directory and addresses."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from secmail.config._base import NodeOnly, Schema, as_domain, as_mailbox, as_nonempty

DEFAULT_DATA_DIR = "secmail-data"


@dataclass(frozen=True)
class GatewaySettings:
    hostname: str
    data_dir: str
    bounce_address: str
    notification_from: str


SCHEMA: Schema = {
    "gateway": {
        "hostname": as_domain,
        "data_dir": NodeOnly(as_nonempty),
        "bounce_address": as_mailbox,
        "notification_from": as_mailbox,
    },
}


def build_gateway(values: dict[str, Any]) -> GatewaySettings:
    """The section from its checked keys; the addresses default to ones at the hostname."""
    hostname = values.get("hostname") or _default_hostname()
    return GatewaySettings(
        hostname=hostname,
        data_dir=os.path.abspath(values.get("data_dir", DEFAULT_DATA_DIR)),
        bounce_address=values.get("bounce_address", f"secmail-bounces@{hostname}"),
        notification_from=values.get("notification_from", f"secmail@{hostname}"),
    )


def _default_hostname() -> str:
    name = socket.getfqdn().lower()
    try:
        return as_domain(name)
    except ValueError:
        return "localhost"
