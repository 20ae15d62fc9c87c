"""
The pty GSM modem simulator, and secmail's real modem code run against it.

The first tests speak AT to L{FakeModem} with a raw file descriptor. The C{Secmail*}
tests start a small Twisted program in a subprocess that opens the fake's device path
with secmail's own C{ModemLink}, C{serial_opener} (Twisted's C{SerialPort}, pyserial)
and C{ModemProtocol}, and sends the SMS the test asks for over its stdin.
"""

from __future__ import annotations

import json
import os
import queue
import re
import select
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.fake_modem import FakeModem

REPO_ROOT = Path(__file__).resolve().parents[2]
NUMBER = "+358401234567"
OTHER = "+12025550123"
FINAL = re.compile(rb"\r\n(OK|ERROR|\+CM[SE] ERROR: [^\r]*)\r\n$|\r\n> $")


# --- a raw client for the fake-only tests ---------------------------------------------------


class Hangup(Exception):
    """The tty was hung up (end of file or EIO on read)."""


class Client:
    """The device path opened the way pyserial does, read with bounded waits."""

    def __init__(self, path: str) -> None:
        self.fd: int | None = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        self.buffer = b""

    def write(self, data: bytes) -> None:
        assert self.fd is not None
        os.write(self.fd, data)

    def _read_some(self, timeout: float) -> bool:
        assert self.fd is not None
        readable, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not readable:
            return False
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return False
        except OSError as e:
            raise Hangup(str(e)) from e
        if not data:
            raise Hangup("end of file")
        self.buffer += data
        return True

    def read_until(self, pattern: re.Pattern[bytes], timeout: float = 5.0) -> bytes:
        """Everything up to the end of the first match of C{pattern}."""
        deadline = time.monotonic() + timeout
        while True:
            match = pattern.search(self.buffer)
            if match:
                data, self.buffer = self.buffer[: match.end()], self.buffer[match.end() :]
                return data
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"no {pattern.pattern!r} within {timeout:g} s: {self.buffer!r}"
                )
            self._read_some(deadline - time.monotonic())

    def read_for(self, seconds: float) -> bytes:
        """Whatever arrives within C{seconds}."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._read_some(deadline - time.monotonic())
        data, self.buffer = self.buffer, b""
        return data

    def at(self, command: str, timeout: float = 5.0) -> bytes:
        """Send one command line; the answer up to its final result (or the prompt)."""
        self.write(command.encode("latin-1") + b"\r")
        return self.read_until(FINAL, timeout)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def fake_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("FakeModem")]


@pytest.fixture
def modem_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    assert fake_threads() == [], "a FakeModem thread outlived its test"


@pytest.fixture
def fake(modem_dir: Path) -> Iterator[FakeModem]:
    with FakeModem(modem_dir) as modem:
        yield modem


@pytest.fixture
def client(fake: FakeModem) -> Iterator[Client]:
    c = Client(fake.path)
    try:
        yield c
    finally:
        c.close()


def init(c: Client) -> None:
    assert c.at("ATE0").endswith(b"\r\nOK\r\n")
    assert c.at("AT+CMEE=1") == b"\r\nOK\r\n"
    assert c.at("AT+CMGF=1") == b"\r\nOK\r\n"


def send_gsm(c: Client, number: str, text: str) -> bytes:
    assert c.at('AT+CSCS="GSM"') == b"\r\nOK\r\n"
    assert c.at("AT+CSMP=17,167,0,0") == b"\r\nOK\r\n"
    assert c.at(f'AT+CMGS="{number}"') == b"\r\n> "
    c.write(text.encode("ascii") + b"\x1a")
    return c.read_until(FINAL)


# --- the fake on its own ---------------------------------------------------------------------


def test_path_is_symlink_to_raw_pty(fake: FakeModem) -> None:
    """The device path is a symlink to the pty's slave, which is in raw mode."""
    assert os.path.islink(fake.path)
    assert os.readlink(fake.path) == fake.slave_name
    assert fake.slave_name is not None and fake.slave_name.startswith("/dev/pts/")
    fd = os.open(fake.path, os.O_RDWR | os.O_NOCTTY)
    try:
        lflag = termios.tcgetattr(fd)[3]
        assert not lflag & (termios.ECHO | termios.ICANON | termios.ISIG)
    finally:
        os.close(fd)


def test_echo_until_ate0_and_framing(fake: FakeModem, client: Client) -> None:
    """Commands are echoed until ATE0; answers are framed; unknown commands get ERROR."""
    assert client.at("AT") == b"AT\r\r\nOK\r\n"
    assert client.at("ATE0") == b"ATE0\r\r\nOK\r\n"
    assert client.at("AT") == b"\r\nOK\r\n"
    assert client.at("AT+FOO") == b"\r\nERROR\r\n"
    assert client.at('AT+CSCS="KOI8"') == b"\r\nERROR\r\n"  # CMEE=0: plain ERROR
    assert client.at("AT+CMEE=1") == b"\r\nOK\r\n"
    assert client.at('AT+CSCS="KOI8"') == b"\r\n+CME ERROR: 4\r\n"
    assert client.at("AT+CPIN?") == b"\r\n+CPIN: READY\r\n\r\nOK\r\n"
    assert client.at('AT+CPIN="1234"') == b"\r\n+CME ERROR: 3\r\n"  # no PIN asked for
    assert fake.commands == [
        "AT",
        "ATE0",
        "AT",
        "AT+FOO",
        'AT+CSCS="KOI8"',
        "AT+CMEE=1",
        'AT+CSCS="KOI8"',
        "AT+CPIN?",
        'AT+CPIN="1234"',
    ]


def test_sim_pin(modem_dir: Path) -> None:
    """A SIM with a PIN asks for it, refuses a wrong one (CME 16) and blocks SMS until then."""
    with FakeModem(modem_dir, sim_pin="1234") as fake:
        c = Client(fake.path)
        try:
            init(c)
            assert c.at("AT+CPIN?") == b"\r\n+CPIN: SIM PIN\r\n\r\nOK\r\n"
            assert c.at(f'AT+CMGS="{NUMBER}"') == b"\r\n+CMS ERROR: 311\r\n"
            assert c.at('AT+CPIN="0000"') == b"\r\n+CME ERROR: 16\r\n"
            assert c.at("AT+CPIN?") == b"\r\n+CPIN: SIM PIN\r\n\r\nOK\r\n"
            assert c.at('AT+CPIN="1234"') == b"\r\nOK\r\n"
            assert c.at("AT+CPIN?") == b"\r\n+CPIN: READY\r\n\r\nOK\r\n"
            assert send_gsm(c, NUMBER, "hello") == b"\r\n+CMGS: 1\r\n\r\nOK\r\n"
        finally:
            c.close()


def test_three_wrong_pins_lock_the_sim(modem_dir: Path) -> None:
    """After three wrong PINs the SIM wants its PUK, as a real one does."""
    with FakeModem(modem_dir, sim_pin="1234") as fake:
        c = Client(fake.path)
        try:
            init(c)
            for _ in range(3):
                assert c.at('AT+CPIN="0000"') == b"\r\n+CME ERROR: 16\r\n"
            assert c.at("AT+CPIN?") == b"\r\n+CPIN: SIM PUK\r\n\r\nOK\r\n"
            assert c.at('AT+CPIN="1234"') == b"\r\n+CME ERROR: 12\r\n"
        finally:
            c.close()


def test_gsm_and_ucs2_messages(fake: FakeModem, client: Client) -> None:
    """Texts are decoded in the current charset, number included; references count up."""
    init(client)
    assert send_gsm(client, NUMBER, "Your PIN is 1234") == b"\r\n+CMGS: 1\r\n\r\nOK\r\n"
    text = "PIN 123456 – Ž ✓"
    assert client.at('AT+CSCS="UCS2"') == b"\r\nOK\r\n"
    assert client.at("AT+CSMP=17,167,0,8") == b"\r\nOK\r\n"
    number_hex = OTHER.encode("utf-16-be").hex().upper()
    assert client.at(f'AT+CMGS="{number_hex}",145') == b"\r\n> "
    client.write(text.encode("utf-16-be").hex().upper().encode() + b"\x1a")
    assert client.read_until(FINAL) == b"\r\n+CMGS: 2\r\n\r\nOK\r\n"
    assert fake.wait_for_sms(2, timeout=1) == [(NUMBER, "Your PIN is 1234"), (OTHER, text)]
    assert [(s.charset, s.dcs, s.result) for s in fake.submissions] == [
        ("GSM", 0, "+CMGS: 1"),
        ("UCS2", 8, "+CMGS: 2"),
    ]


def test_bad_ucs2_text_is_refused(fake: FakeModem, client: Client) -> None:
    """A text that is not UCS-2 hex after AT+CSCS="UCS2" gets +CMS ERROR: 305."""
    init(client)
    assert client.at('AT+CSCS="UCS2"') == b"\r\nOK\r\n"
    assert client.at(f'AT+CMGS="{NUMBER.encode("utf-16-be").hex()}"') == b"\r\n> "
    client.write(b"hello\x1a")
    assert client.read_until(FINAL) == b"\r\n+CMS ERROR: 305\r\n"
    assert fake.sms == []
    assert not fake.submissions[0].sent


def test_escape_cancels_the_text(fake: FakeModem, client: Client) -> None:
    """ESC in text entry sends nothing and answers OK."""
    init(client)
    assert client.at('AT+CMGS="+358401234567"') == b"\r\n> "
    client.write(b"never mind\x1b")
    assert client.read_until(FINAL) == b"\r\nOK\r\n"
    assert fake.aborted == 1
    assert fake.sms == [] and fake.submissions == []


def test_pdu_mode_is_refused(fake: FakeModem, client: Client) -> None:
    """AT+CMGS before AT+CMGF=1 (a fresh modem is in PDU mode) is refused."""
    assert client.at("ATE0").endswith(b"OK\r\n")
    assert client.at(f'AT+CMGS="{NUMBER}"') == b"\r\n+CMS ERROR: 304\r\n"


def test_fail_next(fake: FakeModem, client: Client) -> None:
    """fail_next(n, line) ends the next n sends with that line; then sends work again."""
    init(client)
    fake.fail_next(2, line="+CMS ERROR: 330")
    assert send_gsm(client, NUMBER, "one") == b"\r\n+CMS ERROR: 330\r\n"
    assert send_gsm(client, NUMBER, "two") == b"\r\n+CMS ERROR: 330\r\n"
    assert send_gsm(client, NUMBER, "three") == b"\r\n+CMGS: 1\r\n\r\nOK\r\n"
    assert fake.sms == [(NUMBER, "three")]
    assert [s.result for s in fake.submissions] == ["+CMS ERROR: 330"] * 2 + ["+CMGS: 1"]


def test_silent_next(fake: FakeModem, client: Client) -> None:
    """silent_next swallows AT+CMGS (no prompt, no answer) until ESC, which answers OK."""
    init(client)
    fake.silent_next(1)
    client.write(f'AT+CMGS="{NUMBER}"\r'.encode())
    assert client.read_for(0.3) == b""
    client.write(b"\x1b")
    assert client.read_until(FINAL) == b"\r\nOK\r\n"
    assert fake.aborted == 1
    assert send_gsm(client, NUMBER, "after") == b"\r\n+CMGS: 1\r\n\r\nOK\r\n"


def test_delays(fake: FakeModem, client: Client) -> None:
    """delay holds every answer back; send_delay holds the +CMGS answer back."""
    init(client)
    fake.delay = 0.3
    started = time.monotonic()
    assert client.at("AT") == b"\r\nOK\r\n"
    assert time.monotonic() - started >= 0.3
    fake.delay = 0.0
    fake.send_delay = 0.4
    assert client.at(f'AT+CMGS="{NUMBER}"') == b"\r\n> "
    started = time.monotonic()
    client.write(b"slow\x1a")
    assert client.read_until(FINAL) == b"\r\n+CMGS: 1\r\n\r\nOK\r\n"
    assert time.monotonic() - started >= 0.4


def test_unsolicited_mid_dialogue(fake: FakeModem, client: Client) -> None:
    """URCs go out at once, also between the prompt and the answer (urc_during_send)."""
    init(client)
    fake.unsolicited("RING")
    assert client.read_until(re.compile(rb"RING\r\n")) == b"\r\nRING\r\n"
    fake.urc_during_send = True
    fake.send_delay = 0.2
    assert client.at(f'AT+CMGS="{NUMBER}"') == b"\r\n> "
    fake.unsolicited("+CREG: 1")  # while the modem waits for the text
    client.write(b"hi\x1a")
    assert client.read_until(FINAL) == (
        b'\r\n+CREG: 1\r\n\r\n+CMTI: "SM",3\r\n\r\n+CMGS: 1\r\n\r\nOK\r\n'
    )


def test_wait_for_sms_names_what_it_saw(fake: FakeModem, client: Client) -> None:
    """wait_for_sms gives up after its timeout, saying which commands and SMS it saw."""
    init(client)
    send_gsm(client, NUMBER, "only one")
    started = time.monotonic()
    with pytest.raises(AssertionError) as raised:
        fake.wait_for_sms(2, timeout=0.3)
    assert time.monotonic() - started < 2
    assert "only one" in str(raised.value) and "AT+CMGF=1" in str(raised.value)


def test_disconnect_hangs_up_and_reopens(modem_dir: Path) -> None:
    """disconnect hangs the slave up, removes the path while down, then a fresh modem."""
    with FakeModem(modem_dir, sim_pin="1234") as fake:
        c = Client(fake.path)
        try:
            init(c)
            assert c.at('AT+CPIN="1234"') == b"\r\nOK\r\n"
            fake.disconnect(down_for=0.5)
            assert not fake.connected and not os.path.lexists(fake.path)
            with pytest.raises(Hangup):
                c.read_for(1.0)
            with pytest.raises(FileNotFoundError):
                os.open(fake.path, os.O_RDWR | os.O_NOCTTY)
        finally:
            c.close()
        fake.wait_until(lambda: fake.connected, 3, "the pty to come back")
        assert fake.openings == 2
        assert os.readlink(fake.path) == fake.slave_name
        c = Client(fake.path)
        try:
            assert c.at("AT") == b"AT\r\r\nOK\r\n"  # echo is back on: a fresh modem
            assert c.at("AT+CPIN?").startswith(b"AT+CPIN?\r\r\n+CPIN: SIM PIN\r\n")
        finally:
            c.close()


def test_disconnect_until_reconnect(fake: FakeModem) -> None:
    """disconnect(down_for=None) stays down until reconnect()."""
    fake.disconnect(down_for=None)
    time.sleep(0.3)
    assert not fake.connected and not os.path.lexists(fake.path)
    fake.reconnect()
    fake.wait_until(lambda: os.path.islink(fake.path), 2, "the path to come back")
    c = Client(fake.path)
    try:
        assert c.at("AT") == b"AT\r\r\nOK\r\n"
    finally:
        c.close()


def test_disconnect_interrupts_a_delayed_answer(fake: FakeModem, client: Client) -> None:
    """A disconnect during a long delay takes effect at once; nothing is answered late."""
    init(client)
    fake.delay = 30
    client.write(b"AT\r")
    fake.wait_for_command("AT", timeout=2)
    started = time.monotonic()
    fake.disconnect(down_for=0.2)
    assert time.monotonic() - started < 1
    with pytest.raises(Hangup):
        client.read_for(1.0)


def test_no_spin_while_nobody_has_the_slave_open(fake: FakeModem) -> None:
    """With no client the reader idles: the master would give EIO without our slave copy."""
    c = Client(fake.path)
    assert c.at("AT") == b"AT\r\r\nOK\r\n"
    c.close()
    before = time.process_time()
    time.sleep(0.5)
    assert time.process_time() - before < 0.2
    c = Client(fake.path)  # and a client opening again is served
    try:
        assert c.at("AT") == b"AT\r\r\nOK\r\n"
    finally:
        c.close()


def test_stop_is_prompt_and_cleans_up(modem_dir: Path) -> None:
    """stop() ends the thread within a second even mid-delay, and removes the path."""
    fake = FakeModem(modem_dir, delay=30).start()
    c = Client(fake.path)
    try:
        c.write(b"AT\r")
        fake.wait_for_command("AT", timeout=2)
        started = time.monotonic()
        fake.stop()
        assert time.monotonic() - started < 1
        assert not os.path.lexists(fake.path)
        assert fake_threads() == []
        with pytest.raises(Hangup):
            c.read_for(1.0)
    finally:
        c.close()


# --- secmail's real modem code against the fake ----------------------------------------------

DRIVER = r'''
"""Drive secmail's ModemLink over a serial device; JSON requests on stdin, answers out."""
import json
import sys

from twisted.internet import defer, task, threads
from twisted.logger import globalLogBeginner, textFileLogObserver

from secmail.sms.at import ModemError, ModemProtocol
from secmail.sms.modem import ModemLink, serial_opener


def emit(**fields):
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def handle(link, request):
    rid = request["id"]
    if request["op"] == "send":
        try:
            reference = await link.send(request["number"], request["text"])
        except ModemError as e:
            emit(id=rid, ok=False, type=type(e).__name__, error=str(e), code=e.code,
                 source=e.source, temporary=e.temporary)
        except Exception as e:
            emit(id=rid, ok=False, type=type(e).__name__, error=str(e))
        else:
            emit(id=rid, ok=True, reference=reference)
    elif request["op"] == "state":
        protocol = link.protocol
        emit(id=rid, link=link.state.value,
             modem=protocol.state.value if protocol else None,
             unsolicited=list(protocol.unsolicited) if protocol else [])


async def main(reactor, config):
    link = ModemLink(
        reactor,
        serial_opener(reactor, config["device"], 115200),
        lambda: ModemProtocol(reactor, config["pin"], **config["protocol"]),
        **config["link"],
    )
    link.start()
    emit(event="started")
    pending = []
    while True:
        line = await threads.deferToThread(sys.stdin.readline)
        if not line or line.strip() == "quit":
            break
        pending.append(defer.ensureDeferred(handle(link, json.loads(line))))
    link.stop()
    await defer.DeferredList(pending)
    emit(event="stopped")


globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
task.react(lambda reactor: defer.ensureDeferred(main(reactor, json.loads(sys.argv[1]))))
'''


class SecmailModem:
    """secmail's ModemLink in a subprocess, opened on a device path, sending on request."""

    def __init__(self, tmp_path: Path, device: str, pin: str | None = None, **timeouts: float):
        script = tmp_path / "drive_modem.py"
        script.write_text(DRIVER)
        self.log_path = tmp_path / "drive_modem.log"
        protocol = {"command_timeout": 2.0, "pin_timeout": 2.0, "send_timeout": 5.0}
        protocol.update({"settle_time": 0.3, **timeouts})
        config = {
            "device": device,
            "pin": pin,
            "protocol": protocol,
            # Quick reopening: 0.2 s, then at most 0.5 s between attempts.
            "link": {"initial_delay": 0.2, "max_delay": 0.5, "ready_timeout": 15.0},
        }
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        env.pop("PYTHONSTARTUP", None)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(script), json.dumps(config)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=REPO_ROOT,
                env=env,
                text=True,
            )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._answers: dict[int, dict[str, Any]] = {}
        self._next_id = 0
        self._reader = threading.Thread(target=self._read, name="secmail driver stdout")
        self._reader.start()
        self._expect_event("started", 20.0)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _next_line(self, deadline: float, what: str) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"secmail driver: no {what} in time; log:\n{self.log()}") from None
        if line is None:
            raise AssertionError(f"secmail driver exited before {what}; log:\n{self.log()}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def _expect_event(self, event: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._next_line(deadline, event).get("event") != event:
            pass

    def submit(self, op: str, **fields: Any) -> int:
        """Send a request; its id, for L{result}."""
        self._next_id += 1
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"id": self._next_id, "op": op, **fields}) + "\n")
        self.process.stdin.flush()
        return self._next_id

    def result(self, rid: int, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while rid not in self._answers:
            answer = self._next_line(deadline, f"answer to request {rid}")
            if "id" in answer:
                self._answers[answer["id"]] = answer
        return self._answers.pop(rid)

    def send(self, number: str, text: str, timeout: float = 20.0) -> dict[str, Any]:
        return self.result(self.submit("send", number=number, text=text), timeout)

    def state(self) -> dict[str, Any]:
        return self.result(self.submit("state"), 5.0)

    def wait_link(self, states: set[str], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            state = self.state()
            if state["link"] in states:
                return state
            if time.monotonic() >= deadline:
                raise AssertionError(f"link never in {states}: {state}; log:\n{self.log()}")
            time.sleep(0.05)

    def close(self) -> None:
        try:
            if self.process.poll() is None and self.process.stdin is not None:
                self.process.stdin.write("quit\n")
                self.process.stdin.close()
            self.process.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait(5)
        finally:
            self._reader.join(5)
            assert not self._reader.is_alive()


@pytest.fixture
def secmail_factory(tmp_path: Path) -> Iterator[Any]:
    drivers: list[SecmailModem] = []

    def make(device: str, pin: str | None = None, **timeouts: float) -> SecmailModem:
        driver = SecmailModem(tmp_path, device, pin, **timeouts)
        drivers.append(driver)
        return driver

    try:
        yield make
    finally:
        for driver in drivers:
            driver.close()
            assert driver.process.returncode is not None


UCS2_TEXT = "PIN 123456 – Ž ✓"
INIT = ["ATE0", "AT+CMEE=1", "AT+CPIN?", 'AT+CPIN="1234"', "AT+CMGF=1"]


def test_secmail_sends_gsm_and_ucs2_text(modem_dir: Path, secmail_factory: Any) -> None:
    """secmail enters the PIN, sends GSM text as typed and other text as UCS-2; URCs pass."""
    with FakeModem(modem_dir, sim_pin="1234", urc_during_send=True) as fake:
        secmail = secmail_factory(fake.path, pin="1234")
        first = secmail.send(NUMBER, "Your PIN is 123456")
        second = secmail.send(OTHER, UCS2_TEXT)
        assert first == {"id": 1, "ok": True, "reference": "1"}
        assert second == {"id": 2, "ok": True, "reference": "2"}
        assert fake.sms == [(NUMBER, "Your PIN is 123456"), (OTHER, UCS2_TEXT)]
        assert [(s.charset, s.dcs) for s in fake.submissions] == [("GSM", 0), ("UCS2", 8)]
        assert fake.commands == INIT + [
            'AT+CSCS="GSM"',
            "AT+CSMP=17,167,0,0",
            f'AT+CMGS="{NUMBER}"',
            'AT+CSCS="UCS2"',
            "AT+CSMP=17,167,0,8",
            f'AT+CMGS="{OTHER.encode("utf-16-be").hex().upper()}"',
        ]
        state = secmail.state()
        assert state["link"] == "ready" and state["modem"] == "idle"
        assert state["unsolicited"] == ['+CMTI: "SM",3'] * 2


def test_secmail_reports_cms_error(modem_dir: Path, secmail_factory: Any) -> None:
    """A +CMS ERROR after the text fails that send with the code; the next one goes out."""
    with FakeModem(modem_dir) as fake:
        secmail = secmail_factory(fake.path)
        fake.fail_next(1)
        failed = secmail.send(NUMBER, "first")
        assert failed["ok"] is False
        assert (failed["type"], failed["source"], failed["code"]) == ("ModemError", "CMS", 500)
        assert failed["error"] == "+CMS ERROR 500: unknown error" and failed["temporary"]
        assert secmail.send(NUMBER, "second")["ok"] is True
        assert fake.sms == [(NUMBER, "second")]
        assert [s.result for s in fake.submissions] == ["+CMS ERROR: 500", "+CMGS: 1"]


def test_secmail_reopens_after_disconnect(modem_dir: Path, secmail_factory: Any) -> None:
    """Unplugged for 2 s between sends: secmail notices, reopens the path, re-enters the PIN."""
    with FakeModem(modem_dir, sim_pin="1234") as fake:
        secmail = secmail_factory(fake.path, pin="1234")
        assert secmail.send(NUMBER, "before")["ok"] is True
        unplugged = time.monotonic()
        fake.disconnect(down_for=2)
        # secmail sees the hang-up at once (Twisted SerialPort: connectionLost).
        secmail.wait_link({"waiting retry", "opening"}, timeout=2)
        after = secmail.send(NUMBER, "after", timeout=15)
        assert after["ok"] is True, after
        assert time.monotonic() - unplugged >= 2
        assert fake.sms == [(NUMBER, "before"), (NUMBER, "after")]
        assert fake.openings == 2
        assert fake.commands.count("ATE0") == 2
        assert fake.commands.count('AT+CPIN="1234"') == 2
        log = secmail.log()
        assert "GSM modem connection lost" in log
        assert "GSM modem did not open" in log  # retried while the device was missing


def test_secmail_send_cut_by_disconnect(modem_dir: Path, secmail_factory: Any) -> None:
    """A send in flight when the modem goes away fails with ModemGone; later ones work."""
    with FakeModem(modem_dir, send_delay=5) as fake:
        secmail = secmail_factory(fake.path)
        rid = secmail.submit("send", number=NUMBER, text="in flight")
        fake.wait_for_command(f'AT+CMGS="{NUMBER}"', timeout=5)
        time.sleep(0.2)  # the text is in, the modem "transmits"
        fake.disconnect(down_for=0.5)
        cut = secmail.result(rid, timeout=5)
        assert (cut["ok"], cut["type"], cut["temporary"]) == (False, "ModemGone", True)
        fake.send_delay = 0
        assert secmail.send(NUMBER, "later", timeout=15)["ok"] is True
        assert fake.sms == [(NUMBER, "later")]


def test_secmail_escapes_a_silent_cmgs(modem_dir: Path, secmail_factory: Any) -> None:
    """No prompt after AT+CMGS: secmail times out, sends ESC, and the next send works."""
    with FakeModem(modem_dir) as fake:
        secmail = secmail_factory(fake.path, command_timeout=1.0)
        fake.silent_next(1)
        timed_out = secmail.send(NUMBER, "lost")
        assert timed_out["type"] == "ModemTimeout", timed_out
        assert "AT+CMGS" in timed_out["error"]
        fake.wait_until(lambda: fake.aborted == 1, 2, "ESC from secmail")
        assert secmail.send(NUMBER, "found")["ok"] is True
        assert fake.sms == [(NUMBER, "found")]


def test_secmail_wrong_pin_is_not_retried(modem_dir: Path, secmail_factory: Any) -> None:
    """A wrong PIN fails the link for good (CME 16) after one attempt: no PUK lock."""
    with FakeModem(modem_dir, sim_pin="1234") as fake:
        secmail = secmail_factory(fake.path, pin="9999")
        failed = secmail.send(NUMBER, "never")
        assert (failed["source"], failed["code"], failed["temporary"]) == ("CME", 16, False)
        time.sleep(1.0)  # longer than the reopen delays: no second attempt
        assert secmail.state()["link"] == "failed"
        assert fake.commands.count('AT+CPIN="9999"') == 1
        assert fake.sms == []
