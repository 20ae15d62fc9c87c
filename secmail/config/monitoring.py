"""
The C{[monitoring]} table: the monitoring agent, which POSTs a JSON health report over HTTPS
to a monitoring service at start-up and then every C{report_interval} seconds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from secmail.config._base import ConfigError, Schema, as_mailbox, as_positive_number, as_str


@dataclass(frozen=True)
class MonitoringSettings:
    #: Where reports go (an https:// URL); "" (default): no reports.
    report_url: str = ""
    #: A PEM file of the CA certificates that may sign the service's certificate; "": the
    #: system's CAs.
    report_ca_file: str = ""
    report_interval: float = 300.0
    #: Sent as C{Authorization: Bearer ...}; "" sends no such header.
    report_token: str = ""
    #: Where the statistics mail goes; "" (default): none is sent.
    statistics_to: str = ""
    #: "week" (each Monday, for the week before) or "month" (on the 1st, for the month before).
    statistics_every: str = "week"


def _https_url(value: Any) -> str:
    text = as_str(value).strip()
    if not text:
        return ""
    parts = urlsplit(text)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"{text!r} must be an https:// URL (reports are sent only over TLS)")
    return text


def _token(value: Any) -> str:
    text = as_str(value)
    if any(c in text for c in "\r\n\0") or text != text.strip():
        raise ValueError("must be one line without spaces around it")
    return text


def _optional_mailbox(value: Any) -> str:
    text = as_str(value).strip()
    return as_mailbox(text) if text else ""


def _every(value: Any) -> str:
    text = as_str(value)
    if text not in ("week", "month"):
        raise ValueError(f'{text!r} is neither "week" nor "month"')
    return text


def _interval(value: Any) -> float:
    number = as_positive_number(value)
    if number < 1:
        raise ValueError(f"{value!r} is less than 1 second")
    return number


SCHEMA: Schema = {
    "monitoring": {
        "report_url": _https_url,
        "report_ca_file": as_str,
        "report_interval": _interval,
        "report_token": _token,
        "statistics_to": _optional_mailbox,
        "statistics_every": _every,
    },
}


def build_monitoring(values: dict[str, Any]) -> MonitoringSettings:
    monitoring = replace(MonitoringSettings(), **values)
    ca_file = monitoring.report_ca_file
    if ca_file and not os.path.isfile(ca_file):
        raise ConfigError(f"monitoring.report_ca_file: file {ca_file!r} not found")
    return monitoring
