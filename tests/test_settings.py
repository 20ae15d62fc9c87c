"""Cluster settings: the registry, merge order, checks, changes with their audit rows, the poll."""

from __future__ import annotations

import datetime
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from twisted.application.internet import TimerService
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock

from secmail.config import SCHEMA, ConfigError, Settings, from_mapping
from secmail.config.cluster import (
    KEYS,
    FixedByFile,
    LiveSettings,
    effective,
    from_toml,
    read_value,
    to_toml,
)
from secmail.settings import POLL_SECONDS, ClusterSettings, SettingsPoller
from secmail.smtp.server import GatewayESMTPFactory
from secmail.store.audit import AuditRow, AuditTrail
from secmail.store.database import Database, Txn
from secmail.store.settings import lock_txn, stored_txn, version_txn, write_txn
from tests.dbs import NO_POSTGRES, POSTGRES_DSN, make_engine, on_each_engine, open_store

EXAMPLE = Path(__file__).resolve().parent.parent / "etc" / "secmail.toml"
FILE: dict[str, Any] = {
    "gateway": {"hostname": "gw.example", "data_dir": "/var/lib/secmail"},
    "portal": {"brand_name": "File Ltd", "url": "https://secure.example"},
    "secure": {"retention_days": 30},
}
HTTP_URL = "https://user:s3cret@sms.example/send?to={to}&text={text}"


def keys_of(raw: dict[str, Any], section: str = "") -> set[str]:
    """The section.key names a parsed TOML file sets (sub-tables of the schema as sections)."""
    names = set()
    for key, value in raw.items():
        name = f"{section}.{key}" if section else key
        if not section or name in SCHEMA:
            names |= keys_of(value, name)
        else:
            names.add(name)
    return names


# --- the registry --------------------------------------------------------------------------


def test_every_key_of_the_example_file_is_classified() -> None:
    """Each key etc/secmail.toml sets is in the registry, and the registry is the schema's."""
    with open(EXAMPLE, "rb") as f:
        example = keys_of(tomllib.load(f))
    assert example and example <= set(KEYS)
    assert set(KEYS) == {f"{s}.{k}" for s, keys in SCHEMA.items() for k in keys}


def test_node_settings_and_secrets() -> None:
    """What a node needs before the database is node-only (every listen too); secrets masked."""
    assert {n for n, k in KEYS.items() if k.node_only} == {
        "gateway.data_dir",
        "smtp.listen",
        "smtp.tls_certificate",
        "smtp.tls_key",
        "portal.listen",
        "store.database",
        "store.master_key_file",
        "metrics.listen",
        "admin.listen",
        # Each node reports and mails on its own.
        "monitoring.report_url",
        "monitoring.report_ca_file",
        "monitoring.report_interval",
        "monitoring.report_token",
        "monitoring.statistics_to",
        "monitoring.statistics_every",
    }
    assert all(k.node_only for k in KEYS.values() if k.key == "listen")
    assert {n for n, k in KEYS.items() if k.secret} == {
        "store.database",
        "sms.modem.sim_pin",
        "sms.http.url",
        "sms.http.body",
        "sms.http.headers",
        "monitoring.report_url",
        "monitoring.report_token",
    }


def test_values_as_typed_by_an_admin() -> None:
    """VALUE is a TOML value when it is exactly one, otherwise the text as it is."""
    assert read_value("5") == 5
    assert read_value("true") is True
    assert read_value('["en", "fi"]') == ["en", "fi"]
    assert read_value('"5"') == "5"
    assert read_value("Blue heron at dawn") == "Blue heron at dawn"
    assert read_value("#1f5fae") == "#1f5fae"
    assert read_value("1\nx = 2") == "1\nx = 2"
    for value in ['text "quoted" \\ ä', 5, 2.5, False, ["a", 1], {"en": "PIN {pin}"}, {}]:
        assert from_toml(to_toml(value)) == value


# --- merge order and checks ----------------------------------------------------------------


def test_defaults_under_database_under_file() -> None:
    """A stored value beats the default, the file beats both; stored node settings are ignored."""
    stored = {
        "portal.brand_name": "Database Ltd",
        "portal.verification_phrase": "Blue heron",
        "gateway.data_dir": "/elsewhere",
    }
    settings = effective(FILE, stored)
    assert settings.portal.brand_name == "File Ltd"
    assert settings.portal.verification_phrase == "Blue heron"
    assert settings.gateway.data_dir == "/var/lib/secmail"
    assert effective(FILE, {}).portal.verification_phrase == ""
    assert effective({}, {"sms.smtp.address": "{to}@sms.example"}).sms.smtp_address == (
        "{to}@sms.example"
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("portal.brand_colour", "red"),
        ("smtp.max_recipients", 0),
        ("secure.audit_days", 10),  # a cross-key check with the file's retention_days
        ("sms.order", ["modem"]),  # needs an [sms.modem] table
        ("portal.languages", ["en", "de"]),
    ],
)
def test_refused_with_the_files_error(key: str, value: Any) -> None:
    """A stored value is refused with the very line the same value in the file gets."""
    section, _, name = key.rpartition(".")
    in_file = {**FILE, section: {**FILE.get(section, {}), name: value}}
    with pytest.raises(ConfigError) as file_error:
        from_mapping(in_file)
    with pytest.raises(ConfigError) as stored_error:
        effective(FILE, {key: value})
    assert str(stored_error.value) == str(file_error.value)
    assert str(stored_error.value).startswith(key + ":") or key in str(stored_error.value)


def test_live_settings_tell_subscribers_of_a_change_only() -> None:
    settings = effective(FILE, {})
    live = LiveSettings(settings)
    seen: list[Settings] = []
    live.subscribe(seen.append)
    assert not live.update(effective(FILE, {}))
    changed = effective(FILE, {"portal.verification_phrase": "Blue heron"})
    assert live.update(changed)
    assert seen == [changed] and live.current is changed


def test_smtp_factory_gives_new_sessions_new_limits() -> None:
    """Sessions made after use() get the new [smtp] settings; the factory's timeout too."""
    settings = effective(FILE, {})
    no_delivery: Any = lambda: None  # noqa: E731 - no session gets that far here
    factory = GatewayESMTPFactory(settings.smtp, "gw.example", no_delivery, MemoryReactorClock())
    before = factory.buildProtocol(None)
    factory.use(replace(settings.smtp, max_recipients=5, idle_timeout=60), "gw2.example", None)
    after = factory.buildProtocol(None)
    assert before._settings.max_recipients == 1000
    assert after._settings.max_recipients == 5
    assert (factory.timeout, after.host) == (60, b"gw2.example")


# --- changes on each engine ----------------------------------------------------------------


@on_each_engine
class ClusterSettingsTestsMixin:
    engine_name = "sqlite"

    def setUp(self) -> None:
        _, self.db, _, _ = open_store(self.engine_name, self.addCleanup)  # type: ignore[attr-defined]
        self.service = ClusterSettings(self.db, FILE, "/etc/secmail/secmail.toml")
        self.trail = AuditTrail(self.db)

    async def stored(self) -> dict[str, str]:
        return await self.db.run(stored_txn)

    async def version(self) -> int:
        return await self.db.run(version_txn)

    async def set(self, changes: dict[str, Any], now: int = 1000) -> dict[str, Any]:
        return await self.service.set(changes, admin="alice", address="192.0.2.1", now=now)

    async def test_a_change_is_stored_with_one_audit_row_a_key(self) -> None:
        shown = await self.set(
            {"portal.verification_phrase": "Blue heron", "smtp.max_recipients": 50}
        )
        assert shown["portal.verification_phrase"] == ("Blue heron", "database")
        assert shown["smtp.max_recipients"] == (50, "database")
        assert shown["portal.brand_name"] == ("File Ltd", "file")
        assert shown["portal.brand_colour"] == ("#1f5fae", "default")
        assert shown["gateway.data_dir"] == ("/var/lib/secmail", "file")
        assert await self.stored() == {
            "portal.verification_phrase": '"Blue heron"',
            "smtp.max_recipients": "50",
        }
        assert await self.version() == 1
        rows = await self.trail.since(0)
        assert sorted(rows, key=lambda r: r.setting or "") == [
            AuditRow(
                1000, "alice", "192.0.2.1", "setting changed", "portal.verification_phrase",
                '""', '"Blue heron"',
            ),
            AuditRow(1000, "alice", "192.0.2.1", "setting changed", "smtp.max_recipients",
                     "1000", "50"),
        ]  # fmt: skip

    async def test_same_value_again_writes_nothing(self) -> None:
        await self.set({"portal.verification_phrase": "Blue heron"})
        await self.set({"portal.verification_phrase": "Blue heron"}, now=2000)
        assert len(await self.trail.since(0)) == 1
        assert await self.version() == 1

    async def test_a_refused_change_writes_nothing(self) -> None:
        """One wrong value refuses the whole change: no value, no audit row, no new version."""
        with self.assertRaises(ConfigError) as e:  # type: ignore[attr-defined]
            await self.set({"portal.verification_phrase": "ok", "secure.audit_days": 10})
        assert str(e.exception) == (
            "secure.audit_days: 10 is less than secure.retention_days (30); "
            "the audit trail must outlive the messages"
        )
        assert await self.stored() == {}
        assert await self.trail.since(0) == []
        assert await self.version() == 0

    async def test_a_value_toml_cannot_hold_gets_the_files_error(self) -> None:
        with self.assertRaises(ConfigError) as e:  # type: ignore[attr-defined]
            await self.set({"portal.verification_phrase": datetime.date(2026, 1, 1)})
        assert str(e.exception) == "portal.verification_phrase: must be a string, not date"
        assert await self.stored() == {}

    async def test_a_key_the_file_sets_is_refused_apart(self) -> None:
        with self.assertRaises(FixedByFile) as e:  # type: ignore[attr-defined]
            await self.set({"portal.brand_name": "Database Ltd"})
        assert str(e.exception) == (
            "portal.brand_name: fixed by /etc/secmail/secmail.toml; "
            "remove it there to change it as a cluster setting"
        )
        with self.assertRaises(ConfigError) as node:  # type: ignore[attr-defined]
            await self.set({"portal.listen": ["tcp:8080"]})
        assert not isinstance(node.exception, FixedByFile)
        assert str(node.exception).startswith("portal.listen: a node setting")
        with self.assertRaises(ConfigError) as unknown:  # type: ignore[attr-defined]
            await self.set({"portal.title": "x"})
        assert str(unknown.exception).startswith("portal.title: unknown key (known in [portal]:")
        assert await self.stored() == {} and await self.trail.since(0) == []

    async def test_secrets_are_masked_in_the_audit_trail_and_shown(self) -> None:
        shown = await self.set({"sms.http.url": HTTP_URL})
        assert "s3cret" not in str(shown["sms.http.url"])
        [row] = await self.trail.since(0)
        assert row.setting == "sms.http.url" and row.before is None
        assert row.after is not None and "s3cret" not in row.after and "sms.example" in row.after
        assert "s3cret" in (await self.stored())["sms.http.url"]  # the gateway needs it

    async def test_reset_to_the_default(self) -> None:
        await self.set({"smtp.max_recipients": 50})
        shown = await self.set({"smtp.max_recipients": None}, now=2000)
        assert shown["smtp.max_recipients"] == (1000, "default")
        assert await self.stored() == {}
        rows = await self.trail.since(0)
        assert [(r.action, r.before, r.after) for r in rows] == [
            ("setting changed", "1000", "50"),
            ("setting reset", "50", "1000"),
        ]

    async def test_poller_applies_a_change_on_its_next_tick(self) -> None:
        """A running node's poll (task.Clock) hands the changed settings to LiveSettings."""
        live = LiveSettings(effective(FILE, {}))
        poller = SettingsPoller(self.db, FILE, live, await self.version())
        clock = task.Clock()
        runs: list[Deferred[None]] = []

        def tick() -> Deferred[None]:
            runs.append(poller.run())
            return runs[-1]

        timer = TimerService(POLL_SECONDS, tick)
        timer.clock = clock
        timer.startService()
        self.addCleanup(timer.stopService)  # type: ignore[attr-defined]
        await runs[-1]
        await self.set({"portal.verification_phrase": "Blue heron"})
        assert live.current.portal.verification_phrase == ""
        clock.advance(POLL_SECONDS)
        assert len(runs) == 2
        await runs[-1]
        assert live.current.branding.verification_phrase == "Blue heron"
        assert poller.version == 1

    async def test_settings_this_node_cannot_use_are_not_applied(self) -> None:
        """Values another node accepted but this node's file refuses: kept the last good ones."""
        await self.set({"secure.audit_days": 100})
        other_file = {**FILE, "secure": {"retention_days": 200}}
        live = LiveSettings(effective(other_file, {"secure.audit_days": 400}))
        good = live.current
        poller = SettingsPoller(self.db, other_file, live, 0)
        await poller.run()
        assert live.current is good and poller.version == 1
        await self.set({"secure.audit_days": 300}, now=2000)
        await poller.run()
        assert live.current.secure.audit_days == 300


@pytest.mark.skipif(not POSTGRES_DSN, reason=NO_POSTGRES)
def test_two_changes_at_once_run_one_after_the_other() -> None:
    """On PostgreSQL a change's first statement (lock_txn) takes the settings' lock: a second
    change waits for the first, then reads what it stored (not a stale snapshot)."""
    cleanups: list[Any] = []
    engine = make_engine("postgresql", lambda f, *a: cleanups.append((f, a)))
    try:
        Database(engine, None).prepare_blocking()
        first, second = engine.connect(), engine.connect()
        a, b = Txn(engine, first.cursor()), Txn(engine, second.cursor())
        a.execute(engine.begin)
        lock_txn(a)
        write_txn(a, {"portal.verification_phrase": '"a"'}, "x", 0)
        b.execute(engine.begin)
        b.execute("SET LOCAL lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            lock_txn(b)
        b.execute("ROLLBACK")
        a.execute("COMMIT")
        b.execute(engine.begin)
        lock_txn(b)
        assert stored_txn(b) == {"portal.verification_phrase": '"a"'}
        b.execute("ROLLBACK")
        first.close()
        second.close()
    finally:
        for f, args in reversed(cleanups):
            f(*args)


@pytest.mark.parametrize("text", ["a\x7fb", 'quote " and \\ back', "tab\tand\nnewline", "ää €"])
def test_any_text_is_stored_and_read_back(text: str) -> None:
    """Every string a setting may hold survives the database's TOML form (DEL too)."""
    from secmail.config.cluster import from_toml, to_toml

    assert from_toml(to_toml(text)) == text
