"""
A GSM modem simulated on a pseudo-terminal, for end-to-end tests of the SMS modem route.

L{FakeModem} opens a pty and answers the AT commands secmail sends (see
C{secmail.sms.at}) the way a real modem does: V.250 framing (C{"\\r\\nOK\\r\\n"}), echo
until C{ATE0}, C{AT+CMEE}, C{AT+CPIN?} and PIN entry, C{AT+CMGF}, C{AT+CSCS} (C{"GSM"}
or C{"UCS2"}), C{AT+CSMP}, and the C{AT+CMGS} dialogue: the C{"\\r\\n> "} prompt, the
text up to Ctrl-Z (sent: C{+CMGS: <ref>} and C{OK}) or ESC (cancelled: C{OK}). Every
message sent is decoded in the character set of the moment (UCS-2 hex for C{"UCS2"},
number included) and recorded. Faults can be scripted from the test thread:
C{fail_next}, C{silent_next}, C{delay}/C{send_delay}, C{unsolicited},
C{urc_during_send} and C{disconnect}.

The process under test opens L{FakeModem.path}, a symlink to the pty's slave
C{/dev/pts/N} in a directory of the test's choosing, so the configured device stays the
same across a simulated unplug. One background thread reads the master side; every wait
in it and in the public methods is bounded.

How a Linux pty behaves, found by experiment (pyserial 3.5, Twisted 26 epoll reactor)::

  - Closing the master hangs the slave up at once, for every process that has it open,
    whether or not other slave descriptors remain (this module's own copy included):
    Twisted's C{SerialPort} gets EPOLLHUP, its read returns end-of-file, and the
    protocol's C{connectionLost} is called with C{ConnectionDone} within one reactor
    iteration. pyserial opens with C{O_NOCTTY}, so the hang-up sends no SIGHUP.
  - The C{/dev/pts/N} node disappears as soon as the master is closed; the number is
    only reused once every slave descriptor is closed. While the modem is "unplugged"
    the symlink is therefore removed (opening it fails with ENOENT, like an unplugged
    C{/dev/ttyUSB0}), not left dangling: a dangling link could come to point at another
    test's new pty with the same number.
  - Reading the master while no one has the slave open fails with EIO at once, and
    select() keeps reporting the master readable, so a reader loop would spin. That
    happens between the gateway closing its port and reopening it. This module
    therefore keeps its own slave descriptor open for as long as the pty exists (it never
    reads it, so it takes nothing from the process under test), and closes it together
    with the master on C{disconnect}. Bytes written to the master while no one has the
    slave open wait in the tty; C{SerialPort} flushes its input when it opens.
  - C{tty.setraw} on the slave keeps the line discipline from echoing, translating CR or
    treating Ctrl-Z as a signal. pyserial sets the same raw mode again when it opens the
    port, and its modem-line ioctls (DTR/RTS) are accepted by a pty.

Each new pty starts a freshly powered modem: echo on, numeric errors off, PDU mode, GSM
character set and, with C{sim_pin}, a SIM asking for its PIN again.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import select
import threading
import time
import tty
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

CTRL_Z = 0x1A
ESC = 0x1B
POLL_STEP = 0.05
MAX_LINE = 4096
PIN_ATTEMPTS = 3
DEFAULT_URC = '+CMTI: "SM",3'
T = TypeVar("T")


@dataclass(frozen=True)
class Submission:
    """One text the modem took after AT+CMGS (ended with Ctrl-Z), sent or refused.

    C{result} is the line that ended it: C{"+CMGS: <ref>"} for a sent message, else the
    error line written instead (C{fail_next}, an undecodable text, ...).
    """

    number: str
    text: str
    charset: str
    dcs: int
    result: str

    @property
    def sent(self) -> bool:
        return self.result.startswith("+CMGS:")


class _Pty:
    """One opening of the simulated device: the master, our copy of the slave, its name."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        try:
            tty.setraw(self.slave)
            flags = fcntl.fcntl(self.master, fcntl.F_GETFL)
            fcntl.fcntl(self.master, fcntl.F_SETFL, flags | os.O_NONBLOCK)
            self.name = os.ttyname(self.slave)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


class FakeModem:
    """A pty GSM modem; use as a context manager, or call L{start} and L{stop}."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        name: str = "ttyGSM0",
        sim_pin: str | None = None,
        delay: float = 0.0,
        send_delay: float = 0.0,
        urc_during_send: bool | str = False,
    ) -> None:
        self.path = str(Path(directory) / name)
        """The device path to configure: a symlink to the current C{/dev/pts/N}."""
        self.sim_pin = sim_pin
        self.delay = delay
        """Seconds to wait before answering each command line (settable at any time)."""
        self.send_delay = send_delay
        """Seconds between Ctrl-Z and the answer to an AT+CMGS (settable at any time)."""
        self.urc_during_send: bool | str = urc_during_send
        """True (or a URC line) to write a URC between the prompt and the +CMGS answer."""
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._wakeup = threading.Event()
        self._thread: threading.Thread | None = None
        self._pty: _Pty | None = None
        self._reopen_at: float | None = None
        self._disconnects: deque[tuple[float | None, threading.Event]] = deque()
        self._commands: list[str] = []
        self._sms: list[tuple[str, str]] = []
        self._submissions: list[Submission] = []
        self._fail: deque[str] = deque()
        self._silent = 0
        self._aborted = 0
        self._openings = 0
        self._dropped = 0
        self._reference = 0
        self.error: BaseException | None = None
        """What ended the reader thread early, if anything (L{stop} raises it)."""
        self._reset_modem()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> FakeModem:
        """Open the first pty, point L{path} at it and start the reader thread."""
        if self._thread is not None:
            raise RuntimeError("FakeModem already started")
        if os.path.lexists(self.path):
            raise FileExistsError(f"{self.path} exists already")
        self._open_pty()
        self._thread = threading.Thread(target=self._run, name=f"FakeModem {self.path}")
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close the pty, remove the symlink and join the thread (at most C{timeout} s)."""
        self._stop.set()
        self._wakeup.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
        self._close_pty()
        if thread is not None and thread.is_alive():
            raise AssertionError(f"FakeModem thread did not end within {timeout:g} s")
        if self.error is not None:
            raise AssertionError(f"FakeModem thread failed: {self.error!r}") from self.error

    def __enter__(self) -> FakeModem:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what the modem saw --------------------------------------------------------------

    @property
    def commands(self) -> list[str]:
        """Every command line received, in order, as sent (a copy)."""
        with self._lock:
            return list(self._commands)

    @property
    def sms(self) -> list[tuple[str, str]]:
        """The messages sent, as (number, text), in order (a copy)."""
        with self._lock:
            return list(self._sms)

    @property
    def submissions(self) -> list[Submission]:
        """Every text ended with Ctrl-Z, sent or refused, with charset and DCS (a copy)."""
        with self._lock:
            return list(self._submissions)

    @property
    def aborted(self) -> int:
        """How many AT+CMGS text entries were cancelled with ESC."""
        with self._lock:
            return self._aborted

    @property
    def openings(self) -> int:
        """How many ptys have been opened so far (1 + reconnections)."""
        with self._lock:
            return self._openings

    @property
    def connected(self) -> bool:
        with self._lock:
            return self._pty is not None

    @property
    def slave_name(self) -> str | None:
        """The current C{/dev/pts/N}, or None while disconnected."""
        with self._lock:
            return self._pty.name if self._pty is not None else None

    @property
    def dropped(self) -> int:
        """Bytes the modem could not write because the tty's buffer was full."""
        with self._lock:
            return self._dropped

    def wait_until(self, check: Callable[[], T | None], timeout: float, what: str) -> T:
        """Poll C{check} until it returns something true, at most C{timeout} seconds."""
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            if time.monotonic() >= deadline:
                failed = f"; reader thread failed: {self.error!r}" if self.error else ""
                raise AssertionError(
                    f"fake modem{failed}: timed out after {timeout:g} s waiting for {what}; "
                    f"commands seen: {self.commands!r}; SMS seen: {self.sms!r}"
                )
            time.sleep(POLL_STEP)

    def wait_for_sms(self, count: int = 1, timeout: float = 10.0) -> list[tuple[str, str]]:
        """The messages sent once there are at least C{count}; AssertionError otherwise."""

        def enough() -> list[tuple[str, str]] | None:
            seen = self.sms
            return seen if len(seen) >= count else None

        return self.wait_until(enough, timeout, f"{count} SMS")

    def wait_for_command(self, command: str, count: int = 1, timeout: float = 10.0) -> int:
        """Wait until C{command} (exact line) has been received C{count} times in all."""
        self.wait_until(
            lambda: self.commands.count(command) >= count,
            timeout,
            f"{command!r} received {count} time(s)",
        )
        return self.commands.count(command)

    # -- scripted faults -------------------------------------------------------------------

    def fail_next(self, n: int = 1, line: str = "+CMS ERROR: 500") -> None:
        """The next C{n} texts sent end with C{line} instead of C{+CMGS}/C{OK}."""
        with self._lock:
            self._fail.extend([line] * n)

    def silent_next(self, n: int = 1) -> None:
        """Swallow the next C{n} AT+CMGS: no prompt, no answer; ESC then cancels (OK)."""
        with self._lock:
            self._silent += n

    def unsolicited(self, line: str) -> None:
        """Write an unsolicited result code (C{RING}, C{+CMTI: "SM",3}, ...) right now."""
        self._write(_frame(line))

    def disconnect(self, down_for: float | None = 0.0, timeout: float = 5.0) -> None:
        """Unplug: close the pty now, and open a new one after C{down_for} seconds.

        The process holding the slave sees the line hang up. The symlink is removed
        while down and then atomically pointed at the new pty. With C{down_for=None}
        the modem stays down until L{reconnect}. Returns once the pty is closed.
        """
        done = threading.Event()
        with self._lock:
            if self._thread is None:
                raise RuntimeError("FakeModem is not running")
            self._disconnects.append((down_for, done))
        self._wakeup.set()
        if not done.wait(timeout):
            raise AssertionError(f"FakeModem did not disconnect within {timeout:g} s")

    def reconnect(self) -> None:
        """Plug back in now (after C{disconnect(down_for=None)}); no-op when connected."""
        with self._lock:
            if self._pty is None:
                self._reopen_at = 0.0
        self._wakeup.set()

    # -- the pty ---------------------------------------------------------------------------

    def _open_pty(self) -> None:
        pty = _Pty()
        link = f"{self.path}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            os.symlink(pty.name, link)
            os.replace(link, self.path)
        except BaseException:
            pty.close()
            if os.path.lexists(link):
                os.unlink(link)
            raise
        with self._lock:
            self._reset_modem()
            self._pty = pty
            self._reopen_at = None
            self._openings += 1

    def _close_pty(self) -> None:
        with self._lock:
            pty, self._pty = self._pty, None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            if pty is not None:
                pty.close()
            self._reset_modem()

    def _write(self, data: bytes) -> None:
        """Write to the current master; dropped when disconnected or the tty is full."""
        with self._lock:
            pty = self._pty
            if pty is None:
                return
            while data:
                try:
                    written = os.write(pty.master, data)
                except BlockingIOError:
                    self._dropped += len(data)
                    return
                except OSError as e:
                    if e.errno in (errno.EIO, errno.EBADF):
                        return
                    raise
                data = data[written:]

    # -- the reader thread -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:
            self.error = e
            raise

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._handle_requests()
            with self._lock:
                pty = self._pty
                reopen_at = self._reopen_at
            if pty is None:
                if reopen_at is not None and time.monotonic() >= reopen_at:
                    self._open_pty()
                    continue
                wait = POLL_STEP if reopen_at is None else reopen_at - time.monotonic()
                self._wakeup.wait(max(0.0, min(wait, POLL_STEP)))
                self._wakeup.clear()
                continue
            # Only this thread closes the pty's descriptors, so pty.master stays ours here.
            readable, _, _ = select.select([pty.master], [], [], POLL_STEP)
            if not readable:
                continue
            try:
                data = os.read(pty.master, 4096)
            except BlockingIOError:
                continue
            except OSError as e:
                if e.errno != errno.EIO:
                    raise
                # No slave open at all; cannot happen while we hold ours, but never spin.
                self._wakeup.wait(POLL_STEP)
                continue
            self._feed(data)

    def _handle_requests(self) -> None:
        while True:
            with self._lock:
                if not self._disconnects:
                    return
                down_for, done = self._disconnects.popleft()
            self._close_pty()
            with self._lock:
                self._reopen_at = None if down_for is None else time.monotonic() + down_for
            done.set()

    def _interrupted(self) -> bool:
        with self._lock:
            return self._stop.is_set() or bool(self._disconnects)

    def _pause(self, seconds: float) -> bool:
        """Sleep in the reader thread; False if a stop or disconnect came meanwhile."""
        deadline = time.monotonic() + seconds
        while not self._interrupted():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            self._wakeup.wait(min(remaining, POLL_STEP))
            self._wakeup.clear()
        return False

    # -- the modem -------------------------------------------------------------------------

    def _reset_modem(self) -> None:
        """A freshly powered modem (called for each new pty)."""
        self._buffer = b""
        self._echo = True
        self._cmee = 0
        self._cmgf = 0
        self._charset = "GSM"
        self._dcs = 0
        self._sim_locked = self.sim_pin is not None
        self._pin_attempts_left = PIN_ATTEMPTS
        self._text_mode = False
        self._text_number = ""
        self._text_silent = False

    def _reply(self, *lines: str) -> None:
        self._write(b"".join(_frame(line) for line in lines))

    def _cme(self, code: int) -> None:
        self._reply(f"+CME ERROR: {code}" if self._cmee else "ERROR")

    def _feed(self, data: bytes) -> None:
        self._buffer += data
        while self._buffer and not self._interrupted():
            if self._text_mode:
                ends = [
                    i for i in (self._buffer.find(b"\x1a"), self._buffer.find(b"\x1b")) if i >= 0
                ]
                if not ends:
                    break
                end = min(ends)
                body, control = self._buffer[:end], self._buffer[end]
                self._buffer = self._buffer[end + 1 :]
                self._text_mode = False
                if control == ESC:
                    self._cancel_text()
                else:
                    self._text_entered(body)
                continue
            end = self._buffer.find(b"\r")
            if end < 0:
                break
            raw, self._buffer = self._buffer[:end], self._buffer[end + 1 :]
            if self._echo:
                self._write(raw + b"\r")
            line = bytes(b for b in raw if b >= 0x20).decode("latin-1").strip()
            if line:
                self._command(line)
        if not self._text_mode and len(self._buffer) > MAX_LINE:
            self._buffer = b""

    def _command(self, line: str) -> None:
        with self._lock:
            self._commands.append(line)
        if not self._pause(self.delay):
            return
        upper = line.upper()
        if not upper.startswith("AT"):
            return self._reply("ERROR")
        command = upper[2:]
        value = line[2:].partition("=")[2].strip()
        if command == "":
            return self._reply("OK")
        if command in ("E", "E0", "E1"):
            self._echo = command == "E1"
            return self._reply("OK")
        if command.startswith("+CMEE="):
            if value not in ("0", "1", "2"):
                return self._cme(3)
            self._cmee = int(value)
            return self._reply("OK")
        if command == "+CPIN?":
            status = "SIM PIN" if self._sim_locked else "READY"
            if self._pin_attempts_left == 0:
                status = "SIM PUK"
            return self._reply(f"+CPIN: {status}", "OK")
        if command.startswith("+CPIN="):
            return self._enter_pin(_unquote(value))
        if command.startswith("+CMGF="):
            if value not in ("0", "1"):
                return self._cme(3)
            self._cmgf = int(value)
            return self._reply("OK")
        if command == "+CSCS?":
            return self._reply(f'+CSCS: "{self._charset}"', "OK")
        if command.startswith("+CSCS="):
            charset = _unquote(value).upper()
            if charset not in ("GSM", "UCS2", "IRA"):
                return self._cme(4)
            self._charset = charset
            return self._reply("OK")
        if command.startswith("+CSMP="):
            fields = value.split(",")
            if len(fields) != 4 or not all(f.strip().isdigit() for f in fields):
                return self._cme(4)
            self._dcs = int(fields[3])
            return self._reply("OK")
        if command.startswith("+CMGS="):
            return self._cmgs(value)
        return self._reply("ERROR")

    def _enter_pin(self, pin: str) -> None:
        if not self._sim_locked:
            return self._cme(3)  # operation not allowed: no PIN asked for
        if self._pin_attempts_left == 0:
            return self._cme(12)  # SIM PUK required
        if pin == self.sim_pin:
            self._sim_locked = False
            self._pin_attempts_left = PIN_ATTEMPTS
            return self._reply("OK")
        self._pin_attempts_left -= 1
        return self._cme(16)  # incorrect password

    def _cmgs(self, value: str) -> None:
        if self._sim_locked:
            return self._reply("+CMS ERROR: 311")  # SIM PIN required
        if self._cmgf != 1:
            return self._reply("+CMS ERROR: 304")  # PDU mode is not simulated
        match = re.fullmatch(r'"([^"]*)"(?:,\d+)?', value)
        number = _decode(match.group(1), self._charset) if match else None
        if not number:
            return self._reply("+CMS ERROR: 305")  # invalid text mode parameter
        with self._lock:
            silent = self._silent > 0
            if silent:
                self._silent -= 1
        self._text_mode = True
        self._text_number = number
        self._text_silent = silent
        if not silent:
            self._write(b"\r\n> ")

    def _cancel_text(self) -> None:
        with self._lock:
            self._aborted += 1
        self._reply("OK")

    def _text_entered(self, body: bytes) -> None:
        if self._text_silent:
            return  # the swallowed AT+CMGS showed no prompt; it answers nothing either
        text = _decode(body.decode("latin-1"), self._charset)
        if self.urc_during_send:
            urc = self.urc_during_send
            self.unsolicited(urc if isinstance(urc, str) else DEFAULT_URC)
        if not self._pause(self.send_delay):
            return
        with self._lock:
            if text is None:
                result = "+CMS ERROR: 305"
                text = body.decode("latin-1")
            elif self._fail:
                result = self._fail.popleft()
            else:
                self._reference = self._reference % 255 + 1
                result = f"+CMGS: {self._reference}"
                self._sms.append((self._text_number, text))
            self._submissions.append(
                Submission(self._text_number, text, self._charset, self._dcs, result)
            )
        # Recorded before answering: once the sender has its answer, the test sees it too.
        if result.startswith("+CMGS:"):
            self._reply(result, "OK")
        else:
            self._reply(result)


def _frame(line: str) -> bytes:
    return b"\r\n" + line.encode("latin-1") + b"\r\n"


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _decode(value: str, charset: str) -> str | None:
    """A number or text as the modem reads it in C{charset}; None if it is not valid."""
    if charset != "UCS2":
        return value
    try:
        return bytes.fromhex(value).decode("utf-16-be")
    except ValueError:
        return None
