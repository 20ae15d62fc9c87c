"""
A real Kannel for the end-to-end tests, as deployments run it: Debian's C{bearerbox} and
C{smsbox} (package kannel) with the C{sendsms} HTTP interface, and C{fakesmsc} (package
kannel-extras) standing in for the operator's SMSC.

Everything listens on 127.0.0.1 only, on free ports, with its configuration, message store
and logs in one temporary directory; nothing of Debian's init scripts or C{/etc/kannel} is
used. L{kannel_running} starts the three processes, waits (bounded) until bearerbox reports
the fake SMSC online and the smsbox connected, and stops every process it started.

What fakesmsc prints for each message bearerbox hands it (on its log, stderr)::

    ... DEBUG: Got message 1: <SENDER RECEIVER text secmail: your PIN is 123456.>
    ... DEBUG: Got message 2: <SENDER RECEIVER ucs-2 %00s%00e%00c...%00%E4...>

C{text} (GSM 7-bit, the default C{coding=0}): the text as it is, in UTF-8 (a newline in it
would split the line: the tests send none). C{ucs-2} (C{coding=2}): the UTF-16BE bytes,
URL-encoded with C{+} for the byte 0x20. C{data} (C{coding=1}): the bytes, URL-encoded.
L{parse_fakesmsc_line} undoes that. (A text too long for one SMS comes as C{udh} parts,
which are not decoded here.)
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tests.e2e.harness import LOOPBACK, free_port

BEARERBOX = "/usr/sbin/bearerbox"
SMSBOX = "/usr/sbin/smsbox"
FAKESMSC = "/usr/lib/kannel/test/fakesmsc"

USERNAME = "secmail"
PASSWORD = "kannel-test-s3cret"
ADMIN_PASSWORD = "kannel-admin-s3cret"
#: The sender Kannel puts on messages whose request has no C{from}.
SENDER = "secmail"
SMSC_ID = "fake"

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
POLL_STEP = 0.05


def missing() -> list[str]:
    """The Kannel programs these tests need that are not installed (empty: all there)."""
    return [p for p in (BEARERBOX, SMSBOX, FAKESMSC) if not os.access(p, os.X_OK)]


class KannelError(AssertionError):
    """Kannel did not start or did not deliver (the text holds the ends of its logs)."""


@dataclass(frozen=True)
class FakeSms:
    """One message as fakesmsc received it from bearerbox, its text decoded."""

    sender: str
    number: str
    kind: str  # "text" (GSM 7-bit), "ucs-2" or "data" (8-bit)
    text: str
    raw: str  # the message part of fakesmsc's line, as printed


_GOT = re.compile(r"Got message [0-9]+: <(.*)>$")


def _url_bytes(data: str) -> bytes:
    """Bytes from Kannel's URL encoding (C{+} stands for the byte 0x20)."""
    return urllib.parse.unquote_to_bytes(data.replace("+", "%20"))


def parse_fakesmsc_line(line: str) -> FakeSms | None:
    """The message on one line of fakesmsc's output, or None if the line holds none."""
    m = _GOT.search(line.rstrip("\r\n"))
    if m is None:
        return None
    parts = m.group(1).split(" ", 3)
    if len(parts) < 3:
        return None
    sender, number, kind = parts[:3]
    data = parts[3] if len(parts) > 3 else ""
    if kind == "ucs-2":
        text = _url_bytes(data).decode("utf-16-be")
    elif kind == "data":
        text = _url_bytes(data).decode("latin-1")
    else:
        text = data
    return FakeSms(sender, number, kind, text, m.group(1))


def kannel_conf(
    directory: Path,
    *,
    admin_port: int,
    smsbox_port: int,
    smsc_port: int,
    sendsms_port: int,
) -> str:
    """kannel.conf for one bearerbox, one fake SMSC and one smsbox, all on loopback."""
    d = directory
    return f"""\
group = core
admin-port = {admin_port}
admin-interface = {LOOPBACK}
admin-password = {ADMIN_PASSWORD}
admin-deny-ip = "*.*.*.*"
admin-allow-ip = "{LOOPBACK}"
smsbox-port = {smsbox_port}
smsbox-interface = {LOOPBACK}
box-deny-ip = "*.*.*.*"
box-allow-ip = "{LOOPBACK}"
log-file = "{d / "bearerbox.log"}"
log-level = 0
access-log = "{d / "access.log"}"
store-type = file
store-location = "{d / "store"}"
dlr-storage = internal

group = smsc
smsc = fake
smsc-id = {SMSC_ID}
host = {LOOPBACK}
port = {smsc_port}
our-host = {LOOPBACK}
connect-allow-ip = {LOOPBACK}

group = smsbox
bearerbox-host = {LOOPBACK}
bearerbox-port = {smsbox_port}
sendsms-port = {sendsms_port}
sendsms-interface = {LOOPBACK}
log-file = "{d / "smsbox.log"}"
log-level = 0
access-log = "{d / "smsbox-access.log"}"

group = sendsms-user
username = {USERNAME}
password = {PASSWORD}
default-sender = {SENDER}
user-allow-ip = "{LOOPBACK}"
max-messages = 3
concatenation = true
"""


def _listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port (read from /proc: no probe connection,
    which bearerbox's fake SMSC would take for fakesmsc)."""
    want = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/tcp", encoding="ascii") as f:
            next(f, None)
            return any(
                fields[1] == want and fields[3] == "0A"
                for fields in (line.split() for line in f)
                if len(fields) > 3
            )
    except OSError:
        return False


class Kannel:
    """bearerbox + smsbox + fakesmsc in C{directory}; see L{kannel_running}."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.admin_port = free_port()
        self.smsbox_port = free_port()
        self.smsc_port = free_port()
        self.sendsms_port = free_port()
        self.username = USERNAME
        self.password = PASSWORD
        self.sender = SENDER
        self.config_path = self.dir / "kannel.conf"
        self.config_path.write_text(
            kannel_conf(
                self.dir,
                admin_port=self.admin_port,
                smsbox_port=self.smsbox_port,
                smsc_port=self.smsc_port,
                sendsms_port=self.sendsms_port,
            ),
            encoding="utf-8",
        )
        self.fakesmsc_out = self.dir / "fakesmsc.out"
        self._procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    # --- addresses -------------------------------------------------------------------------

    @property
    def sendsms_url(self) -> str:
        """smsbox's sendsms interface, without a query."""
        return f"http://{LOOPBACK}:{self.sendsms_port}/cgi-bin/sendsms"

    def url(self, **extra: str) -> str:
        """A secmail C{sms.http.url}: sendsms with the credentials, C{{to}}, C{{text}} and
        C{extra} parameters (such as C{charset="UTF-8", coding="2"})."""
        query = urllib.parse.urlencode({"username": self.username, "password": self.password})
        more = "".join(f"&{k}={urllib.parse.quote(v, safe='')}" for k, v in extra.items())
        return f"{self.sendsms_url}?{query}&to={{to}}&text={{text}}{more}"

    # --- life ------------------------------------------------------------------------------

    def start(self) -> Kannel:
        try:
            self._spawn("bearerbox", [BEARERBOX, str(self.config_path)])
            self._wait(
                lambda: all(
                    _listening(p) for p in (self.admin_port, self.smsbox_port, self.smsc_port)
                ),
                "bearerbox to listen on its admin, smsbox and fake SMSC ports",
            )
            # fakesmsc reads messages to send from stdin when given none: the pipe stays open
            # (and empty) while it runs; closing it ends fakesmsc.
            self._spawn(
                "fakesmsc",
                [FAKESMSC, "-H", LOOPBACK, "-r", str(self.smsc_port)],
                stdin=subprocess.PIPE,
                out=self.fakesmsc_out,
            )
            self._spawn("smsbox", [SMSBOX, str(self.config_path)])
            self._wait(self._ready, "the fake SMSC online and the smsbox connected")
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(
        self, name: str, argv: list[str], stdin: Any = subprocess.DEVNULL, out: Path | None = None
    ) -> None:
        output = open(out or self.dir / f"{name}.out", "ab")  # noqa: SIM115 - closed in stop
        try:
            proc = subprocess.Popen(  # noqa: S603
                argv, cwd=self.dir, stdin=stdin, stdout=output, stderr=subprocess.STDOUT
            )
        except BaseException:
            output.close()
            raise
        self._procs.append((name, proc, output))

    def _wait(self, check: Any, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            for name, proc, _ in self._procs:
                code = proc.poll()
                if code is not None:
                    raise KannelError(
                        f"{name} exited with status {code} while waiting for {what}\n{self.tail()}"
                    )
            if check():
                return
            if time.monotonic() >= deadline:
                raise KannelError(
                    f"timed out after {START_TIMEOUT:g} s waiting for {what}\n{self.tail()}"
                )
            time.sleep(POLL_STEP)

    def status(self) -> str:
        """bearerbox's status page (admin HTTP), or "" when it does not answer."""
        url = f"http://{LOOPBACK}:{self.admin_port}/status.txt?" + urllib.parse.urlencode(
            {"password": ADMIN_PASSWORD}
        )
        try:
            with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - http on loopback
                return str(r.read().decode("utf-8", "replace"))
        except (OSError, urllib.error.URLError):
            return ""

    def _ready(self) -> bool:
        if not _listening(self.sendsms_port):
            return False
        status = self.status()
        boxes = status.partition("Box connections:")[2].partition("SMSC connections:")
        smsbox_connected = "smsbox:" in boxes[0]
        smsc_online = any(
            line.strip().startswith(f"{SMSC_ID}[") and "(online" in line
            for line in boxes[2].splitlines()
        )
        return smsbox_connected and smsc_online

    def stop(self) -> None:
        """Stop every process started here: smsbox, fakesmsc, bearerbox (TERM, wait, KILL)."""
        procs, self._procs = self._procs, []
        errors: list[BaseException] = []
        for _name, proc, output in reversed(procs):
            try:
                if proc.stdin is not None:
                    proc.stdin.close()
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(STOP_TIMEOUT)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(STOP_TIMEOUT)
            except BaseException as e:  # stop the others all the same
                errors.append(e)
            finally:
                output.close()
        if errors:
            raise errors[0]

    @property
    def pids(self) -> list[int]:
        return [proc.pid for _, proc, _ in self._procs]

    # --- looking in ------------------------------------------------------------------------

    def received(self) -> list[FakeSms]:
        """Every message fakesmsc has received so far, in order."""
        if not self.fakesmsc_out.exists():
            return []
        lines = self.fakesmsc_out.read_bytes().decode("utf-8", "replace").splitlines()
        return [sms for sms in map(parse_fakesmsc_line, lines) if sms is not None]

    def wait_for_sms(
        self, timeout: float = 15.0, *, number: str | None = None, count: int = 1
    ) -> list[tuple[str, str]]:
        """Wait (at most C{timeout} s) until fakesmsc has received C{count} messages (to
        C{number}, or to anyone); return all such (number, text) pairs, in order."""
        deadline = time.monotonic() + timeout
        while True:
            got = [
                (sms.number, sms.text)
                for sms in self.received()
                if number is None or sms.number == number
            ]
            if len(got) >= count:
                return got
            if time.monotonic() >= deadline:
                to = "" if number is None else f" to {number}"
                raise KannelError(
                    f"fakesmsc received {len(got)} message(s){to}, not {count},"
                    f" within {timeout:g} s\n{self.tail()}"
                )
            time.sleep(POLL_STEP)

    def tail(self, lines: int = 25) -> str:
        """The ends of the processes' outputs and logs, for failure messages."""
        parts = []
        for name in ("bearerbox.out", "smsbox.out", "fakesmsc.out"):
            path = self.dir / name
            if path.exists():
                text = path.read_bytes().decode("utf-8", "replace").splitlines()[-lines:]
                parts.append(f"--- {path} ---\n" + "\n".join(text))
        return "\n".join(parts) or "(no Kannel output)"


@contextmanager
def kannel_running(directory: Path) -> Iterator[Kannel]:
    """A started L{Kannel} in C{directory}, stopped at the end whatever happens."""
    kannel = Kannel(directory)
    try:
        yield kannel.start()
    finally:
        kannel.stop()
