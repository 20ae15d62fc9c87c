# -*- test-case-name: tests.test_settings -*-
"""
Cluster settings at work: L{ClusterSettings} shows and changes them (for C{secmail settings}
now, the admin API and console later), L{SettingsPoller} applies a change on a running node.

A change is checked with the node's file and every other stored value, by the file's own
parsers (L{secmail.config.cluster.effective}); it is written with one audit row a changed key
in the same transaction, or not at all. Each node polls the version counter every
L{POLL_SECONDS} and hands new settings to L{secmail.config.cluster.LiveSettings}; settings its
file makes unusable are logged and not applied, the node keeps its last good ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from secmail.config import SCHEMA, ConfigError, Settings
from secmail.config.cluster import (
    KEYS,
    LiveSettings,
    check_change,
    current_value,
    effective,
    from_toml,
    in_file,
    to_toml,
)
from secmail.store.audit import AuditRow, audit_txn
from secmail.store.database import Database, Txn
from secmail.store.settings import lock_txn, stored_txn, version_txn, write_txn

log = Logger()

#: How often a running node looks at the version counter; a change applies within this.
POLL_SECONDS = 2.0

#: Where a value comes from, as the API and C{secmail settings show} name it.
DEFAULT, FILE, DATABASE = "default", "file", "database"

#: More checks of whole settings than the file's parsers make (e.g. the PIN text's length in
#: each portal language): each problem as one line naming the key.
ExtraCheck = Callable[[Settings], list[str]]


def decode(stored: Mapping[str, str]) -> dict[str, Any]:
    """The stored TOML texts as values; L{ConfigError} naming a key whose text is broken."""
    values = {}
    for name, text in stored.items():
        try:
            values[name] = from_toml(text)
        except ValueError as e:
            raise ConfigError(
                f"{name}: the stored value cannot be read ({e}); set it again"
            ) from None
    return values


def checked(
    file_raw: Mapping[str, Any], stored: Mapping[str, Any], extra: ExtraCheck | None
) -> Settings:
    settings = effective(file_raw, stored)
    for problem in extra(settings) if extra is not None else []:
        raise ConfigError(problem)
    return settings


class ClusterSettings:
    """
    @param file_raw: the node's file as parsed TOML (L{secmail.config.read_file}).
    @param origin: the file's name for errors (C{fixed by /etc/secmail/secmail.toml}).
    """

    def __init__(
        self,
        db: Database,
        file_raw: Mapping[str, Any],
        origin: str,
        extra_check: ExtraCheck | None = None,
    ) -> None:
        self.db = db
        self.file_raw = file_raw
        self.origin = origin
        self.extra_check = extra_check
        self.fixed = in_file(file_raw)

    def source(self, name: str, stored: Mapping[str, Any]) -> str:
        if name in self.fixed:
            return FILE
        return DATABASE if name in stored and not KEYS[name].node_only else DEFAULT

    async def show(self) -> dict[str, tuple[Any, str]]:
        """Every key: its value on this node (secrets masked) and where the value comes from."""
        stored = decode(await self.db.run(stored_txn))
        settings = effective(self.file_raw, stored)
        return {
            name: (current_value(settings, key), self.source(name, stored))
            for name, key in KEYS.items()
        }

    async def set(
        self, changes: Mapping[str, Any], *, admin: str, address: str, now: int
    ) -> dict[str, tuple[Any, str]]:
        """
        Store C{changes} (a value, or None for the default) together, or refuse them all:
        L{ConfigError} naming the first key that is wrong, L{FixedByFile} for a key the
        node's file sets. Returns L{show}'s answer after the change.
        """
        texts: dict[str, str | None] = {}
        for name, value in changes.items():
            check_change(name, self.file_raw, self.origin)
            try:
                texts[name] = None if value is None else to_toml(value)
            except ValueError as e:
                key = KEYS[name]
                try:  # the file's own words for a value of the wrong kind, when it has them
                    SCHEMA[key.section][key.key](value)
                except ValueError as wrong:
                    raise ConfigError(f"{name}: {wrong}") from None
                raise ConfigError(f"{name}: {e}") from None

        def change_txn(txn: Txn) -> None:
            lock_txn(txn)
            stored = decode(stored_txn(txn))
            new = dict(stored)
            for name, text in texts.items():
                if text is None:
                    new.pop(name, None)
                else:
                    new[name] = from_toml(text)
            after = checked(self.file_raw, new, self.extra_check)
            changed = {n: texts[n] for n in texts if new.get(n) != stored.get(n)}
            if not changed:
                return
            try:
                before: Settings | None = effective(self.file_raw, stored)
            except ConfigError:
                before = None  # the stored values were unusable here; the change mends them
            write_txn(txn, changed, admin, now)
            for name, text in changed.items():
                key = KEYS[name]
                audit_txn(
                    txn,
                    AuditRow(
                        now,
                        admin,
                        address,
                        "setting changed" if text is not None else "setting reset",
                        name,
                        None if before is None else _shown(current_value(before, key)),
                        _shown(current_value(after, key)),
                    ),
                )

        await self.db.run(change_txn)
        return await self.show()


def _shown(value: Any) -> str | None:
    return None if value is None else to_toml(value)


class SettingsPoller:
    """
    Run by a TimerService: when the version counter moved, the stored settings are read,
    checked with this node's file and handed to C{live}.
    """

    def __init__(
        self,
        db: Database,
        file_raw: Mapping[str, Any],
        live: LiveSettings,
        version: int,
        extra_check: ExtraCheck | None = None,
    ) -> None:
        self.db = db
        self.file_raw = file_raw
        self.live = live
        #: The version last read (applied, or refused and logged).
        self.version = version
        self.extra_check = extra_check

    def run(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._run()).addErrback(
            lambda f: log.failure("Reading the cluster settings failed; will try again", f)
        )

    async def _run(self) -> None:
        version = await self.db.run(version_txn)
        if version == self.version:
            return
        version, stored = await self.db.run(lambda txn: (version_txn(txn), stored_txn(txn)))
        self.version = version
        try:
            settings = checked(self.file_raw, decode(stored), self.extra_check)
        except ConfigError as e:
            log.warn(
                "Cluster settings version {version} not applied on this node, which keeps "
                "its last good settings: {error}",
                version=version,
                error=str(e),
            )
            return
        if self.live.update(settings):
            log.info("Cluster settings version {version} applied", version=version)
