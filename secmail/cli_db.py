# -*- test-case-name: tests.test_cli,tests.test_cli_messages -*-
"""
What every C{secmail} command shares: the configuration it names, the gateway's database
opened on the calling thread (never a new one), and errors printed as one line.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pwd
import sqlite3
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from secmail import config
from secmail.crypto import MasterKey
from secmail.store.database import Database, StoreUnavailable, Txn
from secmail.store.engines import engine_for
from secmail.store.messages import MessageStore

T = TypeVar("T")


class CommandError(Exception):
    """Printed as one line, exit status 1."""


class BlockingDatabase(Database):
    """The same transactions, run at once on the calling thread (no reactor in a CLI)."""

    def __init__(self, database: str) -> None:
        super().__init__(engine_for(database), reactor=None)
        self.prepare_blocking()
        self._blocking = self.engine.connect()

    def run(self, function: Callable[[Txn], T], /) -> Deferred[T]:
        cursor = self._blocking.cursor()
        try:
            cursor.execute(self.engine.begin)
            result = function(Txn(self.engine, cursor))
            cursor.execute("COMMIT")
        except Exception:
            cursor.execute("ROLLBACK")
            return fail(Failure())
        return succeed(result)

    def stop(self) -> None:
        self._blocking.close()


def wait(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine whose awaits all complete at once (see L{BlockingDatabase})."""
    results: list[Any] = []
    Deferred.fromCoroutine(coroutine).addBoth(results.append)
    if not results:
        raise RuntimeError("operation did not complete synchronously")
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def config_path(args: argparse.Namespace) -> str | None:
    """C{--config} wherever it was given, else L{config.DEFAULT_FILE} when it exists."""
    return getattr(args, "config", None) or config.default_path()


def load_settings(args: argparse.Namespace) -> config.Settings:
    return config.load(config_path(args))


def source(path: str | None) -> str:
    return f"from {path}" if path else "from the embedded defaults"


@contextmanager
def open_db(args: argparse.Namespace, settings: config.Settings) -> Iterator[BlockingDatabase]:
    """
    The gateway's database. A command never makes a new, empty one: the answer "the queue is
    empty" about a database the gateway does not use would mislead, so a database that is
    not there (or holds no secmail tables) is an error naming where it was looked for.
    """
    engine = engine_for(settings.store.database)
    try:
        present = engine.has_schema()
    except (sqlite3.Error, psycopg.Error) as e:
        raise CommandError(f"store.database: cannot open {engine.describe()}: {e}") from None
    if not present:
        raise CommandError(
            f"no secmail database at {engine.describe()} (store.database "
            f"{source(config_path(args))}): start the gateway once with this configuration, "
            "or name the file it runs with: secmail --config FILE ..."
        )
    try:
        db = BlockingDatabase(settings.store.database)
    except StoreUnavailable as e:
        raise CommandError(f"store.database: {e}") from None
    except Exception as e:
        raise CommandError(f"store.database: cannot open the database: {e}") from None
    try:
        yield db
    finally:
        db.stop()


#: For commands that read no message content and seal nothing: no master key needed.
NO_KEY = b"\0" * 32


@contextmanager
def open_store(args: argparse.Namespace) -> Iterator[MessageStore]:
    with open_db(args, load_settings(args)) as db:
        yield MessageStore(db, MasterKey(NO_KEY))


def when(timestamp: int) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def one_line(text: str) -> str:
    """Errors from libraries may span lines (psycopg's do); an admin gets one."""
    return " ".join(text.split())


def system_user() -> str:
    """
    Who ran the command, as the admins' audit trail names them: the effective user, and the
    one who ran sudo when that was someone else (C{secmail (sudo by alice)}).
    """
    try:
        name = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        name = f"uid {os.geteuid()}"
    by = os.environ.get("SUDO_USER", "")
    return f"{name} (sudo by {by})" if by and by != name else name
