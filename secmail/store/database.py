"""
One database connection on its own thread, with group commit.

Every piece of work is a function of one cursor (a C{*_txn} function). Work
that arrives while a transaction is running waits and is then committed
together in one transaction; only if a piece fails is the batch run again with
each piece in a savepoint of its own, so that one failing piece does not undo
the others. There is no timer window: a batch is whatever arrived while
the previous commit ran, so a lone writer never waits and a busy gateway pays
one fsync for many messages.
"""

from __future__ import annotations

import importlib.resources
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from secmail.monitoring.metrics import DB_COMMIT, DB_ERRORS
from secmail.store.engines import Connection, Engine

T = TypeVar("T")

log = Logger()


class StoreUnavailable(Exception):
    """The database could not be reached or could not commit; the caller answers 4xx."""


class Txn:
    """A cursor that takes C{?} placeholders on every engine."""

    def __init__(self, engine: Engine, cursor: Any) -> None:
        self._engine = engine
        self._cursor = cursor

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Txn:
        self._cursor.execute(self._engine.convert(sql), tuple(params))
        return self

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._cursor.executemany(self._engine.convert(sql), [tuple(r) for r in rows])

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return list(self._cursor.fetchall())

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount)

    @property
    def skip_locked(self) -> str:
        return self._engine.skip_locked


@dataclass
class _Work:
    function: Callable[[Txn], Any]
    result: Deferred[Any] = field(default_factory=Deferred)


class Database:
    """
    Runs transactions on a dedicated thread, batching concurrent ones.

    @param reactor: used to hop between the reactor and the database thread.
    """

    def __init__(self, engine: Engine, reactor: Any) -> None:
        self.engine = engine
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="secmail-db")
        self._conn: Connection | None = None
        self._pending: list[_Work] = []
        self._busy = False
        self.batches = 0

    def start(self) -> None:
        self._pool.start()

    def stop(self) -> None:
        self._pool.stop()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def run(self, function: Callable[[Txn], T], /) -> Deferred[T]:
        """
        Run C{function(txn)} in a transaction; fires once it is committed.

        C{function} may be run more than once (when another piece of its batch fails, the
        batch is run again piece by piece), so it must not have effects outside the database.
        """
        work = _Work(function)
        self._pending.append(work)
        if not self._busy:
            self._flush()
        return work.result

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        self._busy = True
        d = deferToThreadPool(self._reactor, self._pool, self._run_batch, batch)
        d.addBoth(self._batch_done, batch)

    def _batch_done(self, outcome: list[tuple[bool, Any]] | Failure, batch: list[_Work]) -> None:
        self._busy = False
        if self._pending:
            self._flush()
        if isinstance(outcome, Failure):
            DB_ERRORS.inc()
            error = outcome.value
            for work in batch:
                work.result.errback(
                    StoreUnavailable(f"database: {type(error).__name__}: {error}")
                    if not isinstance(error, StoreUnavailable)
                    else error
                )
            return
        for work, (ok, value) in zip(batch, outcome, strict=True):
            if ok:
                work.result.callback(value)
            else:
                work.result.errback(value)

    # --- on the database thread -------------------------------------------------------

    def _connection(self) -> Connection:
        if self._conn is None:
            try:
                self._conn = self.engine.connect()
            except Exception as e:
                raise StoreUnavailable(f"cannot connect to {self.engine.describe()}: {e}") from e
        return self._conn

    def _run_batch(self, batch: list[_Work]) -> list[tuple[bool, Any]]:
        started = time.perf_counter()
        conn = self._connection()
        try:
            cursor = conn.cursor()
        except Exception as e:
            self._conn = None  # closed under us: the next batch opens a new one
            raise StoreUnavailable(f"{self.engine.describe()}: {type(e).__name__}: {e}") from e
        txn = Txn(self.engine, cursor)
        results: list[tuple[bool, Any]] = []
        try:
            cursor.execute(self.engine.begin)
            try:
                # Optimistic: the whole batch as one transaction, with no per-piece statements.
                results = [(True, work.function(txn)) for work in batch]
            except Exception as e:
                if self.engine.is_connection_error(e):
                    raise
                failure = Failure()
                cursor.execute("ROLLBACK")
                if len(batch) == 1:
                    return [(False, failure)]
                # Some piece failed: run them again, each in a savepoint of its own, so that
                # only the failing ones fail. Work functions can be run again (see run()).
                cursor.execute(self.engine.begin)
                results = self._isolated(cursor, txn, batch)
            cursor.execute("COMMIT")
        except Exception as e:
            self._discard_after(e)
            raise StoreUnavailable(f"{self.engine.describe()}: {type(e).__name__}: {e}") from e
        finally:
            cursor.close()
        self.batches += 1
        DB_COMMIT.observe(time.perf_counter() - started)
        return results

    def _isolated(self, cursor: Any, txn: Txn, batch: list[_Work]) -> list[tuple[bool, Any]]:
        results: list[tuple[bool, Any]] = []
        for work in batch:
            cursor.execute("SAVEPOINT work")
            try:
                results.append((True, work.function(txn)))
            except Exception as e:
                if self.engine.is_connection_error(e):
                    raise
                results.append((False, Failure()))
                cursor.execute("ROLLBACK TO SAVEPOINT work")
            cursor.execute("RELEASE SAVEPOINT work")
        return results

    def _discard_after(self, error: Exception) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            conn.cursor().execute("ROLLBACK")
            broken = self.engine.is_connection_error(error)
        except Exception:
            broken = True  # cannot even roll back: start afresh with a new connection
        if broken:
            try:
                conn.close()
            finally:
                self._conn = None

    # --- schema ---------------------------------------------------------------------

    def prepare_blocking(self) -> int:
        """Create or upgrade the schema; called before the reactor runs. Returns the version."""
        conn = self.engine.connect()
        try:
            cursor = conn.cursor()
            txn = Txn(self.engine, cursor)
            cursor.execute(self.engine.begin)
            version = apply_schema_txn(txn, self.engine)
            cursor.execute("COMMIT")
            return version
        finally:
            conn.close()


def schema_files() -> dict[int, str]:
    folder = importlib.resources.files("secmail.store") / "schema"
    files = {}
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d+)\.sql", entry.name)
        if match:
            files[int(match.group(1))] = entry.read_text(encoding="utf-8")
    return files


def compat_floor(version: int, sql: str) -> int:
    """
    The oldest schema version a secmail must know to run against schema C{version}: its
    file's C{-- compat-floor: N} line, or C{version} itself when it has none (a file that
    says nothing may have removed or changed what older code uses).
    """
    match = re.search(r"^-- compat-floor: (\d+)\s*$", sql, re.MULTILINE)
    return version if match is None else int(match.group(1))


def apply_schema_txn(txn: Txn, engine: Engine, target: int | None = None) -> int:
    """
    Bring the schema up to C{target} (default: the newest); returns the version reached, or
    the database's when it is newer and its compatibility floor allows this code to run.

    One node migrates at a time: the engine's migration lock (PostgreSQL: a transaction's
    advisory lock; SQLite: C{BEGIN IMMEDIATE}) makes a second node starting at once wait
    for the first to commit, and then read the version the first reached.
    """
    if engine.migration_lock:
        txn.execute(engine.migration_lock)
    txn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    # Beside each version, the oldest schema version a node must know to run against it:
    # a node of the previous release keeps running while another has migrated (additive).
    txn.execute(
        "CREATE TABLE IF NOT EXISTS schema_compat "
        "(version INTEGER PRIMARY KEY, floor INTEGER NOT NULL)"
    )
    row = txn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    current = row[0] or 0
    files = schema_files()
    newest = max(files) if target is None else target
    if current > newest:
        row = txn.execute(
            "SELECT floor FROM schema_compat WHERE version = ?", (current,)
        ).fetchone()
        floor = current if row is None else int(row[0])
        if floor > newest:
            raise StoreUnavailable(
                f"the database has schema version {current}, which needs a secmail that knows "
                f"schema {floor} or newer; this secmail knows schema {newest}: upgrade secmail"
            )
        log.info(
            "Database schema version {current} is newer than this secmail's ({newest}) "
            "and compatible with it (floor {floor})",
            current=current,
            newest=newest,
            floor=floor,
        )
        return int(current)
    for version in range(current + 1, newest + 1):
        sql = files[version]
        for word, value in engine.types.items():
            sql = sql.replace("{" + word + "}", value)
        for statement in _statements(sql):
            txn.execute(statement)
        txn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
        txn.execute(
            "INSERT INTO schema_compat (version, floor) VALUES (?, ?)",
            (version, compat_floor(version, sql)),
        )
        log.info("Database schema upgraded to version {version}", version=version)
    return newest


def _statements(sql: str) -> list[str]:
    lines = [line.split("--", 1)[0] for line in sql.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
