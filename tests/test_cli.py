"""The secmail admin command: check-config, queue list/retry/delete, keys."""

from __future__ import annotations

import contextlib
import io
import os
import sqlite3
import stat
import tempfile
import time
from collections.abc import Sequence

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from secmail import cli, config
from secmail.crypto import MasterKey, generate_key_file, load_key_file
from secmail.rotation import KeyRotation
from secmail.store.database import Database
from secmail.store.engines import SqliteEngine
from secmail.store.keys import KeyStore
from secmail.store.messages import MessageStore, NewDelivery, NewMessage, new_id
from secmail.store.sms import SmsStore, queue_sms_txn
from secmail.store.spool import SealedBytes

EXAMPLE_CONFIG = os.path.join(os.path.dirname(__file__), os.pardir, "etc", "secmail.toml")


def run(argv: Sequence[str]) -> tuple[int, str, str]:
    """secmail.cli.main(argv) with its exit status, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(list(argv))
    return status, out.getvalue(), err.getvalue()


def make_database(path: str) -> None:
    """The database as the gateway's first start leaves it (the commands make none)."""
    Database(SqliteEngine(path), None).prepare_blocking()


def write(directory: str, name: str, text: str) -> str:
    path = os.path.join(directory, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


class CheckConfigTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="secmail-cli-")

    def test_example_config(self) -> None:
        """The shipped example configuration is valid and its settings are printed."""
        status, out, err = run(["check-config", EXAMPLE_CONFIG])
        self.assertEqual(status, 0)
        lines = out.splitlines()
        self.assertIn("gateway.hostname = 'localhost'", lines)
        self.assertIn("routes.incoming = 'smtp://127.0.0.1:25'", lines)
        self.assertIn("secure.mode = 'marked'", lines)
        self.assertIn("queue.retry_max = 4000", lines)
        self.assertTrue(err.strip().endswith(": OK"))

    def test_password_masked(self) -> None:
        """A database password in the configuration is not printed."""
        path = write(
            self.dir,
            "pg.toml",
            '[store]\ndatabase = "postgresql://secmail:hunter2@db.example/secmail"\n'
            f'[gateway]\ndata_dir = "{self.dir}"\n',
        )
        status, out, _ = run(["check-config", path])
        self.assertEqual(status, 0)
        self.assertNotIn("hunter2", out)
        self.assertIn("store.database = 'postgresql://secmail:***@db.example/secmail'", out)

    def test_bad_value(self) -> None:
        """A bad value gives one line naming the key, and exit status 1."""
        path = write(self.dir, "bad.toml", "[smtp]\nmax_message_size = -5\n")
        status, out, err = run(["check-config", path])
        self.assertEqual(status, 1)
        self.assertEqual(out, "")
        [line] = err.splitlines()
        self.assertTrue(line.startswith("secmail: smtp.max_message_size: "), line)
        self.assertIn("greater than 0", line)

    def test_unknown_key(self) -> None:
        """A misspelt key is named, with the keys that section knows."""
        path = write(self.dir, "typo.toml", "[queue]\nretry_intial = 60\n")
        status, _, err = run(["check-config", path])
        self.assertEqual(status, 1)
        [line] = err.splitlines()
        self.assertTrue(line.startswith("secmail: queue.retry_intial: unknown key"), line)

    def test_missing_file(self) -> None:
        """A configuration file that does not exist is one clear line, exit status 1."""
        path = os.path.join(self.dir, "nope.toml")
        status, _, err = run(["check-config", path])
        self.assertEqual(status, 1)
        self.assertEqual(err, f"secmail: {path}: configuration file not found\n")


class KeysTests(SynchronousTestCase):
    def test_generate(self) -> None:
        """keys generate writes a loadable key file readable only by its owner."""
        path = os.path.join(tempfile.mkdtemp(prefix="secmail-keys-"), "master.key")
        status, out, _ = run(["keys", "generate", path])
        self.assertEqual(status, 0)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        key = load_key_file(path)
        self.assertIn(key.key_id, out)

    def test_refuses_overwrite(self) -> None:
        """keys generate never overwrites an existing master key."""
        path = os.path.join(tempfile.mkdtemp(prefix="secmail-keys-"), "master.key")
        self.assertEqual(run(["keys", "generate", path])[0], 0)
        with open(path, "rb") as f:
            before = f.read()
        status, _, err = run(["keys", "generate", path])
        self.assertEqual(status, 1)
        self.assertEqual(
            err, f"secmail: {path}: already exists; refusing to overwrite a master key\n"
        )
        with open(path, "rb") as f:
            self.assertEqual(f.read(), before)


class KeyRotationCommandTests(TestCase):
    """keys rotate, status and retire on the ring file and database a running gateway uses."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="secmail-cli-")
        self.db_path = os.path.join(self.dir, "secmail.sqlite")
        self.key_path = os.path.join(self.dir, "master.key")
        self.config = write(
            self.dir,
            "secmail.toml",
            f'[gateway]\ndata_dir = "{self.dir}"\nhostname = "gw.example"\n'
            f'[store]\ndatabase = "sqlite:{self.db_path}"\nmaster_key_file = "{self.key_path}"\n',
        )
        self.db = Database(SqliteEngine(self.db_path), reactor)
        self.db.prepare_blocking()
        self.db.start()
        self.addCleanup(self.db.stop)
        self.master = generate_key_file(self.key_path)
        self.store = MessageStore(self.db, self.master)

    def keys(self, *args: str) -> tuple[int, str, str]:
        return run(["keys", *args, "--config", self.config])

    async def commit(self, master: MasterKey) -> None:
        message = NewMessage(SealedBytes(master, new_id(), b"x"), "mail", "alice@corp.example")
        await MessageStore(self.db, master).commit([message], now=int(time.time()))

    async def test_rotate_status_retire(self) -> None:
        """Rotate, then retire is refused while messages use the old key and works after."""
        old = self.master.key_id
        await self.commit(self.master)
        await self.commit(self.master)
        status, out, _ = self.keys("rotate")
        self.assertEqual(status, 0)
        new = load_key_file(self.key_path).key_id
        self.assertIn(f"Wrote master key {new} to {self.key_path}", out)
        self.assertIn("Copy the file to every other node", out)

        status, out, _ = self.keys("status")
        self.assertEqual(status, 0)
        lines = out.splitlines()
        self.assertEqual(lines[0], f"Key ring {self.key_path}:")
        self.assertEqual(lines[2].split(), [new, "current", "0", "0", "0"])
        self.assertEqual(lines[3].split(), [old, "retired", "2", "0", "0"])

        status, _, err = self.keys("retire", old)
        self.assertEqual(status, 1)
        self.assertIn(f"secmail: not retired: key {old} still protects 2 message keys", err)
        self.assertEqual(load_key_file(self.key_path).key_ids, [new, old])
        status, _, err = self.keys("retire", new)
        self.assertEqual(status, 1)
        self.assertIn("is the current key; rotate first", err)
        status, _, err = self.keys("retire", "0123456789abcdef")
        self.assertEqual(status, 1)
        self.assertIn("no key 0123456789abcdef in the ring", err)

        # The running gateway picks up the file and re-wraps.
        rotation = KeyRotation(self.master, KeyStore(self.db), reactor, "gw.example/node1")
        self.assertEqual(await rotation.run_once(), 2)
        status, out, _ = self.keys("status")
        self.assertIn(f"{old}  retired          0", out)
        self.assertIn(f"gw.example/node1                  {new}", out)

        status, out, _ = self.keys("retire", old)
        self.assertEqual(status, 0, out)
        self.assertIn(f"Removed key {old} from {self.key_path}", out)
        self.assertEqual(load_key_file(self.key_path).key_ids, [new])

    async def test_status_names_missing_key(self) -> None:
        """Rows under a key this ring lacks: status lists it as MISSING and exits 1."""
        stranger = MasterKey(os.urandom(32))
        await self.commit(stranger)
        status, out, err = self.keys("status")
        self.assertEqual(status, 1)
        self.assertIn(f"{stranger.key_id}  MISSING", out)
        self.assertIn(f"rows use key(s) {stranger.key_id}, which this ring lacks", err)

    def test_rotate_without_key_file(self) -> None:
        """Rotating a ring file that is not there fails with one line naming it."""
        os.remove(self.key_path)
        status, _, err = self.keys("rotate")
        self.assertEqual(status, 1)
        self.assertEqual(
            err,
            f"secmail: store.master_key_file: file '{self.key_path}' not found "
            "(create one with: secmail keys generate FILE)\n",
        )


class QueueCommandTests(TestCase):
    """The queue commands on the SQLite file a running gateway (here: a MessageStore) uses."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="secmail-cli-")
        self.db_path = os.path.join(self.dir, "secmail.sqlite")
        self.config = write(
            self.dir,
            "secmail.toml",
            f'[gateway]\ndata_dir = "{self.dir}"\nhostname = "gw.example"\n'
            f'[store]\ndatabase = "sqlite:{self.db_path}"\n',
        )
        self.db = Database(SqliteEngine(self.db_path), reactor)
        self.db.prepare_blocking()
        self.db.start()
        self.addCleanup(self.db.stop)
        self.master = MasterKey(os.urandom(32))
        self.store = MessageStore(self.db, self.master)

    def queue(self, *args: str) -> tuple[int, str, str]:
        return run(["queue", "--config", self.config, *args])

    async def enqueue(self, recipients: tuple[str, ...], next_attempt_in: int = 0) -> int:
        message = NewMessage(
            content=SealedBytes(self.master, new_id(), b"Subject: x\r\n\r\nbody\r\n"),
            kind="mail",
            sender="alice@corp.example",
            deliveries=[
                NewDelivery(
                    "relay", "alice@corp.example", recipients, "mx", "partner.example", "alice"
                )
            ],
        )
        now = int(time.time())
        [queue_id] = await self.store.commit([message], now=now)
        if next_attempt_in:
            [item] = [i for i in await self.store.queue_list() if i.id == queue_id]
            await self.store.defer(
                item, recipients, now + next_attempt_in, "451 4.7.1 greylisted", now
            )
        return queue_id

    async def test_list_masks_sms_numbers(self) -> None:
        """An SMS sent by e-mail shows its number masked, in the row and in its last error."""
        message = NewMessage(
            content=SealedBytes(self.master, new_id(), b"PIN 424242\r\n"),
            kind="sms",
            sender="bounces@gw.example",
            deliveries=[
                NewDelivery(
                    "sms",
                    "bounces@gw.example",
                    ("358401234567@sms.example",),
                    "mx",
                    "sms.example",
                    "",
                    about="sms-by-mail",
                )
            ],
        )
        now = int(time.time())
        [queue_id] = await self.store.commit([message], now=now)
        [item] = [i for i in await self.store.queue_list() if i.id == queue_id]
        await self.store.defer(
            item, item.recipients, now + 60, "451 <358401234567@sms.example> try later", now
        )
        status, out, _ = self.queue("list")
        self.assertEqual(status, 0)
        self.assertIn("+358 40 *** **67@sms.example via mx", out)
        self.assertIn("451 <+358 40 *** **67@sms.example> try later", out)
        self.assertNotIn("358401234567", out)
        events = await self.store.events("sms-by-mail")
        self.assertTrue(events)
        self.assertNotIn("358401234567", repr(events))

    def test_list_empty(self) -> None:
        """queue list on an empty queue says so."""
        status, out, _ = self.queue("list")
        self.assertEqual(status, 0)
        self.assertEqual(out, "The queue is empty.\n")

    async def test_list(self) -> None:
        """queue list shows each row's id, kind, recipients, route and last error."""
        first = await self.enqueue(("bob@partner.example",))
        second = await self.enqueue(("carol@partner.example", "dan@partner.example"), 600)
        status, out, _ = self.queue("list")
        self.assertEqual(status, 0)
        header, *rows = out.splitlines()
        self.assertIn("ID", header)
        self.assertIn("RECIPIENTS", header)
        self.assertEqual(len(rows), 3)  # two rows, the second with its last error
        self.assertEqual(rows[0].split()[:2], [str(first), "relay"])
        self.assertIn("bob@partner.example via mx", rows[0])
        self.assertEqual(rows[1].split()[:2], [str(second), "relay"])
        self.assertIn("carol@partner.example, dan@partner.example via mx", rows[1])
        self.assertEqual(rows[1].split()[4], "1")  # tries
        self.assertEqual(rows[2].strip(), "451 4.7.1 greylisted")

    async def test_retry(self) -> None:
        """queue retry makes a deferred row due now."""
        queue_id = await self.enqueue(("bob@partner.example",), 3600)
        status, out, _ = self.queue("retry", str(queue_id))
        self.assertEqual(status, 0)
        self.assertIn(f"Queue row {queue_id}", out)
        [item] = await self.store.queue_list()
        self.assertLessEqual(item.next_attempt, int(time.time()))
        self.assertEqual(len(await self.store.claim_due("gw", int(time.time()), 60, 5)), 1)

    async def test_delete(self) -> None:
        """queue delete removes the row (and its message) without a bounce."""
        queue_id = await self.enqueue(("bob@partner.example",))
        kept = await self.enqueue(("carol@partner.example",))
        status, out, _ = self.queue("delete", str(queue_id))
        self.assertEqual(status, 0)
        self.assertIn(f"Queue row {queue_id} deleted", out)
        self.assertEqual([i.id for i in await self.store.queue_list()], [kept])
        self.assertEqual(await self.store.count_messages(), 1)

    async def test_unknown_id(self) -> None:
        """retry or delete of a row that does not exist fails with exit status 1 and says so."""
        await self.enqueue(("bob@partner.example",))
        for action in ("retry", "delete"):
            status, out, err = self.queue(action, "999")
            self.assertEqual(status, 1)
            self.assertEqual(out, "")
            self.assertEqual(
                err, "secmail: queue row 999 does not exist (see: secmail queue list)\n"
            )
        self.assertEqual(len(await self.store.queue_list()), 1)

    async def quarantine(self, recipients: tuple[str, ...]) -> int:
        """A row the gateway set aside because its message could not be read."""
        queue_id = await self.enqueue(recipients)
        [item] = [i for i in await self.store.queue_list() if i.id == queue_id]
        reason = f"the message cannot be read: message {item.message_id}: its key does not unwrap"
        await self.store.quarantine(item, recipients, reason, None, int(time.time()))
        return queue_id

    async def test_list_shows_quarantined_rows(self) -> None:
        """queue list shows a quarantined row's state and reason, and counts them."""
        queued = await self.enqueue(("bob@partner.example",))
        damaged = await self.quarantine(("carol@partner.example",))
        status, out, _ = self.queue("list")
        self.assertEqual(status, 0)
        header, *rows = out.splitlines()
        self.assertIn("STATE", header)
        self.assertEqual(rows[0].split()[:2], [str(queued), "relay"])
        self.assertIn(" queued ", rows[0])
        [line] = [r for r in rows if r.split()[0] == str(damaged)]
        self.assertEqual(line.split()[1:5], ["relay", "-", "0", "quarantined"])
        reason = rows[rows.index(line) + 1].strip()
        self.assertTrue(reason.startswith("quarantined "), reason)
        self.assertIn("UTC: the message cannot be read:", reason)
        self.assertIn("its key does not unwrap", reason)
        self.assertTrue(rows[-1].startswith("Quarantined: 1 row. "), rows[-1])
        self.assertIn("secmail queue retry ID", rows[-1])

        status, out, _ = self.queue("list", "--quarantined")
        self.assertEqual(status, 0)
        ids = [r.split()[0] for r in out.splitlines()[1:] if r[:6].strip()]
        self.assertEqual(ids, [str(damaged), "Quarantined:"])  # the row, then the count line

    async def test_list_quarantined_none(self) -> None:
        """queue list --quarantined says so when no row is quarantined."""
        await self.enqueue(("bob@partner.example",))
        status, out, _ = self.queue("list", "--quarantined")
        self.assertEqual((status, out), (0, "No row is quarantined.\n"))

    async def test_retry_releases_quarantine(self) -> None:
        """queue retry takes a quarantined row out of quarantine: the gateway claims it again."""
        damaged = await self.quarantine(("bob@partner.example",))
        self.assertEqual(await self.store.claim_due("gw", int(time.time()), 60, 5), [])
        status, out, _ = self.queue("retry", str(damaged))
        self.assertEqual(status, 0)
        self.assertIn(f"Queue row {damaged} is out of quarantine", out)
        [item] = await self.store.claim_due("gw", int(time.time()), 60, 5)
        self.assertEqual((item.id, item.state), (damaged, "queued"))
        self.assertEqual(await self.store.count_quarantined(), 0)

    async def test_delete_quarantined(self) -> None:
        """queue delete removes a quarantined row and its message."""
        damaged = await self.quarantine(("bob@partner.example",))
        status, out, _ = self.queue("delete", str(damaged))
        self.assertEqual(status, 0)
        self.assertIn(f"Queue row {damaged} deleted", out)
        self.assertEqual(await self.store.queue_list(), [])
        self.assertEqual(await self.store.count_messages(), 0)

    def test_bad_config(self) -> None:
        """The queue commands report a bad configuration file in one line."""
        bad = write(self.dir, "bad.toml", "[store]\ndatabase = 'mysql://x'\n")
        status, _, err = run(["queue", "--config", bad, "list"])
        self.assertEqual(status, 1)
        [line] = err.splitlines()
        self.assertTrue(line.startswith("secmail: store.database: "), line)

    def test_unreachable_database(self) -> None:
        """A database that does not answer is reported in one line, without a traceback."""
        cfg = write(
            self.dir, "down.toml", "[store]\ndatabase = 'postgresql://nobody@127.0.0.1:1/none'\n"
        )
        status, out, err = run(["queue", "--config", cfg, "list"])
        self.assertEqual(status, 1)
        self.assertEqual(out, "")
        [line] = err.splitlines()
        self.assertTrue(line.startswith("secmail: store.database: "), line)
        self.assertNotIn("Traceback", err)


class PhonesCommandTests(SynchronousTestCase):
    """secmail phones add|list|remove on the gateway's database."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="secmail-cli-")
        self.config = write(
            self.dir,
            "secmail.toml",
            f'[gateway]\ndata_dir = "{self.dir}"\n[secure]\ndefault_country_code = "358"\n',
        )
        make_database(os.path.join(self.dir, "secmail.sqlite"))

    def phones(self, *args: str) -> tuple[int, str, str]:
        return run(["phones", "--config", self.config, *args])

    def test_changes_are_in_the_admins_audit_trail(self) -> None:
        """Each change made with the command is an audit row: who ran it, 'local', what."""
        self.phones("add", "bob@partner.example", "+358 40 123 4567")
        self.phones("remove", "bob@partner.example")
        self.phones("remove", "bob@partner.example")  # refused: no row
        with sqlite3.connect(os.path.join(self.dir, "secmail.sqlite")) as conn:
            rows = conn.execute(
                "SELECT admin, address, action FROM admin_audit ORDER BY id"
            ).fetchall()
        self.assertEqual(
            [(address, action) for _, address, action in rows],
            [("local", "phone number added"), ("local", "phone number removed")],
        )
        self.assertTrue(all(admin for admin, _, _ in rows))

    def test_add_change_list_remove(self) -> None:
        self.assertEqual(self.phones("list"), (0, "The phone directory is empty.\n", ""))
        status, out, _ = self.phones("add", "Bob@Partner.Example", "+358 40 123 4567")
        self.assertEqual((status, out), (0, "Added: bob@partner.example +358401234567\n"))
        status, out, _ = self.phones("add", "bob@partner.example", "040-765 4321")
        self.assertEqual((status, out), (0, "Changed: bob@partner.example +358407654321\n"))
        self.phones("add", "carol@partner.example", "0046 70 123 45 67")
        status, out, _ = self.phones("list")
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["ADDRESS", "NUMBER", "CHANGED", "(UTC)"])
        self.assertEqual(
            [line.split()[:2] for line in lines[1:]],
            [["bob@partner.example", "+358407654321"], ["carol@partner.example", "+46701234567"]],
        )
        self.assertEqual(
            self.phones("remove", "BOB@partner.example")[:2], (0, "Removed: bob@partner.example\n")
        )
        status, _, err = self.phones("remove", "bob@partner.example")
        self.assertEqual(status, 1)
        self.assertEqual(
            err,
            "secmail: bob@partner.example is not in the phone directory "
            "(see: secmail phones list)\n",
        )

    def test_bad_input_is_named(self) -> None:
        for address, number, message in [
            ("bob@partner.example", "12345", "'12345': write the number with its country code"),
            ("bob@partner.example", "+358 12", "'+358 12' is not a valid phone number"),
            ("bob@partner.example", "+0 40 123", "a country code does not start with 0"),
            ("bobpartner.example", "0401234567", "bobpartner.example must contain exactly one @"),
        ]:
            status, out, err = self.phones("add", address, number)
            self.assertEqual((status, out), (1, ""), number)
            self.assertIn(message, err, number)
            self.assertEqual(len(err.splitlines()), 1)
        self.assertEqual(self.phones("list")[1], "The phone directory is empty.\n")


class SmsOutboxCommandTests(TestCase):
    async def test_outbox_lists_masked_numbers_never_texts(self) -> None:
        directory = tempfile.mkdtemp(prefix="secmail-cli-")
        db_path = os.path.join(directory, "secmail.sqlite")
        config = write(
            directory,
            "secmail.toml",
            f'[gateway]\ndata_dir = "{directory}"\n[store]\ndatabase = "sqlite:{db_path}"\n',
        )
        make_database(db_path)
        self.assertEqual(
            run(["sms", "--config", config, "outbox"])[1], "The SMS outbox is empty.\n"
        )
        db = Database(SqliteEngine(db_path), reactor)
        db.prepare_blocking()
        db.start()
        self.addCleanup(db.stop)
        master = MasterKey(os.urandom(32))
        store = MessageStore(db, master)
        message_id = new_id()
        await store.commit(
            [NewMessage(SealedBytes(master, message_id, b"x\r\n"), "mail", "a@corp.example")],
            now=int(time.time()),
        )
        sms = SmsStore(db, os.urandom(32))
        now = int(time.time())
        await db.run(
            lambda txn: queue_sms_txn(
                txn,
                sms.sealer,
                message_id=message_id,
                envelope_id=None,
                number="+358401234567",
                text="PIN 424242",
                now=now,
                expires=now + 600,
            )
        )
        [item] = await sms.claim("node", now, 60, 1)
        await sms.retry(item, now + 10, "modem: +CMS ERROR 500: unknown error (temporary)")
        status, out, _ = run(["sms", "--config", config, "outbox"])
        self.assertEqual(status, 0)
        self.assertIn("+358 40 *** **67", out)
        self.assertIn("modem: +CMS ERROR 500", out)
        self.assertNotIn("424242", out)
        self.assertNotIn("+358401234567", out)

    def test_sms_test_needs_a_backend(self) -> None:
        status, out, err = run(["sms", "test", "+358401234567"])
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, "secmail: sms.order is empty: no SMS backend is configured\n")


class CheckConfigSmsTests(SynchronousTestCase):
    def test_pin_text_longer_than_one_sms(self) -> None:
        directory = tempfile.mkdtemp(prefix="secmail-cli-")
        path = write(
            directory,
            "sms.toml",
            '[portal]\nbrand_name = "Łódź Bank"\n'
            '[sms]\norder = ["smtp"]\n[sms.smtp]\naddress = "{to}@sms.example"\n',
        )
        status, out, err = run(["check-config", path])
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(
            err,
            "secmail: portal.brand_name: the en PIN SMS would be 72 characters and one SMS "
            "holds 70 with letters outside GSM 7-bit; shorten brand_name or set "
            "sms.pin_text.en\n",
        )


class VersionTests(SynchronousTestCase):
    def test_version(self) -> None:
        """secmail --version prints the package's version and exits 0."""
        import secmail

        out = io.StringIO()
        with contextlib.redirect_stdout(out), self.assertRaises(SystemExit) as raised:
            cli.main(["--version"])
        self.assertEqual(raised.exception.code, 0)
        self.assertEqual(out.getvalue().strip(), f"secmail {secmail.__version__}")


class ConfigOptionTests(SynchronousTestCase):
    """--config in the same place everywhere, one default file, and no database made."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="secmail-cli-")
        self.db_path = os.path.join(self.dir, "secmail.sqlite")
        self.config = write(
            self.dir,
            "secmail.toml",
            f'[gateway]\ndata_dir = "{self.dir}"\n[secure]\ndefault_country_code = "358"\n',
        )

    def test_missing_database_is_named_not_made(self) -> None:
        """A command that reads the queue, directory or outbox makes no new empty database."""
        for command in (["queue", "list"], ["phones", "list"], ["sms", "outbox"]):
            status, out, err = run(["--config", self.config, *command])
            self.assertEqual((status, out), (1, ""), command)
            self.assertEqual(
                err,
                f"secmail: no secmail database at sqlite:{self.db_path} (store.database from "
                f"{self.config}): start the gateway once with this configuration, or name the "
                "file it runs with: secmail --config FILE ...\n",
            )
            self.assertFalse(os.path.exists(self.db_path), command)

    def test_config_before_or_after_the_command(self) -> None:
        """--config FILE works before the command, after it and after the subcommand."""
        make_database(self.db_path)
        run(["phones", "--config", self.config, "add", "bob@partner.example", "0401234567"])
        for argv in (
            ["--config", self.config, "phones", "list"],
            ["-c", self.config, "phones", "list"],
            ["phones", "--config", self.config, "list"],
            ["phones", "list", "--config", self.config],
            ["phones", "list", "-c", self.config],
        ):
            status, out, err = run(argv)
            self.assertEqual((status, err), (0, ""), argv)
            self.assertIn("bob@partner.example", out, argv)

    def test_sms_test_takes_config_after_the_subcommand(self) -> None:
        """secmail sms test --config F NUMBER reads F (no usage error)."""
        for argv in (
            ["sms", "test", "--config", self.config, "0401234567"],
            ["sms", "test", "0401234567", "--config", self.config],
        ):
            self.assertEqual(
                run(argv), (1, "", "secmail: sms.order is empty: no SMS backend is configured\n")
            )

    def test_check_config_positional_or_option(self) -> None:
        """check-config takes the file as its argument or as --config, in either place."""
        for argv in (
            ["check-config", self.config],
            ["check-config", "--config", self.config],
            ["--config", self.config, "check-config"],
        ):
            status, out, err = run(argv)
            self.assertEqual((status, err), (0, f"{self.config}: OK\n"), argv)
            self.assertIn(f"gateway.data_dir = '{self.dir}'", out.splitlines())

    def test_default_file(self) -> None:
        """Without --config the default file is read when it exists, else the embedded defaults."""
        self.patch(config, "DEFAULT_FILE", self.config)
        make_database(self.db_path)
        run(["phones", "add", "bob@partner.example", "0401234567"])
        status, out, _ = run(["phones", "list"])
        self.assertEqual(status, 0)
        self.assertIn("bob@partner.example", out)
        self.assertEqual(run(["check-config"])[2], f"{self.config}: OK\n")

        self.patch(config, "DEFAULT_FILE", os.path.join(self.dir, "absent.toml"))
        status, _, err = run(["check-config"])
        self.assertEqual((status, err), (0, "(embedded defaults): OK\n"))
        cwd = os.getcwd()
        os.chdir(self.dir)
        self.addCleanup(os.chdir, cwd)
        status, _, err = run(["queue", "list"])
        self.assertEqual(status, 1)
        self.assertIn("(store.database from the embedded defaults)", err)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "secmail-data")))
