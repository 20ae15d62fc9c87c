"""
The C{secmail} command for admins: check the configuration, look after the queue, make keys.

It works on the same database as the running gateway (both engines take
concurrent use), so queue changes take effect at the gateway's next queue scan.
"""

from __future__ import annotations

import argparse
import datetime
import sqlite3
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from secmail import config
from secmail.crypto import MasterKey, MasterKeyError, generate_key_file
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


def _wait(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine whose awaits all complete at once (see L{BlockingDatabase})."""
    results: list[Any] = []
    Deferred.fromCoroutine(coroutine).addBoth(results.append)
    if not results:
        raise RuntimeError("operation did not complete synchronously")
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


@contextmanager
def _open_store(path: str | None) -> Iterator[MessageStore]:
    settings = config.load(path)
    try:
        db = BlockingDatabase(settings.store.database)
    except StoreUnavailable as e:
        raise CommandError(f"store.database: {e}") from None
    except Exception as e:
        raise CommandError(f"store.database: cannot open the database: {e}") from None
    try:
        # The queue commands read no message content, so no master key is needed.
        yield MessageStore(db, MasterKey(b"\0" * 32))
    finally:
        db.stop()


def check_config(args: argparse.Namespace) -> int:
    settings = config.load(args.file)
    for line in config.describe(settings):
        print(line)
    print(f"{args.file}: OK", file=sys.stderr)
    return 0


def _when(timestamp: int) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def queue_list(args: argparse.Namespace) -> int:
    with _open_store(args.config) as store:
        items = _wait(store.queue_list())
    if not items:
        print("The queue is empty.")
        return 0
    print(f"{'ID':>6}  {'KIND':<12} {'NEXT TRY (UTC)':<19}  {'TRIES':>5}  RECIPIENTS / LAST ERROR")
    for item in items:
        print(
            f"{item.id:>6}  {item.kind:<12} {_when(item.next_attempt):<19}  {item.attempts:>5}  "
            f"{', '.join(item.recipients)} via {item.route}"
        )
        if item.last_error:
            print(f"{'':>6}  {'':<12} {'':<19}  {'':>5}  {item.last_error}")
    return 0


def queue_retry(args: argparse.Namespace) -> int:
    with _open_store(args.config) as store:
        retried = _wait(store.queue_retry(args.id, int(time.time())))
    if not retried:
        raise CommandError(f"queue row {args.id} does not exist (see: secmail queue list)")
    print(f"Queue row {args.id} will be tried at the next queue scan.")
    return 0


def queue_delete(args: argparse.Namespace) -> int:
    with _open_store(args.config) as store:
        deleted = _wait(store.queue_delete(args.id, int(time.time())))
    if not deleted:
        raise CommandError(f"queue row {args.id} does not exist (see: secmail queue list)")
    print(f"Queue row {args.id} deleted; its recipients will not get it and no bounce is sent.")
    return 0


def keys_generate(args: argparse.Namespace) -> int:
    try:
        key: MasterKey = generate_key_file(args.file)
    except FileExistsError:
        raise CommandError(
            f"{args.file}: already exists; refusing to overwrite a master key"
        ) from None
    except OSError as e:
        raise CommandError(f"{args.file}: {e.strerror}") from None
    print(
        f"Wrote master key {key.key_id} to {args.file} (mode 600). Back it up: without it "
        "stored messages cannot be read."
    )
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="secmail", description="secmail gateway administration")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("check-config", help="validate a configuration file and print its settings")
    c.add_argument("file")
    c.set_defaults(run=check_config)

    q = sub.add_parser("queue", help="list, retry or delete outbound queue rows")
    q.add_argument("--config", "-c", default=None, help="configuration file")
    qsub = q.add_subparsers(dest="action", required=True)
    qsub.add_parser("list", help="show every queued delivery").set_defaults(run=queue_list)
    r = qsub.add_parser("retry", help="try a queued delivery at the next scan")
    r.add_argument("id", type=int)
    r.set_defaults(run=queue_retry)
    d = qsub.add_parser("delete", help="drop a queued delivery without bouncing it")
    d.add_argument("id", type=int)
    d.set_defaults(run=queue_delete)

    k = sub.add_parser("keys", help="master key files")
    ksub = k.add_subparsers(dest="action", required=True)
    g = ksub.add_parser("generate", help="write a new master key file")
    g.add_argument("file")
    g.set_defaults(run=keys_generate)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (config.ConfigError, CommandError, MasterKeyError, StoreUnavailable) as e:
        print(f"secmail: {one_line(str(e))}", file=sys.stderr)
        return 1
    except (sqlite3.Error, psycopg.Error) as e:
        print(f"secmail: database error: {type(e).__name__}: {one_line(str(e))}", file=sys.stderr)
        return 1


def one_line(text: str) -> str:
    """Errors from libraries may span lines (psycopg's do); an admin gets one."""
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
