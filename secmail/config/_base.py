"""
What every section of the configuration shares: the one error type and the small value
checkers. A checker returns the converted value or raises ValueError with the problem;
the loader (L{secmail.config.from_mapping}) prefixes the key, so each error is one line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: The portal's languages (gettext catalogues in web/locale); English is built in.
LANGUAGES = ("en", "fi", "sv")

#: A key's checker: the raw TOML value in, the checked value out, ValueError otherwise.
Checker = Callable[[Any], Any]
#: A section's part of the schema: the table's name (dotted for a sub-table) → key → checker.
Schema = dict[str, dict[str, Checker]]


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and the problem."""


class NodeOnly:
    """
    A key's checker, marked as a node setting: one a node needs before it reaches the
    database, or one each node keeps for itself (its monitoring reports), so it is read only
    from the node's own file and never stored as a cluster setting (see
    L{secmail.config.cluster}). Every C{listen} key is one as well.
    """

    def __init__(self, checker: Checker) -> None:
        self.checker = checker

    def __call__(self, value: Any) -> Any:
        return self.checker(value)


def kind_of(value: Any) -> str:
    """How a wrong value is named in an error: what TOML calls it."""
    return {
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "true/false",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def as_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {kind_of(value)}")
    return value


def as_nonempty(value: Any) -> str:
    text = as_str(value)
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def as_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {kind_of(value)}")
    return value


def as_positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be a whole number, not {kind_of(value)}")
    if value <= 0:
        raise ValueError(f"must be greater than 0, got {value}")
    return value


def as_positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number, not {kind_of(value)}")
    if value <= 0:
        raise ValueError(f"must be greater than 0, got {value}")
    return float(value)


def as_str_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f"must be a list of strings, not {kind_of(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ValueError(f"item {i + 1} must be a string, not {kind_of(item)}")
    return tuple(value)


def as_str_table(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError(f'must be a table of name = "value", not {kind_of(value)}')
    for name, item in value.items():
        if not isinstance(item, str):
            raise ValueError(f"{name}: must be a string, not {kind_of(item)}")
    return dict(value)


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


def as_endpoints(value: Any) -> tuple[str, ...]:
    items = as_str_list(value)
    for item in items:
        check_endpoint(item)
    return items


def label_ok(label: str) -> bool:
    return len(label) <= 63 and all(c.isalnum() or c == "-" for c in label)


def as_domain(value: Any) -> str:
    text = as_nonempty(value).strip().lower().rstrip(".")
    labels = text.split(".")
    if not all(labels) or any(not label_ok(label) for label in labels):
        raise ValueError(f"{value!r} is not a domain name")
    return text


def as_domains(value: Any) -> tuple[str, ...]:
    return tuple(as_domain(item) for item in as_str_list(value))


def as_mailbox(value: Any) -> str:
    text = as_nonempty(value).strip()
    local, at, domain = text.rpartition("@")
    if not at or not local or any(c in text for c in " <>\r\n\t,"):
        raise ValueError(f"{value!r} is not an e-mail address such as secmail@example.com")
    as_domain(domain)
    return text
