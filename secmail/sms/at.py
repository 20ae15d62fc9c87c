"""The AT dialogue with a GSM modem, as an explicit state machine.

One `ModemProtocol` lives for one open serial port. It initialises the modem
(echo off, numeric errors, SIM PIN, text mode), then sends one SMS at a time in
text mode, queueing further sends. Every step has a timeout on the injected clock.
Lines the dialogue does not expect (unsolicited result codes such as ``RING`` or
``+CMTI``) are recorded in `unsolicited` (the latest `MAX_UNSOLICITED`) and otherwise ignored.

Concatenated (multi-part) messages are the next step: today a text that does not
fit one SMS raises `ValueError` before anything is written to the modem.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from secmail.sms import gsm

CTRL_Z = b"\x1a"
ESC = b"\x1b"
PROMPT = b"> "
MAX_BUFFER = 8192
"""Longest line kept, in bytes: a longer one is noise on the line (no modem answer is that long)."""
MAX_UNSOLICITED = 100
"""How many of the latest unexpected lines `unsolicited` keeps for diagnostics."""

INTERNATIONAL_NUMBER = re.compile(r"\+[1-9][0-9]{6,14}")

CMS_ERRORS = {
    300: "ME failure",
    301: "SMS service of ME reserved",
    302: "operation not allowed",
    303: "operation not supported",
    304: "invalid PDU mode parameter",
    305: "invalid text mode parameter",
    310: "SIM not inserted",
    311: "SIM PIN required",
    313: "SIM failure",
    314: "SIM busy",
    320: "memory failure",
    322: "memory full",
    330: "SMSC address unknown",
    331: "no network service",
    332: "network timeout",
    500: "unknown error",
}
CME_ERRORS = {
    3: "operation not allowed",
    4: "operation not supported",
    10: "SIM not inserted",
    11: "SIM PIN required",
    12: "SIM PUK required",
    13: "SIM failure",
    14: "SIM busy",
    15: "SIM wrong",
    16: "incorrect password",
    17: "SIM PIN2 required",
    18: "SIM PUK2 required",
    30: "no network service",
    31: "network timeout",
    100: "unknown error",
}
# Errors that may go away by themselves: worth retrying later, maybe on another route.
TEMPORARY_CMS = frozenset({300, 314, 320, 322, 331, 332, 500})
TEMPORARY_CME = frozenset({13, 14, 30, 31, 100})


class ModemError(Exception):
    """The modem refused or failed a step; `code` is the +CMS/+CME number when given."""

    def __init__(
        self, code: int | None, text: str, *, source: str = "", temporary: bool = False
    ) -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text
        self.source = source
        """``"CMS"``, ``"CME"`` or ``""`` (plain ``ERROR``, timeouts, lost link)."""
        self.temporary = temporary

    def __str__(self) -> str:
        prefix = f"+{self.source} ERROR {self.code}: " if self.source else ""
        return f"{prefix}{self.text}"


class ModemTimeout(ModemError):
    """The modem did not answer a step in time. A send may still have gone out."""

    def __init__(self, step: str, seconds: float) -> None:
        super().__init__(None, f"modem did not answer {step} within {seconds:g} s", temporary=True)
        self.step = step


class ModemGone(ModemError):
    """The serial link closed while the step was pending."""

    def __init__(self, text: str = "modem connection lost") -> None:
        super().__init__(None, text, temporary=True)


def parse_error(line: str) -> ModemError | None:
    """The `ModemError` a final error result line stands for, or None for other lines."""
    if line == "ERROR":
        return ModemError(None, "modem answered ERROR", temporary=True)
    for source, table, temporary in (
        ("CMS", CMS_ERRORS, TEMPORARY_CMS),
        ("CME", CME_ERRORS, TEMPORARY_CME),
    ):
        prefix = f"+{source} ERROR:"
        if line.startswith(prefix):
            detail = line[len(prefix) :].strip()
            if detail.isdigit():
                code = int(detail)
                text = table.get(code, f"error {code}")
                return ModemError(code, text, source=source, temporary=code in temporary)
            return ModemError(None, detail or "error", source=source, temporary=True)
    return None


class State(Enum):
    STARTING = "starting"
    INIT_ECHO = "init echo"
    INIT_CMEE = "init cmee"
    INIT_PIN_QUERY = "init pin query"
    INIT_PIN_ENTRY = "init pin entry"
    INIT_TEXT_MODE = "init text mode"
    IDLE = "idle"
    SENDING_COMMAND = "sending command"
    WAITING_PROMPT = "waiting prompt"
    SENDING_TEXT = "sending text"
    RECOVERING = "recovering"
    FAILED = "failed"
    CLOSED = "closed"


@dataclass
class OutgoingSms:
    """One queued send: the commands before AT+CMGS, then the AT+CMGS line and the text."""

    setup: list[str]
    cmgs: str
    body: bytes
    done: Deferred[str] = field(default_factory=Deferred)
    reference: str | None = None


def prepare(number: str, text: str) -> OutgoingSms:
    """Check number and length and choose how the text travels to the modem.

    Plain-ASCII-safe GSM text goes as typed after AT+CSCS="GSM". Anything else goes as
    UCS-2 hex after AT+CSCS="UCS2"; AT+CSMP's data coding scheme says whether the modem
    transmits it as GSM 7-bit (0: text is GSM-7, e.g. "€" or "$") or as UCS-2 (8).
    """
    if not INTERNATIONAL_NUMBER.fullmatch(number):
        raise ValueError(
            f"SMS number {number!r} is not in international form: write it as +<country><number>"
        )
    if gsm.parts_needed(text) > 1:
        raise ValueError(
            "SMS text does not fit one message; concatenated parts are not supported yet"
        )
    if text and gsm.is_safe_gsm_ascii(text):
        return OutgoingSms(
            setup=['AT+CSCS="GSM"', "AT+CSMP=17,167,0,0"],
            cmgs=f'AT+CMGS="{number}"',
            body=text.encode("ascii"),
        )
    dcs = 0 if gsm.is_gsm7(text) else 8
    return OutgoingSms(
        setup=['AT+CSCS="UCS2"', f"AT+CSMP=17,167,0,{dcs}"],
        cmgs=f'AT+CMGS="{gsm.ucs2_hex(number)}"',
        body=gsm.ucs2_hex(text).encode("ascii"),
    )


_INIT_STEPS = {
    State.INIT_ECHO: "ATE0",
    State.INIT_CMEE: "AT+CMEE=1",
    State.INIT_PIN_QUERY: "AT+CPIN?",
    State.INIT_TEXT_MODE: "AT+CMGF=1",
}


class ModemProtocol(Protocol):
    """AT dialogue over one serial connection; see the module docstring."""

    def __init__(
        self,
        clock: IReactorTime,
        pin: str | None = None,
        *,
        command_timeout: float = 10.0,
        pin_timeout: float = 30.0,
        send_timeout: float = 60.0,
        settle_time: float = 2.0,
        on_unsolicited: Callable[[str], object] | None = None,
    ) -> None:
        self.clock = clock
        self.pin = pin
        self.command_timeout = command_timeout
        self.pin_timeout = pin_timeout
        self.send_timeout = send_timeout
        self.settle_time = settle_time
        self.on_unsolicited = on_unsolicited
        self.state = State.STARTING
        self.ready: Deferred[None] = Deferred()
        self.closed: Deferred[None] = Deferred()
        """Fires (never fails) once the serial connection is gone."""
        self.unsolicited: list[str] = []
        self._buffer = b""
        self._skipping_line = False
        self._timer: IDelayedCall | None = None
        self._queue: deque[OutgoingSms] = deque()
        self._current: OutgoingSms | None = None
        self._setup_left: list[str] = []
        self._pin_status: str | None = None

    # -- Twisted edges -------------------------------------------------------------

    def connectionMade(self) -> None:
        self._step(State.INIT_ECHO)

    def dataReceived(self, data: bytes) -> None:
        """
        Split the input into lines (and the text prompt) in one pass over the read.

        A line longer than `MAX_BUFFER` is dropped whole, however the reads cut it: an
        unfinished line over the limit is thrown away and the rest of it up to the next
        newline is skipped, so that its tail (say ``OK``) is never taken for an answer.
        """
        buffer = self._buffer + data
        start = 0
        while self.state is not State.CLOSED:
            if (
                self.state is State.WAITING_PROMPT
                and not self._skipping_line
                and buffer.startswith(PROMPT, start)
            ):
                start += len(PROMPT)
                self._prompt_received()
                continue
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            raw, start = buffer[start:end], end + 1
            if self._skipping_line:
                self._skipping_line = False
                continue
            if len(raw) > MAX_BUFFER:
                continue
            line = raw.strip(b"\r").decode("ascii", "replace").strip()
            if line:
                self.line_received(line)
        self._buffer = buffer[start:]
        if len(self._buffer) > MAX_BUFFER:
            self._buffer = b""
            self._skipping_line = True

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.state is State.CLOSED:
            return
        self._cancel_timer()
        self.state = State.CLOSED
        gone = ModemGone()
        self._fail_all(gone)
        if not self.ready.called:
            self.ready.errback(gone)
        self.closed.callback(None)

    # -- sending ---------------------------------------------------------------------

    async def send(self, number: str, text: str) -> str:
        """Send one SMS and return the modem's message reference (``+CMGS: <ref>``)."""
        sms = prepare(number, text)
        if self.state is State.CLOSED:
            raise ModemGone("modem is not connected")
        if self.state is State.FAILED:
            raise ModemError(None, "modem initialisation failed", temporary=True)
        self._queue.append(sms)
        if self.state is State.IDLE:
            self._next()
        return await sms.done

    def _next(self) -> None:
        if self.state is not State.IDLE or not self._queue:
            return
        self._current = self._queue.popleft()
        self._setup_left = list(self._current.setup)
        self._send_setup_or_cmgs()

    def _send_setup_or_cmgs(self) -> None:
        assert self._current is not None
        if self._setup_left:
            command = self._setup_left.pop(0)
            self._command(State.SENDING_COMMAND, command, self.command_timeout)
        else:
            self._command(State.WAITING_PROMPT, self._current.cmgs, self.command_timeout)

    def _prompt_received(self) -> None:
        assert self._current is not None
        self._cancel_timer()
        self._write(self._current.body + CTRL_Z)
        self.state = State.SENDING_TEXT
        self._start_timer(self.send_timeout, "AT+CMGS (waiting for +CMGS)")

    def _finish_current(self, error: ModemError | None) -> None:
        sms, self._current = self._current, None
        assert sms is not None
        self.state = State.IDLE
        if error is None:
            assert sms.reference is not None
            sms.done.callback(sms.reference)
        else:
            sms.done.errback(error)
        self._next()

    # -- lines -----------------------------------------------------------------------

    def line_received(self, line: str) -> None:
        """One non-empty line from the modem, dispatched on the current state."""
        if line.startswith("AT"):
            return  # echo of our own command (before ATE0 takes effect)
        error = parse_error(line)
        final = line == "OK" or error is not None
        state = self.state
        if state is State.INIT_PIN_QUERY and line.startswith("+CPIN:"):
            self._pin_status = line[len("+CPIN:") :].strip()
        elif state is State.SENDING_TEXT and line.startswith("+CMGS:"):
            assert self._current is not None
            self._current.reference = line[len("+CMGS:") :].strip()
        elif not final or state in (State.IDLE, State.RECOVERING, State.FAILED, State.STARTING):
            self._record_unsolicited(line)
        elif state in _INIT_STEPS or state is State.INIT_PIN_ENTRY:
            self._init_result(state, error)
        elif state is State.SENDING_COMMAND:
            self._cancel_timer()
            if error is not None:
                self._finish_current(error)
            else:
                self._send_setup_or_cmgs()
        elif state is State.WAITING_PROMPT:
            if error is not None:
                self._cancel_timer()
                self._finish_current(error)
            else:
                self._record_unsolicited(line)  # a stray OK; the prompt is still to come
        elif state is State.SENDING_TEXT:
            self._cancel_timer()
            assert self._current is not None
            if error is None and self._current.reference is None:
                error = ModemError(None, "modem answered OK without a +CMGS reference")
            self._finish_current(error)

    def _init_result(self, state: State, error: ModemError | None) -> None:
        self._cancel_timer()
        if state is State.INIT_ECHO:
            if error is not None:
                return self._fail_init(error)
            return self._step(State.INIT_CMEE)
        if state is State.INIT_CMEE:
            # Modems without numeric error reporting still work; errors are then plain ERROR.
            return self._step(State.INIT_PIN_QUERY)
        if state is State.INIT_PIN_QUERY:
            if error is not None:
                return self._fail_init(error)
            return self._pin_answered()
        if state is State.INIT_PIN_ENTRY:
            if error is not None:
                return self._fail_init(error)
            return self._step(State.INIT_TEXT_MODE)
        if state is State.INIT_TEXT_MODE:
            if error is not None:
                return self._fail_init(error)
            self.state = State.IDLE
            self.ready.callback(None)
            return self._next()

    def _pin_answered(self) -> None:
        status = self._pin_status
        if status == "READY":
            return self._step(State.INIT_TEXT_MODE)
        if status == "SIM PIN":
            if self.pin is None:
                return self._fail_init(
                    ModemError(
                        11,
                        "SIM asks for a PIN but none is configured: set the SIM PIN",
                        source="CME",
                    )
                )
            self._command(State.INIT_PIN_ENTRY, f'AT+CPIN="{self.pin}"', self.pin_timeout)
            return
        return self._fail_init(
            ModemError(None, f"SIM is not ready ({status or 'no +CPIN answer'}); check the SIM")
        )

    def _step(self, state: State) -> None:
        self._command(state, _INIT_STEPS[state], self.command_timeout)

    def _fail_init(self, error: ModemError) -> None:
        self.state = State.FAILED
        self._cancel_timer()
        self._fail_all(error)
        self.ready.errback(error)

    def _fail_all(self, error: ModemError) -> None:
        pending = [self._current] if self._current else []
        pending += list(self._queue)
        self._current = None
        self._queue.clear()
        for sms in pending:
            sms.done.errback(error)

    def _record_unsolicited(self, line: str) -> None:
        self.unsolicited.append(line)
        if len(self.unsolicited) > MAX_UNSOLICITED:
            del self.unsolicited[0]  # a modem sends URCs for months: keep only the latest
        if self.on_unsolicited is not None:
            self.on_unsolicited(line)

    # -- commands and timers -----------------------------------------------------------

    def _command(self, state: State, command: str, timeout: float) -> None:
        self.state = state
        self._write(command.encode("ascii") + b"\r")
        step = "AT+CPIN=<pin>" if state is State.INIT_PIN_ENTRY else command
        self._start_timer(timeout, step)

    def _write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def _start_timer(self, seconds: float, step: str) -> None:
        self._cancel_timer()
        self._timer = self.clock.callLater(seconds, self._timed_out, step, seconds)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timed_out(self, step: str, seconds: float) -> None:
        self._timer = None
        error = ModemTimeout(step, seconds)
        state = self.state
        if state in _INIT_STEPS or state is State.INIT_PIN_ENTRY:
            return self._fail_init(error)
        if state is State.WAITING_PROMPT:
            self._write(ESC)  # leave text entry if the prompt comes late
        # Late answers to the abandoned step are swallowed while the modem settles.
        sms, self._current = self._current, None
        self.state = State.RECOVERING
        self._timer = self.clock.callLater(self.settle_time, self._settled)
        if sms is not None:
            sms.done.errback(error)

    def _settled(self) -> None:
        self._timer = None
        self.state = State.IDLE
        self._next()
