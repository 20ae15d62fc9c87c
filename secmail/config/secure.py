"""The C{[secure]} table: which mail is secured, and how long it and its trail are kept."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from secmail.config._base import (
    ConfigError,
    Schema,
    as_bool,
    as_nonempty,
    as_positive_int,
    as_str,
    label_ok,
)


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


def _mode(value: Any) -> str:
    text = as_str(value)
    if text not in ("marked", "all"):
        raise ValueError(f'must be "marked" or "all", got {text!r}')
    return text


def _extension(value: Any) -> str:
    text = as_nonempty(value).strip().lower()
    if not text.startswith("."):
        text = "." + text
    if not label_ok(text[1:]) or not text[1:] or text[1:].isdigit():
        raise ValueError(f"{value!r} must be a domain label such as .s")
    return text


def _country_code(value: Any) -> str:
    text = as_str(value).strip().lstrip("+")
    if not (text.isdigit() and 1 <= len(text) <= 3):
        raise ValueError(f"{value!r} must be a country calling code such as 358")
    return text


SCHEMA: Schema = {
    "secure": {
        "mode": _mode,
        "extension": _extension,
        "default_country_code": _country_code,
        "retention_days": as_positive_int,
        "audit_days": as_positive_int,
        "subject_keyword": as_str,
        "notification_shows_subject": as_bool,
    },
}


def build_secure(values: dict[str, Any]) -> SecureSettings:
    """The section from its checked keys; the audit trail outlives the messages."""
    secure = replace(SecureSettings(), **values)
    if secure.audit_days < secure.retention_days:
        raise ConfigError(
            f"secure.audit_days: {secure.audit_days} is less than secure.retention_days "
            f"({secure.retention_days}); the audit trail must outlive the messages"
        )
    return secure
