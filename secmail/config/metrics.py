"""The C{[metrics]} table: where Prometheus metrics and the health answers are served."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from secmail.config._base import Schema, as_endpoints


@dataclass(frozen=True)
class MetricsSettings:
    #: Endpoint strings for /metrics, /livez and /readyz; empty: none of them is served.
    listen: tuple[str, ...] = ("tcp:9464:interface=127.0.0.1",)


SCHEMA: Schema = {"metrics": {"listen": as_endpoints}}


def build_metrics(values: dict[str, Any]) -> MetricsSettings:
    return replace(MetricsSettings(), **values)
