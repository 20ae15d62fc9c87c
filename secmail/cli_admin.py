# -*- test-case-name: tests.test_cli_admin -*-
"""
C{secmail admin add|list|remove|token}: the admin console's accounts from a shell.

Adding the first admin must work before the gateway ever ran, so C{add} makes the data
directory, the database (schema included) and the master key when they are not there yet,
as the gateway would, and says which database it wrote. The other subcommands never make a
database: there are no admins in one that does not exist.

L{secmail.cli}'s parser registers these with L{add_admin_commands} and hands over what they
use of it (L{CommandTools}), so this module does not import it back.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import os
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

from secmail import config
from secmail.admin.accounts import AccountError, AdminAccounts
from secmail.admin.roles import BUILT_IN, RoleError
from secmail.cli_db import system_user
from secmail.crypto import DerivedKeys, MasterKey, generate_key_file, load_key_file
from secmail.store.admins import Actor, AdminStore
from secmail.store.engines import engine_for
from secmail.store.keys import NODE_LIVE, KeyStore, sealing_key

#: For commands that open no sealed value: no master key needed.
_NO_KEY = b"\0" * 32


@dataclass(frozen=True)
class CommandTools:
    """What these commands use of L{secmail.cli}, given by its parser."""

    #: C{BlockingDatabase(dsn)}: the gateway's transactions run at once on this thread.
    database: Callable[[str], Any]
    #: Runs a coroutine whose awaits complete at once; returns its result or raises.
    wait: Callable[[Coroutine[Any, Any, Any]], Any]
    #: Printed as one line by C{secmail}, exit status 1.
    error: type[Exception]
    settings: Callable[[argparse.Namespace], config.Settings]


def add_admin_commands(sub: Any, own: list[argparse.ArgumentParser], tools: CommandTools) -> None:
    ad = sub.add_parser("admin", parents=own, help="admin console accounts and API tokens")
    adsub = ad.add_subparsers(dest="action", required=True)
    a = adsub.add_parser(
        "add",
        parents=own,
        help="add an admin, or reset one's password and second factor "
        "(password from standard input)",
    )
    a.add_argument("name")
    a.add_argument(
        "--role", required=True, help=f"built in: {', '.join(BUILT_IN)}; or one made in the console"
    )
    a.set_defaults(run=admin_add, tools=tools)
    adsub.add_parser("list", parents=own, help="show the admins").set_defaults(
        run=admin_list, tools=tools
    )
    r = adsub.add_parser("remove", parents=own, help="remove an admin and its API tokens")
    r.add_argument("name")
    r.set_defaults(run=admin_remove, tools=tools)
    t = adsub.add_parser(
        "token", parents=own, help="print a new API token that acts with the admin's role"
    )
    t.add_argument("name")
    t.set_defaults(run=admin_token, tools=tools)


def _actor() -> Actor:
    return Actor(system_user(), "local")


@contextmanager
def _database(args: argparse.Namespace, create: bool) -> Iterator[tuple[Any, str]]:
    """The gateway's database and its description; made (with its schema) when C{create}."""
    tools: CommandTools = args.tools
    settings = tools.settings(args)
    engine = engine_for(settings.store.database)
    where = engine.describe()
    if create:
        os.makedirs(settings.gateway.data_dir, mode=0o700, exist_ok=True)
    elif not engine.has_schema():
        raise tools.error(
            f"no secmail database at {where} (store.database): no admins yet; add the first "
            "with: secmail admin add NAME --role admin"
        )
    db = tools.database(settings.store.database)
    try:
        yield db, where
    finally:
        db.stop()


def _master_key(settings: config.Settings) -> tuple[MasterKey, bool]:
    """The ring, made as the gateway makes it on its first start when it is not there."""
    path = settings.store.master_key_file
    if settings.store.master_key_generated and not os.path.exists(path):
        return generate_key_file(path), True
    return load_key_file(path), False


def read_password(stdin: TextIO, stderr: TextIO) -> str:
    """One line from standard input; on a terminal asked twice, without echo."""
    if stdin.isatty():
        first = getpass.getpass("Password: ", stream=stderr)
        if getpass.getpass("Password again: ", stream=stderr) != first:
            raise AccountError("the two passwords differ; nothing was changed")
        return first
    line = stdin.readline()
    return line[:-1] if line.endswith("\n") else line


def admin_add(args: argparse.Namespace) -> int:
    tools: CommandTools = args.tools
    settings = tools.settings(args)
    try:
        password = read_password(sys.stdin, sys.stderr)
    except AccountError as e:
        raise tools.error(str(e)) from None
    old_umask = os.umask(0o077)  # the database and key are the gateway's alone, as it makes them
    try:
        master, made_key = _master_key(settings)
        with _database(args, create=True) as (db, where):
            now = int(time.time())
            nodes = [n for n in tools.wait(KeyStore(db).nodes()) if n.seen >= now - NODE_LIVE]
            master.seal_with(sealing_key(master.key_ids, nodes))
            accounts = AdminAccounts(
                AdminStore(db),
                DerivedKeys(master, "admin-totp"),
                _Clock(),
                issuer=f"secmail {settings.gateway.hostname}",
            )
            try:
                added = tools.wait(accounts.add(args.name, args.role, password, _actor()))
            except (AccountError, RoleError) as e:
                raise tools.error(str(e)) from None
    finally:
        os.umask(old_umask)
    if made_key:
        print(f"Made a new master key in {settings.store.master_key_file} (back it up).")
    what = "Added" if added.new else "Reset the password and second factor of"
    print(f"{what} admin {args.name} (role {args.role}) in {where}.")
    print("Second factor, for an authenticator app (shown once):")
    print(added.uri)
    if sys.stdout.isatty():
        _print_qr(added.uri)
    return 0


def _print_qr(uri: str) -> None:
    import segno

    segno.make(uri, error="m").terminal(compact=True)


def admin_list(args: argparse.Namespace) -> int:
    tools: CommandTools = args.tools
    with _database(args, create=False) as (db, where):
        admins = tools.wait(AdminStore(db).admins())
    if not admins:
        print(f"No admins in {where}.")
        return 0
    now = int(time.time())
    print(f"{'NAME':<24} {'ROLE':<12} {'ADDED':<17} {'TOKENS':>6}  STATE")
    for a in admins:
        added = datetime.datetime.fromtimestamp(a.created, datetime.UTC).strftime("%Y-%m-%d %H:%M")
        state = "locked" if a.locked_until > now else "-"
        print(f"{a.name:<24} {a.role:<12} {added:<17} {a.tokens:>6}  {state}")
    return 0


def admin_remove(args: argparse.Namespace) -> int:
    tools: CommandTools = args.tools
    with _database(args, create=False) as (db, where):
        removed = tools.wait(AdminStore(db).remove(args.name, int(time.time()), _actor()))
    if not removed:
        raise tools.error(f"no admin {args.name!r} in {where} (see: secmail admin list)")
    print(f"Removed admin {args.name}, its API tokens and sessions.")
    return 0


def admin_token(args: argparse.Namespace) -> int:
    tools: CommandTools = args.tools
    with _database(args, create=False) as (db, where):
        accounts = AdminAccounts(AdminStore(db), DerivedKeys(MasterKey(_NO_KEY), None), _Clock())
        token = tools.wait(accounts.make_token(args.name, _actor()))
    if token is None:
        raise tools.error(f"no admin {args.name!r} in {where} (see: secmail admin list)")
    print(token)
    return 0


class _Clock:
    def seconds(self) -> float:
        return time.time()
