"""Engines for storage tests: SQLite always, PostgreSQL when SECMAIL_TEST_POSTGRES is a DSN."""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Callable, Iterator
from urllib.parse import quote

import psycopg
from twisted.internet import reactor

from secmail.crypto import MasterKey
from secmail.store.database import Database
from secmail.store.engines import Engine, PostgresEngine, SqliteEngine
from secmail.store.messages import MessageStore

POSTGRES_DSN = os.environ.get("SECMAIL_TEST_POSTGRES", "")


def engine_names() -> list[str]:
    return ["sqlite", "postgresql"] if POSTGRES_DSN else ["sqlite"]


def make_engine(name: str, add_cleanup: Callable[..., object]) -> Engine:
    """A fresh, empty database of the named engine, removed when the test ends."""
    if name == "sqlite":
        directory = tempfile.mkdtemp(prefix="secmail-test-")
        add_cleanup(_rmtree, directory)
        return SqliteEngine(os.path.join(directory, "test.sqlite"))
    schema = "t_" + secrets.token_hex(6)
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    add_cleanup(_drop_schema, schema)
    sep = "&" if "?" in POSTGRES_DSN else "?"
    return PostgresEngine(POSTGRES_DSN + sep + "options=" + quote(f"-csearch_path={schema}"))


def open_store(
    name: str, add_cleanup: Callable[..., object]
) -> tuple[Engine, Database, MasterKey, MessageStore]:
    """A started database of the named engine with the schema, and a store with a fresh key."""
    engine = make_engine(name, add_cleanup)
    db = Database(engine, reactor)
    db.prepare_blocking()
    db.start()
    add_cleanup(db.stop)
    master = MasterKey(os.urandom(32))
    return engine, db, master, MessageStore(db, master)


def _drop_schema(schema: str) -> None:
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def _rmtree(directory: str) -> None:
    import shutil

    shutil.rmtree(directory, ignore_errors=True)


def each_engine() -> Iterator[str]:
    yield from engine_names()
