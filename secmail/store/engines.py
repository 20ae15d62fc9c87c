"""
The two database engines and the few ways in which their SQL differs.

All SQL in secmail is written once, with C{?} placeholders; the engine
converts it for PostgreSQL and fills in the dialect words of the schema files.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from typing import Any, Protocol

import psycopg


class Connection(Protocol):
    def cursor(self) -> Any: ...
    def close(self) -> None: ...


class Engine:
    """What differs between SQLite and PostgreSQL."""

    name: str
    #: Words filled into the schema files: {blob}, {serial}, {bigint}.
    types: dict[str, str]
    #: Appended to a row-claiming SELECT so that nodes skip each other's rows.
    skip_locked: str = ""
    #: How a transaction starts.
    begin: str = "BEGIN"
    #: A statement that makes the schema migrations of two nodes wait for each other
    #: (held until the transaction ends); "" when C{begin} already serialises writers.
    migration_lock: str = ""

    def connect(self) -> Connection:
        raise NotImplementedError

    def convert(self, sql: str) -> str:
        return sql

    def is_connection_error(self, error: BaseException) -> bool:
        """Whether the connection is no longer usable and must be opened again."""
        return False

    def describe(self) -> str:
        raise NotImplementedError

    def has_schema(self) -> bool:
        """Whether the database exists and holds secmail's tables; creates nothing."""
        raise NotImplementedError


class SqliteEngine(Engine):
    name = "sqlite"
    types = {"blob": "BLOB", "serial": "INTEGER PRIMARY KEY AUTOINCREMENT", "bigint": "INTEGER"}
    # Take the write lock at once: a deferred transaction that reads and then writes can
    # fail at once with SQLITE_BUSY when another process (the secmail command) wrote meanwhile.
    begin = "BEGIN IMMEDIATE"

    def __init__(self, path: str) -> None:
        self.path = path

    def connect(self) -> sqlite3.Connection:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: every COMMIT is fsynced before it returns (the 250 depends on it).
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=10000")
        return conn

    def describe(self) -> str:
        return f"sqlite:{self.path}"

    def has_schema(self) -> bool:
        if not os.path.isfile(self.path):
            return False
        uri = "file:" + urllib.parse.quote(os.path.abspath(self.path)) + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True)
        try:
            row = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
            ).fetchone()
        finally:
            conn.close()
        return row is not None


class PostgresEngine(Engine):
    name = "postgresql"
    types = {"blob": "BYTEA", "serial": "BIGSERIAL PRIMARY KEY", "bigint": "BIGINT"}
    skip_locked = " FOR UPDATE SKIP LOCKED"
    # One lock per schema (several installations may share a database), released at COMMIT.
    migration_lock = "SELECT pg_advisory_xact_lock(hashtext('secmail-schema:' || current_schema()))"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def connect(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=10)
        # The default, stated: an acknowledged COMMIT is on disk.
        conn.execute("SET synchronous_commit TO on")
        return conn

    def convert(self, sql: str) -> str:
        return sql.replace("%", "%%").replace("?", "%s")

    def is_connection_error(self, error: BaseException) -> bool:
        return isinstance(error, psycopg.OperationalError | psycopg.InterfaceError)

    def describe(self) -> str:
        dbname = psycopg.conninfo.conninfo_to_dict(self.dsn).get("dbname", "")
        return f"postgresql ({dbname})"

    def has_schema(self) -> bool:
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            row = conn.execute("SELECT to_regclass('schema_version')").fetchone()
        return row is not None and row[0] is not None


def engine_for(database: str) -> Engine:
    """The engine for a C{[store] database} setting."""
    if database.startswith("sqlite:"):
        return SqliteEngine(database[len("sqlite:") :])
    return PostgresEngine(database)
