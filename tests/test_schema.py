"""Schema versions for a cluster: the compatibility floor and one migration at a time."""

from __future__ import annotations

import threading
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from secmail.store.database import (
    Database,
    StoreUnavailable,
    Txn,
    apply_schema_txn,
    compat_floor,
    schema_files,
)
from secmail.store.engines import Engine
from tests.dbs import POSTGRES_DSN, make_engine, on_each_engine


class CompatFloorTests(SynchronousTestCase):
    def test_header_read(self) -> None:
        """A file's `-- compat-floor: N` line is its floor; a file without one is its own floor."""
        self.assertEqual(compat_floor(9, "-- Version 9: more.\n-- compat-floor: 7\nCREATE ..."), 7)
        self.assertEqual(compat_floor(9, "-- Version 9: nothing said.\nDROP TABLE x;"), 9)

    def test_floors_of_the_files(self) -> None:
        """Every schema file's floor is at most its version and never below an earlier file's."""
        files = schema_files()
        floors = [compat_floor(v, files[v]) for v in sorted(files)]
        for version, floor in zip(sorted(files), floors, strict=True):
            self.assertLessEqual(floor, version)
        self.assertEqual(floors, sorted(floors))


@on_each_engine
class SchemaTestsMixin:
    engine_name = "sqlite"

    def setUp(self) -> None:
        self.engine = make_engine(self.engine_name, self.addCleanup)  # type: ignore[attr-defined]
        self.newest = max(schema_files())

    def sql(self, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
        conn = self.engine.connect()
        try:
            cursor = conn.cursor()
            cursor.execute(self.engine.begin)
            txn = Txn(self.engine, cursor)
            txn.execute(statement, params)
            rows = txn.fetchall() if statement.startswith("SELECT") else []
            cursor.execute("COMMIT")
            return rows
        finally:
            conn.close()

    def migrated_by_a_newer_node(self, floor: int) -> int:
        """The database as a node one version newer left it, declaring C{floor}."""
        Database(self.engine, None).prepare_blocking()
        newer = self.newest + 1
        self.sql("INSERT INTO schema_version (version) VALUES (?)", (newer,))
        self.sql("INSERT INTO schema_compat (version, floor) VALUES (?, ?)", (newer, floor))
        return newer

    def test_floors_recorded(self) -> None:
        """Each version applied records its floor beside it."""
        Database(self.engine, None).prepare_blocking()
        files = schema_files()
        rows = self.sql("SELECT version, floor FROM schema_compat ORDER BY version")
        self.assertEqual(
            [(int(v), int(f)) for v, f in rows],
            [(v, compat_floor(v, files[v])) for v in sorted(files)],
        )

    def test_newer_compatible_schema_runs(self) -> None:
        """A node runs against a newer schema whose floor it meets (a rolling upgrade)."""
        newer = self.migrated_by_a_newer_node(floor=self.newest)
        self.assertEqual(Database(self.engine, None).prepare_blocking(), newer)
        rows = self.sql("SELECT MAX(version) FROM schema_version")
        self.assertEqual(int(rows[0][0]), newer)

    def test_newer_incompatible_schema_refused(self) -> None:
        """A schema whose floor is above what this node knows is refused, naming both numbers."""
        newer = self.migrated_by_a_newer_node(floor=self.newest + 1)
        with self.assertRaises(StoreUnavailable) as e:  # type: ignore[attr-defined]
            Database(self.engine, None).prepare_blocking()
        message = str(e.exception)
        self.assertIn(f"schema version {newer}", message)
        self.assertIn(f"knows schema {self.newest + 1} or newer", message)
        self.assertIn(f"this secmail knows schema {self.newest}", message)
        self.assertNotIn("\n", message)

    def test_two_nodes_migrate_once(self) -> None:
        """Two nodes starting at once: the second waits for the first's migration, then uses it."""
        first = self.engine.connect()
        cursor = first.cursor()
        cursor.execute(self.engine.begin)
        apply_schema_txn(Txn(self.engine, cursor), self.engine)  # migrated, not yet committed
        outcome: list[Any] = []

        def second_node() -> None:
            try:
                outcome.append(Database(self.engine, None).prepare_blocking())
            except Exception as e:  # noqa: BLE001 - the test reports it
                outcome.append(e)

        thread = threading.Thread(target=second_node)
        thread.start()
        try:
            wait_until_blocked(self.engine, thread)
        finally:
            cursor.execute("COMMIT")
            first.close()
        thread.join(30)
        self.assertEqual(outcome, [self.newest])
        rows = self.sql("SELECT version, COUNT(*) FROM schema_version GROUP BY version")
        self.assertEqual(
            sorted((int(v), int(n)) for v, n in rows), [(v, 1) for v in sorted(schema_files())]
        )


def wait_until_blocked(engine: Engine, thread: threading.Thread) -> None:
    """Until the second node waits for a lock (PostgreSQL tells; SQLite waits in BEGIN)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and thread.is_alive():
        if engine.name != "postgresql":
            time.sleep(0.3)  # SQLite cannot say who waits; BEGIN IMMEDIATE is waiting by now
            return
        import psycopg

        with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
            row = conn.execute(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND (query LIKE '%schema_version%' OR query LIKE '%pg_advisory_xact_lock%')"
            ).fetchone()
        if row is not None and row[0]:
            return
        time.sleep(0.02)
