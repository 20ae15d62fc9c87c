"""Engines for storage tests: SQLite always, PostgreSQL when SECMAIL_TEST_POSTGRES is a DSN."""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import quote

import psycopg
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from secmail.crypto import MasterKey
from secmail.store.database import Database
from secmail.store.engines import Engine, PostgresEngine, SqliteEngine
from secmail.store.messages import MessageStore

POSTGRES_DSN = os.environ.get("SECMAIL_TEST_POSTGRES", "")
NO_POSTGRES = (
    "PostgreSQL storage tests need SECMAIL_TEST_POSTGRES, a DSN such as "
    "postgresql://postgres@127.0.0.1:5432/test"
)
# The engines' names (make_engine) and the word each gives its test classes.
ENGINE_CLASS_PREFIXES = {"sqlite": "Sqlite", "postgresql": "Postgres"}

M = TypeVar("M", bound=type)


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


def on_each_engine(mixin: M) -> M:
    """Run the storage tests of C{mixin} on SQLite and on PostgreSQL, one trial TestCase each.

    The two classes are added beside the mixin in its module, named for the engine
    (C{QueueTestsMixin} or C{QueueMixin} -> C{SqliteQueueTests}, C{PostgresQueueTests}), with
    C{engine_name} set for C{open_store}/C{make_engine}. The PostgreSQL one is skipped, saying
    why, when SECMAIL_TEST_POSTGRES is unset. The mixin is no TestCase, so it is not run alone.
    """
    if issubclass(mixin, TestCase):
        raise TypeError(f"{mixin.__name__} is a TestCase: on_each_engine wants a mixin")
    module = sys.modules[mixin.__module__]
    stem = mixin.__name__.removesuffix("Mixin").removesuffix("Tests")
    for engine, prefix in ENGINE_CLASS_PREFIXES.items():
        name = f"{prefix}{stem}Tests"
        if hasattr(module, name):
            raise TypeError(f"{mixin.__module__}.{name} exists: rename it or the mixin")
        namespace: dict[str, object] = {
            "engine_name": engine,
            "__module__": mixin.__module__,
            "__qualname__": name,
            "__doc__": mixin.__doc__,
        }
        if engine == "postgresql" and not POSTGRES_DSN:
            namespace["skip"] = NO_POSTGRES
        setattr(module, name, type(name, (mixin, TestCase), namespace))
    return mixin
