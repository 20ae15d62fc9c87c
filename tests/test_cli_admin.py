"""secmail admin add|list|remove|token, on a gateway that never started and on one that did."""

from __future__ import annotations

import contextlib
import io
import os
import re
import stat
import tempfile
import time
from collections.abc import Sequence
from unittest import mock

import pyotp
from twisted.trial.unittest import TestCase

from secmail import cli
from secmail.admin.accounts import AccountError, AdminAccounts, SignIn
from secmail.cli_admin import read_password
from secmail.cli_db import BlockingDatabase
from secmail.cli_db import wait as _wait
from secmail.crypto import DerivedKeys, load_key_file
from secmail.store.admins import AdminStore
from secmail.store.audit import AuditTrail

PASSWORD = "correct horse battery staple"


def run(argv: Sequence[str], stdin: str = "") -> tuple[int, str, str]:
    """secmail.cli.main(argv) with standard input; its exit status, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with (
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        mock.patch("sys.stdin", io.StringIO(stdin)),
    ):
        status = cli.main(list(argv))
    return status, out.getvalue(), err.getvalue()


class _Now:
    def seconds(self) -> float:
        return time.time()


class AdminCommandTests(TestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="secmail-cli-admin-")
        self.data = os.path.join(self.dir, "data")
        self.config = os.path.join(self.dir, "secmail.toml")
        with open(self.config, "w", encoding="utf-8") as f:
            f.write(f'[gateway]\ndata_dir = "{self.data}"\nhostname = "gw.example"\n')
        self.db_path = os.path.join(self.data, "secmail.sqlite")

    def admin(self, *args: str, stdin: str = "") -> tuple[int, str, str]:
        return run(["admin", *args, "--config", self.config], stdin)

    def test_first_admin_before_the_gateway_ever_started(self) -> None:
        """add makes the data directory, database and master key; prints the otpauth URI on a
        line of its own and says which database it wrote; the admin can then sign in."""
        status, out, err = self.admin("add", "alice", "--role", "admin", stdin=PASSWORD + "\n")
        self.assertEqual((status, err), (0, ""))
        lines = out.splitlines()
        uris = [line for line in lines if line.startswith("otpauth://totp/")]
        self.assertEqual(len(uris), 1, out)
        self.assertIn(f"sqlite:{self.db_path}", out)
        self.assertNotIn(PASSWORD, out)
        self.assertEqual(stat.S_IMODE(os.stat(self.db_path).st_mode) & 0o077, 0)
        secret = pyotp.parse_uri(uris[0]).secret
        master = load_key_file(os.path.join(self.data, "master.key"))
        blocking = BlockingDatabase("sqlite:" + self.db_path)
        self.addCleanup(blocking.stop)
        accounts = AdminAccounts(AdminStore(blocking), DerivedKeys(master, "admin-totp"), _Now())
        result = _wait(accounts.sign_in("alice", PASSWORD, pyotp.TOTP(secret).now(), "192.0.2.1"))
        self.assertEqual(result.outcome, SignIn.OK)
        rows = _wait(AuditTrail(blocking).since(0))
        self.assertEqual([r.action for r in rows], ["admin added", "sign-in"])
        self.assertEqual(rows[0].address, "local")

    def test_list_token_remove(self) -> None:
        self.admin("add", "alice", "--role", "admin", stdin=PASSWORD + "\n")
        self.admin("add", "hank", "--role", "helpdesk", stdin=PASSWORD + "\n")
        status, out, _ = self.admin("token", "hank")
        self.assertEqual(status, 0)
        self.assertRegex(out, r"\A[A-Za-z0-9_-]{43}\n\Z")  # alone on one line
        status, out, _ = self.admin("list")
        self.assertEqual(status, 0)
        rows = [line.split() for line in out.splitlines()[1:]]
        self.assertEqual(
            [(r[0], r[1], r[4]) for r in rows], [("alice", "admin", "0"), ("hank", "helpdesk", "1")]
        )
        self.assertEqual(self.admin("remove", "hank")[0], 0)
        status, _, err = self.admin("remove", "hank")
        self.assertEqual(status, 1)
        self.assertIn("no admin 'hank'", err)
        self.assertNotIn("hank", self.admin("list")[1])
        status, _, err = self.admin("token", "hank")
        self.assertEqual(status, 1)
        self.assertEqual(len(err.splitlines()), 1)

    def test_adding_again_resets(self) -> None:
        _, first, _ = self.admin("add", "alice", "--role", "admin", stdin=PASSWORD + "\n")
        status, second, _ = self.admin("add", "alice", "--role", "auditor", stdin=PASSWORD + "x\n")
        self.assertEqual(status, 0)
        self.assertIn("Reset", second)
        uri = re.compile(r"^otpauth://\S+$", re.M)
        self.assertNotEqual(uri.findall(first), uri.findall(second))
        self.assertIn("auditor", self.admin("list")[1])

    def test_refusals_are_one_line(self) -> None:
        """A short password, an unknown role, a bad name: one line, status 1, nothing stored."""
        for args, stdin, words in (
            (("add", "alice", "--role", "admin"), "short\n", "at least 12"),
            (("add", "alice", "--role", "boss"), PASSWORD + "\n", "no role 'boss'"),
            (("add", "a b", "--role", "admin"), PASSWORD + "\n", "admin name"),
        ):
            status, out, err = self.admin(*args, stdin=stdin)
            self.assertEqual(status, 1, err)
            self.assertEqual(len(err.splitlines()), 1, err)
            self.assertIn(words, err)
            self.assertNotIn("otpauth", out)
        self.assertIn("No admins", self.admin("list")[1])

    def test_list_without_a_database_says_where_it_looked(self) -> None:
        status, _, err = self.admin("list")
        self.assertEqual(status, 1)
        self.assertIn(f"sqlite:{self.db_path}", err)
        self.assertFalse(os.path.exists(self.db_path))


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class TerminalTests(TestCase):
    def test_password_is_asked_twice_on_a_terminal(self) -> None:
        with mock.patch("getpass.getpass", side_effect=[PASSWORD, PASSWORD]) as asked:
            self.assertEqual(read_password(FakeTerminal(), io.StringIO()), PASSWORD)
        self.assertEqual(asked.call_count, 2)
        with mock.patch("getpass.getpass", side_effect=[PASSWORD, PASSWORD + "x"]):
            with self.assertRaisesRegex(AccountError, "differ"):
                read_password(FakeTerminal(), io.StringIO())

    def test_a_terminal_gets_a_qr_code_under_the_uri(self) -> None:
        directory = tempfile.mkdtemp(prefix="secmail-cli-admin-")
        config = os.path.join(directory, "secmail.toml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(f'[gateway]\ndata_dir = "{os.path.join(directory, "data")}"\n')
        out = FakeTerminal()
        with (
            mock.patch("getpass.getpass", side_effect=[PASSWORD, PASSWORD]),
            mock.patch("sys.stdin", FakeTerminal()),
            contextlib.redirect_stdout(out),
        ):
            status = cli.main(["admin", "add", "alice", "--role", "admin", "--config", config])
        self.assertEqual(status, 0)
        lines = out.getvalue().splitlines()
        at = [n for n, line in enumerate(lines) if line.startswith("otpauth://totp/")]
        self.assertEqual(len(at), 1)
        self.assertGreater(len(lines) - at[0], 10)  # the code's rows follow the URI's line
