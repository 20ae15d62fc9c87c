# -*- test-case-name: tests.test_cluster_settings -*-
"""
Cluster settings: which keys live in the database, and the settings a node runs on.

Every key of L{SCHEMA} is either a node setting (its checker is marked L{NodeOnly}, or it
is a C{listen}): the node needs it before it reaches the database, so only the node's file
sets it; or a cluster setting, stored in the database and changed while the gateway runs.
A cluster setting written in the node's file is fixed by the file there. The effective
settings are the defaults, under the database's values, under the file's, checked by the
same section parsers as the file alone (L{from_mapping}), so a stored value is refused or
accepted with the same one-line error as the same value in the file.

Stored values are TOML values (C{"text"}, C{5}, C{["a", "b"]}, C{{ a = "b" }}).
"""

from __future__ import annotations

import copy
import json
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from secmail.config import SCHEMA, SECRET_KEYS, ConfigError, Settings, from_mapping
from secmail.config._base import NodeOnly, kind_of


@dataclass(frozen=True)
class Key:
    """One key of the configuration, named C{section.key} as in the file."""

    name: str
    section: str
    key: str
    #: Read only from the node's own file (see the module's docstring).
    node_only: bool
    #: Shown masked (L{secmail.config.SECRET_KEYS}).
    secret: bool

    @property
    def path(self) -> tuple[str, ...]:
        """Where the key is in a parsed TOML document: C{sms.http.url} is raw[sms][http][url]."""
        return (*self.section.split("."), self.key)


def _registry() -> dict[str, Key]:
    keys = {}
    for section, checkers in SCHEMA.items():
        for key, checker in checkers.items():
            name = f"{section}.{key}"
            keys[name] = Key(
                name,
                section,
                key,
                node_only=isinstance(checker, NodeOnly) or key == "listen",
                secret=(section, key) in SECRET_KEYS,
            )
    return keys


log = Logger()

#: Every key of every section, in the order of the file's documentation.
KEYS: dict[str, Key] = _registry()


class FixedByFile(ConfigError):
    """A cluster setting this node's file sets: change it there, or remove it there."""


#: The value that takes a stored key back to its default (TOML has no null).
DEFAULT = None


def lookup(raw: Mapping[str, Any], path: tuple[str, ...]) -> tuple[bool, Any]:
    """Whether C{path} is in the parsed document C{raw}, and its value there."""
    node: Any = raw
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def in_file(file_raw: Mapping[str, Any]) -> set[str]:
    """The keys the node's file sets."""
    return {name for name, key in KEYS.items() if lookup(file_raw, key.path)[0]}


def merged(file_raw: Mapping[str, Any], stored: Mapping[str, Any]) -> dict[str, Any]:
    """
    The file's document with the stored cluster settings put in where the file says
    nothing: the file wins. Stored node settings and unknown keys are left out.
    """
    raw = copy.deepcopy(dict(file_raw))
    for name, value in stored.items():
        key = KEYS.get(name)
        if key is None or key.node_only or lookup(file_raw, key.path)[0]:
            continue
        _put(raw, key.path, value)
    return raw


def _put(raw: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = raw
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            return  # the file's own mistake (a value where a table goes): from_mapping says so
        node = child
    node[path[-1]] = value


def effective(file_raw: Mapping[str, Any], stored: Mapping[str, Any]) -> Settings:
    """The settings a node runs on; L{ConfigError} naming the key when they cannot be used."""
    return from_mapping(merged(file_raw, stored))


def check_change(name: str, file_raw: Mapping[str, Any], origin: str) -> Key:
    """
    The key C{name} if it may be changed here: L{ConfigError} for a key that is unknown
    or a node setting, L{FixedByFile} for one the node's file (named C{origin}) sets.
    """
    key = KEYS.get(name)
    if key is None:
        section = name.rpartition(".")[0]
        if section in SCHEMA:
            known = ", ".join(SCHEMA[section])
            raise ConfigError(f"{name}: unknown key (known in [{section}]: {known})")
        raise ConfigError(f"{name}: unknown setting (secmail settings show lists them)")
    if key.node_only:
        raise ConfigError(
            f"{name}: a node setting, read only from each node's configuration file "
            "(change it there and restart the gateway)"
        )
    if lookup(file_raw, key.path)[0]:
        raise FixedByFile(
            f"{name}: fixed by {origin}; remove it there to change it as a cluster setting"
        )
    return key


# --- values as the admin sees them ---------------------------------------------------


def current_value(settings: Settings, key: Key) -> Any:
    """The value the settings hold for C{key}, as plain TOML-like data, secrets masked."""
    if key.section == "sms.smtp":
        value: Any = settings.sms.smtp_address
    else:
        node: Any = settings
        for part in key.section.split("."):
            node = getattr(node, part, None)
        value = None if node is None else getattr(node, key.key)
    masker: Callable[[Any], Any] | None = SECRET_KEYS.get((key.section, key.key))
    if masker is not None and value is not None:
        value = masker(value)
    return plain(value)


def plain(value: Any) -> Any:
    """Tuples as lists, routes and networks as their text, tables as dicts of plain values."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    return str(value)


def to_toml(value: Any) -> str:
    """A TOML value (the right side of C{key = ...}) for the stored and shown values."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} cannot be stored")
        return repr(value)
    if isinstance(value, str):
        # JSON's string form is TOML's basic string, but for DEL, which TOML wants escaped.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(to_toml(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = ", ".join(
            f"{json.dumps(str(k), ensure_ascii=False)} = {to_toml(v)}" for k, v in value.items()
        )
        return "{ " + items + " }" if items else "{}"
    raise ValueError(f"{kind_of(value)} cannot be stored")


def from_toml(text: str) -> Any:
    """A stored value back; ValueError when C{text} is not exactly one TOML value."""
    try:
        document = tomllib.loads("v = " + text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"not a TOML value: {e}") from None
    if set(document) != {"v"}:
        raise ValueError("not a single TOML value")
    return document["v"]


def read_value(text: str) -> Any:
    """
    A value typed by an admin: a TOML value when it is one (C{5}, C{true}, C{["en", "fi"]},
    C{"quoted text"}), else the text itself as a string (C{Secure mail}).
    """
    if "\n" in text or "\r" in text:
        return text
    try:
        return from_toml(text)
    except ValueError:
        return text


class LiveSettings:
    """
    The settings a running node uses now. Components that are built once read
    L{current} when they act (a new SMTP session, a page, a notification), or subscribe to
    be told of a change; L{update} is called by the poller in the composition root.
    """

    def __init__(self, settings: Settings) -> None:
        self.current = settings
        self._subscribers: list[Callable[[Settings], None]] = []

    def subscribe(self, subscriber: Callable[[Settings], None]) -> None:
        self._subscribers.append(subscriber)

    def update(self, settings: Settings) -> bool:
        """
        Use C{settings} from now on; whether they differ from the current ones. Every
        subscriber is told, even when one before it fails (its failure is logged).
        """
        if settings == self.current:
            return False
        self.current = settings
        for subscriber in self._subscribers:
            try:
                subscriber(settings)
            except Exception:
                log.failure(
                    "Applying changed settings failed in {subscriber}", subscriber=subscriber
                )
        return True
