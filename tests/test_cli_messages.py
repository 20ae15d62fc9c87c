"""secmail messages (search, show, revoke) and secmail queue show, on a store the intake filled."""

from __future__ import annotations

import contextlib
import datetime
import io
import os
import time
from collections.abc import Sequence

from twisted.trial.unittest import SynchronousTestCase, TestCase

from secmail import cli
from secmail.cli_messages import age, local_time, parse_time, system_user
from secmail.store.audit import AuditTrail
from secmail.store.rows import short_id
from secmail.store.trace import MessageTrace
from tests.fixtures.intake import BODY, T0, IntakeFixture


def run(argv: Sequence[str]) -> tuple[int, str, str]:
    """secmail.cli.main(argv) with its exit status, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(list(argv))
    return status, out.getvalue(), err.getvalue()


def write(directory: str, name: str, text: str) -> str:
    path = os.path.join(directory, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


class MessagesCommandTests(IntakeFixture, TestCase):
    mode = "all"

    def setUp(self) -> None:
        super().setUp()
        self.config = write(
            self.data_dir,
            "secmail.toml",
            f'[gateway]\ndata_dir = "{self.data_dir}"\n'
            f'[store]\ndatabase = "sqlite:{self.engine.path}"\n',  # type: ignore[attr-defined]
        )

    def cmd(self, *args: str) -> tuple[int, str, str]:
        return run(["--config", self.config, *args])

    async def letter(self, *recipients: bytes, sender: bytes = b"alice@corp.example") -> str:
        message, _ = await self.receive(list(recipients), sender=sender)
        return message.message_id

    async def test_search_by_recipient(self) -> None:
        """messages --recipient (marked form too) lists the matching message's short id."""
        wanted = await self.letter(b"bob@partner.example.s", b"carol@other.example")
        other = await self.letter(b"dave@partner.example.s")
        for query in ("bob@partner.example.s", "BOB@partner.example", "carol@other.example"):
            status, out, err = self.cmd("messages", "--recipient", query)
            self.assertEqual((status, err), (0, ""))
            header, row = out.splitlines()
            self.assertEqual(header.split()[:3], ["ID", "RECEIVED", "SENDER"])
            self.assertEqual(
                row.split()[:5],
                [
                    short_id(wanted),
                    local_time(T0),
                    "alice@corp.example",
                    "2",
                    "bob@partner.example",
                ],
            )
            self.assertIn("notification queued, queued", row)
            self.assertNotIn(short_id(other), out)
        status, out, _ = self.cmd("messages", "--recipient", "nobody@partner.example")
        self.assertEqual((status, out), (0, "No message matches.\n"))

    async def test_search_by_sender_and_time(self) -> None:
        """--sender and --since/--until (ISO with an offset, a date, a time ago) narrow the list."""
        first = await self.letter(b"bob@partner.example.s")
        self.clock.advance(86400)
        second = await self.letter(b"bob@partner.example.s", sender=b"dave@corp.example")
        status, out, _ = self.cmd("messages", "--sender", "DAVE@corp.example")
        self.assertEqual([line.split()[0] for line in out.splitlines()[1:]], [short_id(second)])
        day_two = datetime.datetime.fromtimestamp(T0 + 86400, datetime.UTC).isoformat()
        status, out, _ = self.cmd("messages", "--since", day_two)
        self.assertEqual([line.split()[0] for line in out.splitlines()[1:]], [short_id(second)])
        status, out, _ = self.cmd("messages", "--until", day_two, "--limit", "1")
        self.assertEqual(out.splitlines()[1].split()[0], short_id(second))
        self.assertIn("--limit N shows more", out)
        status, out, _ = self.cmd("messages", "--since", "3d")  # the letters are from 2023
        self.assertEqual(out, "No message matches.\n")
        status, out, _ = self.cmd("messages", "--until", "1d")
        self.assertEqual(len(out.splitlines()), 3)
        self.assertIn(short_id(first), out)

    async def test_show(self) -> None:
        """messages show: each recipient's level, state and trail with times; never content."""
        message_id = await self.letter(b"bob@partner.example.0401234567.s", b"carol@other.example")
        status, out, _ = self.cmd("messages", "show", short_id(message_id))
        self.assertEqual(status, 0)
        self.assertIn(f"Message   {message_id} ({short_id(message_id)})", out)
        self.assertIn(f"Received  {local_time(T0)}", out)
        self.assertIn("Sender    <alice@corp.example>", out)
        self.assertIn(
            "Recipient bob@partner.example\n  level registered, state notification queued", out
        )
        self.assertIn("Recipient carol@other.example\n  level relay, state queued", out)
        self.assertIn(f"  {local_time(T0)}  received: from <alice@corp.example>", out)
        self.assertIn(f"  {local_time(T0)}  notification queued: registered for bob@", out)
        for secret in ("Merger", BODY.decode(), "0401234567"):
            self.assertNotIn(secret, out)

    async def test_show_unknown_or_bad_id(self) -> None:
        """An unknown id or a malformed one is a one-line error and exit status 1."""
        await self.letter(b"bob@partner.example.s")
        for given, words in (
            ("0123456789", "no message has the id 0123456789"),
            ("xyz", "not a message id"),
        ):
            status, out, err = self.cmd("messages", "show", given)
            self.assertEqual((status, out), (1, ""))
            self.assertEqual(len(err.splitlines()), 1)
            self.assertIn(words, err)

    def test_bad_arguments(self) -> None:
        """A time or a limit that is not one: argparse's usage error naming it, exit 2."""
        for args, words in (
            (("--since", "yesterday"), "'yesterday' is not a time"),
            (("--limit", "0"), "'0' is not a number of messages"),
        ):
            err = io.StringIO()
            with self.assertRaises(SystemExit) as e, contextlib.redirect_stderr(err):
                cli.main(["--config", self.config, "messages", *args])
            self.assertEqual(e.exception.code, 2)
            self.assertIn(words, err.getvalue().splitlines()[-1])

    async def test_revoke(self) -> None:
        """messages revoke withdraws the letters, says so, and writes the audit row."""
        message_id = await self.letter(b"bob@partner.example.s")
        status, out, err = self.cmd("messages", "revoke", short_id(message_id))
        self.assertEqual((status, err), (0, ""))
        self.assertIn("Withdrawn: bob@partner.example (letter)", out)
        self.assertIn("its content is deleted", out)
        [found] = await MessageTrace(self.db).search(message_id=message_id)
        self.assertEqual(found.recipients[0].state, "revoked")
        [row] = await AuditTrail(self.db).since(0)
        self.assertEqual((row.admin, row.address, row.action), (system_user(), "local", "revoked"))
        self.assertLessEqual(abs(row.at - time.time()), 60)
        status, out, _ = self.cmd("messages", "revoke", message_id)
        self.assertEqual(status, 0)
        self.assertIn("already withdrawn", out)

    async def test_revoke_one_recipient(self) -> None:
        """--recipient withdraws from one; a relayed recipient cannot be withdrawn."""
        message_id = await self.letter(
            b"bob@partner.example.s", b"eve@partner.example.s", b"carol@other.example"
        )
        status, out, _ = self.cmd(
            "messages", "revoke", message_id, "--recipient", "eve@partner.example.s"
        )
        self.assertEqual(status, 0)
        self.assertIn("Withdrawn: eve@partner.example", out)
        self.assertNotIn("bob@", out)
        self.assertIn("kept for the recipients who can still read it", out)
        # --recipient before "revoke" counts the same (it never widens to every recipient).
        status, out, _ = self.cmd(
            "messages", "--recipient", "bob@partner.example", "revoke", message_id
        )
        self.assertEqual(status, 0)
        self.assertIn("Withdrawn: bob@partner.example", out)
        self.assertIn("its content is deleted when its relayed copy has been delivered", out)
        status, out, err = self.cmd(
            "messages", "revoke", message_id, "--recipient", "carol@other.example"
        )
        self.assertEqual(status, 1)
        self.assertIn("carol@other.example is not a secure recipient", err)

    async def test_queue_show_and_list(self) -> None:
        """queue show prints one row whole; queue list has sender, recipients and age."""
        message_id = await self.letter(b"carol@other.example")
        [item] = await self.rows("relay")
        status, out, _ = self.cmd("queue", "show", str(item.id))
        self.assertEqual(status, 0)
        for line in (
            f"Row:         {item.id}",
            f"Message:     {short_id(message_id)}",
            "Kind:        relay",
            "State:       queued",
            "Sender:      <alice@corp.example>",
            "Recipients:  carol@other.example",
            f"Route:       {item.route}",
            "Attempts:    0",
            "Lease:       -",
            "Quarantined: -",
        ):
            self.assertIn(line + "\n", out)
        status, out, _ = self.cmd("queue", "list")
        row = out.splitlines()[1]
        self.assertIn(
            f"{age(int(time.time()) - T0)}  <alice@corp.example> -> carol@other.example via", row
        )
        status, _, err = self.cmd("queue", "show", "999")
        self.assertEqual(status, 1)
        self.assertIn("queue row 999 does not exist", err)

    def test_no_database(self) -> None:
        """Without the gateway's database the command says so and makes none."""
        missing = os.path.join(self.data_dir, "none.sqlite")
        config = write(self.data_dir, "other.toml", f'[store]\ndatabase = "sqlite:{missing}"\n')
        status, _, err = run(["messages", "--config", config])
        self.assertEqual(status, 1)
        self.assertIn("no secmail database", err)
        self.assertFalse(os.path.exists(missing))


class TimeTests(SynchronousTestCase):
    def test_parse_time(self) -> None:
        """ISO times (with an offset or local), dates (first or last second) and times ago."""
        self.assertEqual(parse_time("2023-11-14T22:13:20+00:00"), T0)
        self.assertEqual(parse_time("2023-11-14T22:13:20Z"), T0)
        start = int(datetime.datetime(2023, 11, 14).timestamp())
        self.assertEqual(parse_time("2023-11-14"), start)
        self.assertEqual(parse_time("2023-11-14", end_of_day=True), start + 86399)
        self.assertEqual(parse_time("2h", now=T0), T0 - 7200)
        self.assertEqual(parse_time("3d", now=T0), T0 - 3 * 86400)
        self.assertEqual(parse_time("30m", now=T0), T0 - 1800)

    def test_local_time_round_trips(self) -> None:
        """The shown time is ISO 8601 with the local offset, and means the same instant."""
        shown = local_time(T0)
        self.assertRegex(shown, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$")
        self.assertEqual(datetime.datetime.fromisoformat(shown).timestamp(), T0)

    def test_age(self) -> None:
        """Ages are short: seconds, minutes, hours, days."""
        self.assertEqual([age(s) for s in (5, 125, 7300, 200000)], ["5s", "2m", "2h", "2d"])
