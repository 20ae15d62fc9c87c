"""`secmail settings show|set|unset`: lines, sources, refusals and the audit row."""

from __future__ import annotations

import contextlib
import io
import os
import sqlite3
import tempfile
from collections.abc import Sequence

from twisted.trial.unittest import SynchronousTestCase

from secmail import cli
from secmail.settings_cli import system_user
from secmail.store.database import Database
from secmail.store.engines import SqliteEngine


def run(argv: Sequence[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(list(argv))
    return status, out.getvalue(), err.getvalue()


class SettingsCommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="secmail-settings-cli-")
        self.db_path = os.path.join(self.dir, "secmail.sqlite")
        Database(SqliteEngine(self.db_path), None).prepare_blocking()
        self.config = os.path.join(self.dir, "secmail.toml")
        with open(self.config, "w", encoding="utf-8") as f:
            f.write(
                f'[gateway]\nhostname = "gw.example"\ndata_dir = "{self.dir}"\n'
                '[portal]\nbrand_name = "File Ltd"\n'
            )

    def settings(self, *args: str) -> tuple[int, str, str]:
        return run(["settings", *args, "--config", self.config])

    def audit(self) -> list[tuple[str, ...]]:
        conn = sqlite3.connect(self.db_path)
        try:
            return conn.execute(
                "SELECT admin, address, action, setting, before, after FROM admin_audit"
            ).fetchall()
        finally:
            conn.close()

    def test_set_show_and_unset(self) -> None:
        """A value typed as words is a string, as TOML a number; both stored and shown."""
        status, out, err = self.settings("set", "portal.verification_phrase", "Blue", "heron")
        self.assertEqual(
            (status, out), (0, 'portal.verification_phrase = "Blue heron"  # database\n')
        )
        self.assertIn("within 5 seconds", err)
        self.assertEqual(self.settings("set", "smtp.max_recipients", "50")[0], 0)
        status, out, _ = self.settings("show")
        lines = out.splitlines()
        self.assertIn("smtp.max_recipients = 50  # database", lines)
        self.assertIn(f'portal.brand_name = "File Ltd"  # file: fixed ({self.config})', lines)
        self.assertIn(
            f'gateway.data_dir = "{self.dir}"  # file: node setting, read only from the file '
            f"({self.config})",
            lines,
        )
        self.assertIn('portal.brand_colour = "#1f5fae"  # default', lines)
        self.assertEqual(
            self.settings("unset", "smtp.max_recipients")[1],
            "smtp.max_recipients = 1000  # default\n",
        )
        user = system_user()
        self.assertEqual(
            self.audit(),
            [
                (user, "local", "setting changed", "portal.verification_phrase", '""',
                 '"Blue heron"'),
                (user, "local", "setting changed", "smtp.max_recipients", "1000", "50"),
                (user, "local", "setting reset", "smtp.max_recipients", "50", "1000"),
            ],
        )  # fmt: skip

    def test_refusals_are_one_line_and_write_nothing(self) -> None:
        for args, line in [
            (
                ["set", "portal.brand_name", "X"],
                f"secmail: portal.brand_name: fixed by {self.config}; remove it there to "
                "change it as a cluster setting\n",
            ),
            (
                ["set", "portal.brand_colour", "red"],
                "secmail: portal.brand_colour: 'red' must be a colour written #rrggbb, "
                "such as #1f5fae\n",
            ),
            (
                ["set", "smtp.max_recipients", '"50"'],
                "secmail: smtp.max_recipients: must be a whole number, not a string\n",
            ),
            (
                ["show", "portal.nope"],
                "secmail: portal.nope: unknown key (known in [portal]: listen, url, "
                "compose_directory, max_upload_size, brand_name, brand_colour, logo_file, "
                "verification_phrase, languages, compose_codes_per_mailbox, "
                "compose_codes_per_client, compose_codes_per_hour, compose_codes_per_day)\n",
            ),
        ]:
            self.assertEqual(self.settings(*args), (1, "", line))
        self.assertEqual(self.audit(), [])
