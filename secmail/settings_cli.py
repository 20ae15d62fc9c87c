# -*- test-case-name: tests.test_settings_cli -*-
"""
C{secmail settings show [KEY]}, C{secmail settings set KEY VALUE} and C{secmail settings
unset KEY}: the cluster settings in the database (L{secmail.settings}), which every running
gateway applies within seconds. Registered in L{secmail.cli}, which lends its database opener.

VALUE is read as a TOML value when it is one (C{5}, C{true}, C{["en", "fi"]},
C{'"quoted"'}), otherwise as the text itself: C{secmail settings set portal.brand_name
Example Ltd} needs no TOML quotes, only the shell's.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Coroutine
from contextlib import AbstractContextManager
from typing import Any

from secmail import config
from secmail.cli_db import system_user
from secmail.config.cluster import KEYS, check_change, read_value, to_toml
from secmail.settings import DATABASE, FILE, ClusterSettings
from secmail.store.database import Database

OpenDb = Callable[[argparse.Namespace, config.Settings], AbstractContextManager[Database]]
Wait = Callable[[Coroutine[Any, Any, Any]], Any]

HELP_SET = (
    'VALUE is a TOML value when it parses as one (5, true, ["en", "fi"], \'"text"\'), '
    "else the text as it is; every running gateway applies it within 5 seconds"
)


def add_commands(sub: Any, own: list[argparse.ArgumentParser], open_db: OpenDb, wait: Wait) -> None:
    """The C{settings} command and its subcommands, on the C{secmail} parser's C{sub}."""
    s = sub.add_parser(
        "settings", parents=own, help="show or change the cluster settings in the database"
    )
    ssub = s.add_subparsers(dest="action", required=True)
    sh = ssub.add_parser("show", parents=own, help="every key (or one): value and source")
    sh.add_argument("key", nargs="?", default=None, help="section.key, e.g. portal.brand_name")
    sh.set_defaults(run=lambda args: show(args, open_db, wait))
    st = ssub.add_parser("set", parents=own, help="store a cluster setting", description=HELP_SET)
    st.add_argument("key", help="section.key, e.g. portal.verification_phrase")
    st.add_argument("value", nargs="+", help="the value (words are joined with spaces)")
    st.set_defaults(run=lambda args: change(args, open_db, wait, read_value(" ".join(args.value))))
    un = ssub.add_parser("unset", parents=own, help="take a cluster setting back to its default")
    un.add_argument("key")
    un.set_defaults(run=lambda args: change(args, open_db, wait, None))


def _service(db: Database, args: argparse.Namespace, settings: config.Settings) -> ClusterSettings:
    path = getattr(args, "config", None) or config.default_path()
    extra = None
    if settings.sms.order:
        from secmail.tap import pin_text_problems  # the portal's catalogues translate

        extra = pin_text_problems
    return ClusterSettings(db, config.read_file(path), path or "the embedded defaults", extra)


def _line(name: str, value: Any, source: str, origin: str) -> str:
    shown = "(not set)" if value is None else to_toml(value)
    if source == FILE:
        why = "node setting, read only from the file" if KEYS[name].node_only else "fixed"
        source = f"file: {why} ({origin})"
    return f"{name} = {shown}  # {source}"


def show(args: argparse.Namespace, open_db: OpenDb, wait: Wait) -> int:
    settings = config.load(getattr(args, "config", None) or config.default_path())
    if args.key is not None and args.key not in KEYS:
        check_change(args.key, {}, "")  # the unknown key's one-line error
    with open_db(args, settings) as db:
        service = _service(db, args, settings)
        values = wait(service.show())
    for name, (value, source) in values.items():
        if args.key in (None, name):
            print(_line(name, value, source, service.origin))
    return 0


def change(args: argparse.Namespace, open_db: OpenDb, wait: Wait, value: Any) -> int:
    settings = config.load(getattr(args, "config", None) or config.default_path())
    with open_db(args, settings) as db:
        service = _service(db, args, settings)
        values = wait(
            service.set(
                {args.key: value}, admin=system_user(), address="local", now=int(time.time())
            )
        )
    shown, source = values[args.key]
    print(_line(args.key, shown, source, service.origin))
    if source == DATABASE or value is None:
        print("secmail: stored; running gateways apply it within 5 seconds", file=sys.stderr)
    return 0
