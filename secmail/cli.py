"""
The C{secmail} command for admins: check the configuration, look after the queue and keys.
(C{secmail messages} and C{queue show} are in L{secmail.cli_messages}; what every command
shares, in L{secmail.cli_db}.)

It works on the same database as the running gateway (both engines take
concurrent use), so queue changes take effect at the gateway's next queue scan.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from twisted.python.failure import Failure

import secmail
from secmail import cli_messages, cli_monitoring, config
from secmail.address import AddressError, directory_address, parse_phone
from secmail.cli_admin import CommandTools, add_admin_commands
from secmail.cli_db import (
    NO_KEY,
    BlockingDatabase,
    CommandError,
    config_path,
    load_settings,
    one_line,
    open_db,
    open_store,
    system_user,
    wait,
    when,
)
from secmail.crypto import (
    MasterKey,
    MasterKeyError,
    generate_key_file,
    load_key_file,
    remove_from_key_file,
    rotate_key_file,
)
from secmail.masking import mask_number, mask_sms_recipients
from secmail.settings_cli import add_commands as add_settings_commands
from secmail.sms.backends import build_backends, sms_mail
from secmail.sms.errors import SmsTemporaryError, classify
from secmail.store.audit import AuditRow
from secmail.store.database import StoreUnavailable
from secmail.store.keys import NODE_LIVE, KeyStore, retire_problems, sealing_key
from secmail.store.messages import MessageStore
from secmail.store.sms import SmsStore


@contextmanager
def _open_phones(args: argparse.Namespace) -> Iterator[tuple[config.Settings, SmsStore]]:
    settings = load_settings(args)
    with open_db(args, settings) as db:
        yield settings, SmsStore(db, NO_KEY)


def _address(text: str) -> str:
    try:
        return directory_address(text)
    except AddressError as e:
        raise CommandError(e.text) from None


def _number(text: str, settings: config.Settings) -> str:
    try:
        return parse_phone(text, settings.secure.default_country_code)
    except AddressError as e:
        raise CommandError(e.text) from None


def check_config(args: argparse.Namespace) -> int:
    path = args.file or config_path(args)
    settings = config.load(path)
    if settings.sms.order:
        from secmail.tap import pin_text_problems  # the portal's catalogues translate

        for problem in pin_text_problems(settings):
            raise CommandError(problem)
    for line in config.describe(settings):
        print(line)
    print(f"{path or '(embedded defaults)'}: OK", file=sys.stderr)
    return 0


#: What an admin does about quarantined rows, printed under C{queue list}.
QUARANTINE_HINT = (
    "Such a row is not tried until you fix the cause (such as a node with another master key) "
    "and run `secmail queue retry ID`; `secmail queue delete ID` drops it."
)


def queue_list(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        items = wait(store.queue_list())
    quarantined = sum(1 for item in items if item.quarantined is not None)
    if args.quarantined:
        items = [item for item in items if item.quarantined is not None]
    if not items:
        print("No row is quarantined." if args.quarantined else "The queue is empty.")
        return 0
    print(
        f"{'ID':>6}  {'KIND':<12} {'NEXT TRY (UTC)':<19}  {'TRIES':>5}  {'STATE':<11}  "
        f"{'AGE':>4}  SENDER -> RECIPIENTS / LAST ERROR"
    )
    now = int(time.time())
    for item in items:
        recipients, last_error = list(item.recipients), item.last_error
        if item.kind == "sms":  # an SMS by e-mail: the address is the phone number
            recipients, last_error = mask_sms_recipients(recipients, last_error)
        next_try = "-" if item.quarantined is not None else when(item.next_attempt)
        print(
            f"{item.id:>6}  {item.kind:<12} {next_try:<19}  {item.attempts:>5}  "
            f"{item.state:<11}  {cli_messages.age(now - item.created):>4}  "
            f"<{item.sender}> -> {', '.join(recipients)} via {item.route}"
        )
        if item.quarantined is not None:
            last_error = f"quarantined {when(item.quarantined)} UTC: {last_error}"
        if last_error:
            print(f"{'':>6}  {'':<12} {'':<19}  {'':>5}  {'':<11}  {'':>4}  {last_error}")
    if quarantined:
        print(f"Quarantined: {quarantined} row{'' if quarantined == 1 else 's'}. {QUARANTINE_HINT}")
    return 0


def _audit(now: int) -> AuditRow:
    """The audit row of a change made with this command (the store fills in what changed)."""
    return AuditRow(now, system_user(), "local", "")


def queue_retry(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        now = int(time.time())
        item = wait(store.queue_retry(args.id, now, audit=_audit(now)))
    if item is None:
        raise CommandError(f"queue row {args.id} does not exist (see: secmail queue list)")
    if item.quarantined is not None:
        print(f"Queue row {args.id} is out of quarantine and will be tried at the next queue scan.")
    else:
        print(f"Queue row {args.id} will be tried at the next queue scan.")
    return 0


def queue_delete(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        now = int(time.time())
        deleted = wait(store.queue_delete(args.id, now, audit=_audit(now)))
    if not deleted:
        raise CommandError(f"queue row {args.id} does not exist (see: secmail queue list)")
    print(f"Queue row {args.id} deleted; its recipients will not get it and no bounce is sent.")
    return 0


def phones_add(args: argparse.Namespace) -> int:
    with _open_phones(args) as (settings, phones):
        address = _address(args.address)
        number = _number(args.number, settings)
        now = int(time.time())
        new = wait(phones.set_phone(address, number, now, audit=_audit(now)))
    print(f"{'Added' if new else 'Changed'}: {address} {number}")
    return 0


def phones_list(args: argparse.Namespace) -> int:
    with _open_phones(args) as (_, phones):
        entries = wait(phones.phones())
    if not entries:
        print("The phone directory is empty.")
        return 0
    width = max(len("ADDRESS"), *(len(address) for address, _, _ in entries))
    print(f"{'ADDRESS':<{width}}  {'NUMBER':<16}  CHANGED (UTC)")
    for address, number, updated in entries:
        print(f"{address:<{width}}  {number:<16}  {when(updated)}")
    return 0


def phones_remove(args: argparse.Namespace) -> int:
    with _open_phones(args) as (_, phones):
        address = _address(args.address)
        removed = wait(phones.remove_phone(address, audit=_audit(int(time.time()))))
    if not removed:
        raise CommandError(f"{address} is not in the phone directory (see: secmail phones list)")
    print(f"Removed: {address}")
    return 0


def sms_outbox(args: argparse.Namespace) -> int:
    with _open_phones(args) as (_, store):
        rows = wait(store.outbox())
    if not rows:
        print("The SMS outbox is empty.")
        return 0
    print(f"{'ID':>6}  {'NUMBER':<18}  {'NEXT TRY (UTC)':<19}  {'EXPIRES (UTC)':<19}  {'TRIES':>5}")
    for item, next_attempt, last_error in rows:
        print(
            f"{item.id:>6}  {mask_number(item.number):<18}  {when(next_attempt):<19}  "
            f"{when(item.expires):<19}  {item.attempts:>5}"
        )
        if last_error:
            print(f"{'':>6}  {last_error}")
    return 0


def sms_test(args: argparse.Namespace) -> int:
    """Send a test SMS through each configured backend on its own; report each result."""
    settings = load_settings(args)
    if not settings.sms.order:
        raise CommandError("sms.order is empty: no SMS backend is configured")
    number = _number(args.number, settings)
    text = args.text or f"Test message from the secure e-mail gateway {settings.gateway.hostname}."
    results: list[tuple[str, str | None, Exception | None]] = []

    async def send_mail(to: str, content: bytes) -> None:
        master = load_key_file(settings.store.master_key_file)
        with open_db(args, settings) as db:
            # Seal like the gateways do: with a key every running node holds.
            now = int(time.time())
            nodes = [n for n in wait(KeyStore(db).nodes()) if n.seen >= now - NODE_LIVE]
            master.seal_with(sealing_key(master.key_ids, nodes))
            mail = sms_mail(settings.routes, settings.gateway.bounce_address, master, to, content)
            wait(MessageStore(db, master).commit([mail], int(time.time())))

    async def run(reactor: Any) -> None:
        backends, services = build_backends(
            settings.sms, settings.gateway.notification_from, reactor, send_mail
        )
        for service in services:
            service.startService()
        try:
            for backend in backends:
                print(f"{backend.name}: sending to {mask_number(number)} ...", flush=True)
                try:
                    results.append((backend.name, await backend.send(number, text), None))
                except Exception as e:
                    results.append((backend.name, None, e))
        finally:
            for service in services:
                service.stopService()

    react_once(run)
    failed = 0
    for name, reference, error in results:
        if error is None:
            print(f"{name}: OK ({reference})")
        else:
            failed += 1
            kind = "temporary" if classify(error) is SmsTemporaryError else "permanent"
            reason = str(error) if str(error) else type(error).__name__
            print(f"{name}: FAILED ({kind}): {one_line(reason)}")
    if any(name == "smtp" for name, _, error in results if error is None):
        print("smtp: the mail is in the queue; the running gateway delivers it.")
    return 1 if failed else 0


def react_once(main: Callable[[Any], Coroutine[Any, Any, None]]) -> None:
    """Run C{main(reactor)} on the reactor until it finishes (once per process)."""
    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred

    outcome: list[Any] = []

    def start() -> None:
        d = ensureDeferred(main(reactor))
        d.addBoth(outcome.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run()
    if outcome and isinstance(outcome[0], Failure):
        outcome[0].raiseException()


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


def keys_rotate(args: argparse.Namespace) -> int:
    """A new current key first in the ring; the running gateways do the rest."""
    settings = load_settings(args)
    path = settings.store.master_key_file
    try:
        master, previous = rotate_key_file(path)
    except OSError as e:
        raise CommandError(f"{path}: {e.strerror}") from None
    print(f"Wrote master key {master.key_id} to {path} as the current key (mode 600).")
    print(f"The ring before it is kept in {previous}. Back up {path}.")
    print(
        "Copy the file to every other node now (same path, mode 600). Each running gateway "
        "reads it within a minute, seals with the new key once every node holds it, and "
        "re-wraps the message keys of the older keys in batches. Watch: secmail keys status"
    )
    return 0


def keys_status(args: argparse.Namespace) -> int:
    """The ring's keys, what each still protects, and which keys each node holds."""
    settings = load_settings(args)
    master = load_key_file(settings.store.master_key_file)
    now = int(time.time())
    with open_db(args, settings) as db:
        keys = KeyStore(db)
        usage = wait(keys.usage(now))
        nodes = wait(keys.nodes())
    print(f"Key ring {master.path}:")
    print(f"{'KEY ID':<16}  {'ROLE':<8}  {'MESSAGES':>8}  {'SMS':>5}  {'CODES':>5}")

    def line(key_id: str, role: str) -> str:
        rows = usage[key_id].rows if key_id in usage else {}
        codes = rows.get("portal codes and PINs", 0) + rows.get("D-Compose codes", 0)
        return (
            f"{key_id or '(unlabelled)':<16}  {role:<8}  {rows.get('message keys', 0):>8}  "
            f"{rows.get('SMS texts', 0):>5}  {codes:>5}"
        )

    for n, key_id in enumerate(master.key_ids):
        print(line(key_id, "current" if n == 0 else "retired"))
    if "" in usage:
        print(line("", "before 7"))
    missing = [k for k in usage if k and k not in master.key_ids]
    for key_id in missing:
        print(line(key_id, "MISSING"))
    if nodes:
        print()
        print(f"{'NODE':<32}  {'SEALS WITH':<16}  {'SEEN (UTC)':<19}  HOLDS")
        for node in nodes:
            stale = "" if node.seen >= now - NODE_LIVE else "  (not running?)"
            print(
                f"{node.node:<32}  {node.sealing:<16}  {when(node.seen):<19}  "
                f"{', '.join(node.key_ids)}{stale}"
            )
    if missing:
        print(
            f"secmail: rows use key(s) {', '.join(missing)}, which this ring lacks: copy the key "
            "ring file from the node that has them",
            file=sys.stderr,
        )
        return 1
    return 0


def keys_retire(args: argparse.Namespace) -> int:
    """Remove a retired key from the ring, only when nothing uses it."""
    settings = load_settings(args)
    path = settings.store.master_key_file
    master = load_key_file(path)
    if args.key_id not in master.key_ids:
        raise CommandError(f"{path}: no key {args.key_id} in the ring (see: secmail keys status)")
    if args.key_id == master.key_ids[0]:
        raise CommandError(
            f"key {args.key_id} is the current key; rotate first (secmail keys rotate)"
        )
    now = int(time.time())
    with open_db(args, settings) as db:
        keys = KeyStore(db)
        problems = retire_problems(args.key_id, wait(keys.usage(now)), wait(keys.nodes()), now)
    if problems:
        raise CommandError(f"not retired: {problems[0]}")
    remove_from_key_file(path, args.key_id)
    print(f"Removed key {args.key_id} from {path}. Copy the file to every other node.")
    previous = path + ".prev"
    if os.path.exists(previous):
        print(f"{previous} (the ring before the last rotation) still holds it: delete it when")
        print("you no longer need it, and the backups that hold it.")
    return 0


CONFIG_HELP = (
    f"the configuration file (default: {config.DEFAULT_FILE} when it exists, else the "
    "embedded defaults); may stand before or after the command"
)


def parser() -> argparse.ArgumentParser:
    """
    C{--config FILE} is taken before the command and after it, at every level
    (C{secmail --config F sms test N}, C{secmail sms test --config F N}): below the top
    its default is SUPPRESS, so that a level where it is not given keeps the one given above.
    """
    config_option = argparse.ArgumentParser(add_help=False)
    config_option.add_argument(
        "--config", "-c", metavar="FILE", default=argparse.SUPPRESS, help=CONFIG_HELP
    )
    own = [config_option]
    p = argparse.ArgumentParser(prog="secmail", description="secmail gateway administration")
    p.add_argument("--version", action="version", version=f"secmail {secmail.__version__}")
    p.add_argument("--config", "-c", metavar="FILE", default=None, help=CONFIG_HELP)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser(
        "check-config", parents=own, help="validate a configuration file and print its settings"
    )
    c.add_argument("file", nargs="?", default=None, help="the file (default: as --config)")
    c.set_defaults(run=check_config)

    q = sub.add_parser("queue", parents=own, help="list, retry or delete outbound queue rows")
    qsub = q.add_subparsers(dest="action", required=True)
    ql = qsub.add_parser(
        "list", parents=own, help="show every queued delivery, quarantined ones too"
    )
    ql.add_argument(
        "--quarantined", action="store_true", help="only rows whose message cannot be read"
    )
    ql.set_defaults(run=queue_list)
    r = qsub.add_parser(
        "retry",
        parents=own,
        help="try a queued delivery at the next scan (takes it out of quarantine)",
    )
    r.add_argument("id", type=int)
    r.set_defaults(run=queue_retry)
    d = qsub.add_parser("delete", parents=own, help="drop a queued delivery without bouncing it")
    d.add_argument("id", type=int)
    d.set_defaults(run=queue_delete)
    cli_messages.add_queue_show(qsub, own)
    cli_messages.add_messages_command(sub, own)

    ph = sub.add_parser(
        "phones", parents=own, help="the phone directory for addresses without a number"
    )
    phsub = ph.add_subparsers(dest="action", required=True)
    a = phsub.add_parser("add", parents=own, help="add or change an address's number")
    a.add_argument("address")
    a.add_argument(
        "number", help="+358 40 1234567, or 040 1234567 with secure.default_country_code"
    )
    a.set_defaults(run=phones_add)
    phsub.add_parser("list", parents=own, help="show the directory").set_defaults(run=phones_list)
    rm = phsub.add_parser("remove", parents=own, help="remove an address")
    rm.add_argument("address")
    rm.set_defaults(run=phones_remove)

    sm = sub.add_parser("sms", parents=own, help="test the SMS backends, look at the SMS outbox")
    smsub = sm.add_subparsers(dest="action", required=True)
    t = smsub.add_parser(
        "test", parents=own, help="send a test SMS through each configured backend"
    )
    t.add_argument("number")
    t.add_argument("--text", default=None, help="the text (default: a short test message)")
    t.set_defaults(run=sms_test)
    smsub.add_parser("outbox", parents=own, help="show SMS waiting to be sent").set_defaults(
        run=sms_outbox
    )

    k = sub.add_parser("keys", parents=own, help="master key files")
    ksub = k.add_subparsers(dest="action", required=True)
    g = ksub.add_parser("generate", help="write a new master key file")
    g.add_argument("file")
    g.set_defaults(run=keys_generate)
    ro = ksub.add_parser(
        "rotate", parents=own, help="put a new current key in the master key ring file"
    )
    ro.set_defaults(run=keys_rotate)
    st = ksub.add_parser(
        "status", parents=own, help="the ring's keys, what each protects, each node's keys"
    )
    st.set_defaults(run=keys_status)
    rt = ksub.add_parser(
        "retire", parents=own, help="remove a key from the ring once nothing uses it"
    )
    rt.add_argument("key_id", help="the key id (see: secmail keys status)")
    rt.set_defaults(run=keys_retire)

    cli_monitoring.add_commands(sub, own)
    add_settings_commands(sub, own, open_db=open_db, wait=wait)
    tools = CommandTools(BlockingDatabase, wait, CommandError, load_settings)
    add_admin_commands(sub, own, tools)
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
    except BrokenPipeError:
        # The reader went away (secmail messages | head): stop quietly, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
