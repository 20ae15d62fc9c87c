"""The C{[queue]} table: how outgoing mail is retried and how much goes out at once."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from secmail.config._base import ConfigError, Schema, as_positive_int, as_positive_number


@dataclass(frozen=True)
class QueueSettings:
    retry_initial: int = 300
    retry_max: int = 4000
    lifetime: int = 5 * 24 * 3600
    poll_interval: float = 5.0
    concurrency: int = 20
    connect_timeout: int = 30


SCHEMA: Schema = {
    "queue": {
        "retry_initial": as_positive_int,
        "retry_max": as_positive_int,
        "lifetime": as_positive_int,
        "poll_interval": as_positive_number,
        "concurrency": as_positive_int,
        "connect_timeout": as_positive_int,
    },
}


def build_queue(values: dict[str, Any]) -> QueueSettings:
    """The section from its checked keys; the longest wait is not shorter than the first."""
    queue = replace(QueueSettings(), **values)
    if queue.retry_max < queue.retry_initial:
        raise ConfigError("queue.retry_max: must not be smaller than queue.retry_initial")
    return queue
