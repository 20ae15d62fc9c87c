"""
Fuzzing the GSM modem's AT dialogue (secmail/sms/at.py) with what a real serial line can carry.

A script of modem output (answers in and out of turn, URCs, +CMS/+CME errors, "> " prompts at
odd times, partial lines, garbage), sends and clock steps is played against a ModemProtocol on a
task.Clock, the output cut at arbitrary byte boundaries. Checked: nothing raises; the buffer and
the list of unsolicited lines stay bounded; only AT commands and SMS bodies go to the modem;
every send ends, once time passes, in a reference or a classified ModemError; and the outcome
is the same however the output was cut into reads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from secmail.sms.at import (
    CTRL_Z,
    ESC,
    MAX_BUFFER,
    MAX_UNSOLICITED,
    ModemError,
    ModemProtocol,
    State,
)
from secmail.sms.errors import SmsPermanentError, SmsTemporaryError, classify
from tests.fuzz.support import fuzz_settings

NUMBERS = ["+358401234567", "+12025550123"]
TEXTS = ["Your PIN is 123456", "PIN 654321 – €", "Код 111222"]
ANSWERS = [
    b"OK", b"ERROR", b"+CMS ERROR: 500", b"+CMS ERROR: 330", b"+CMS ERROR: x",
    b"+CME ERROR: 10", b"+CME ERROR: 16", b"+CME ERROR: SIM failure", b"+CME ERROR:",
    b"+CPIN: READY", b"+CPIN: SIM PIN", b"+CPIN: SIM PUK", b"+CMGS: 17", b"+CMGS:",
    b"RING", b'+CMTI: "SM",3', b"+CREG: 1", b"^RSSI:14", b"NO CARRIER", b"ATE0",
    b"AT+CMGS=\"+1\"", b"> ", b">", b"", b"\x00\xff", b"OK OK", b"+CDS: 6,1",
]  # fmt: skip
PIN = "1234"


@st.composite
def modem_output(draw: st.DrawFn) -> bytes:
    """One burst of what the modem says: lines with odd endings, prompts, noise."""
    pieces = []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.integers(0, 9))
        if kind <= 6:
            line = draw(st.sampled_from(ANSWERS))
            ending = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r", b""]))
            pieces.append(draw(st.sampled_from([b"\r\n", b""])) + line + ending)
        elif kind == 7:
            pieces.append(b"\r\n> ")
        elif kind == 8:
            pieces.append(draw(st.binary(max_size=30)))
        else:
            pieces.append(
                b"z" * draw(st.sampled_from([MAX_BUFFER - 1, MAX_BUFFER, MAX_BUFFER + 3]))
            )
    return b"".join(pieces)


Step = tuple[str, Any]
ANSWER = st.sampled_from([b"", b"", b"", b"RING\r\n", b"\r\n> ", b"\r\n+CMS ERROR: 331\r\n"])
STEPS = st.integers(0, 9).flatmap(
    lambda kind: (
        ANSWER.map(lambda extra: ("answer", extra))
        if kind <= 5
        else modem_output().map(lambda data: ("output", data))
        if kind <= 7
        else st.tuples(st.sampled_from(NUMBERS), st.sampled_from(TEXTS)).map(lambda s: ("send", s))
        if kind <= 8
        else st.sampled_from([0.5, 1.0, 3.0, 11.0, 61.0]).map(lambda s: ("wait", s))
    )
)


@dataclass
class Run:
    """What one play of a script did: everything the invariants and the comparison look at."""

    written: list[bytes] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)
    ready: str = "pending"
    state: State = State.STARTING
    unsolicited: list[str] = field(default_factory=list)


def outcome_of(d: Deferred[Any]) -> str:
    results: list[Any] = []
    d.addBoth(results.append)
    if not results:
        return "pending"
    result = results[0]
    if isinstance(result, Failure):
        error = result.value
        assert isinstance(error, ModemError), f"unclassified error {error!r}"
        assert classify(error) in (SmsTemporaryError, SmsPermanentError)
        assert str(error), "an error without words"
        return f"{type(error).__name__}({error})"
    assert isinstance(result, str | type(None)), result
    return f"sent {result}"


def proper_answer(state: State, pin: str | None) -> bytes:
    """What a working modem answers in this state: so that scripts also get through a send."""
    if state is State.INIT_PIN_QUERY:
        return b"\r\n+CPIN: " + (b"SIM PIN" if pin else b"READY") + b"\r\n\r\nOK\r\n"
    if state is State.WAITING_PROMPT:
        return b"\r\n> "
    if state is State.SENDING_TEXT:
        return b"\r\n+CMGS: 7\r\n\r\nOK\r\n"
    return b"\r\nOK\r\n"


def play(script: list[Step], cuts: list[int], pin: str | None, warm: bool) -> Run:
    """Plays the script (on a modem already initialised if C{warm}); each modem burst is
    delivered in reads cut at the given offsets."""
    clock = Clock()
    transport = StringTransport()
    modem = ModemProtocol(clock, pin)
    modem.makeConnection(transport)
    while warm and modem.state not in (State.IDLE, State.FAILED):
        modem.dataReceived(proper_answer(modem.state, pin))
    sends: list[Deferred[str]] = []
    run = Run()
    cut_iter = iter(cuts)
    for kind, value in script:
        if kind == "answer":
            kind, value = "output", proper_answer(modem.state, pin) + value
        if kind == "output":
            points = sorted({next(cut_iter, 0) % (len(value) + 1) for _ in range(3)})
            bounds = [0, *points, len(value)]
            for a, b in zip(bounds, bounds[1:], strict=False):
                if b > a:
                    modem.dataReceived(value[a:b])
                assert len(modem._buffer) <= MAX_BUFFER  # noqa: SLF001
        elif kind == "send":
            sends.append(Deferred.fromCoroutine(modem.send(*value)))
        else:
            clock.advance(value)
        assert len(modem.unsolicited) <= MAX_UNSOLICITED
    # Time passes with the modem silent: every send must end one way or the other.
    for _ in range(200):
        if not clock.getDelayedCalls():
            break
        clock.advance(max(1.0, min(c.getTime() for c in clock.getDelayedCalls()) - clock.seconds()))
    run.outcomes = [outcome_of(d) for d in sends]
    assert "pending" not in run.outcomes, f"a send never ended: {run.outcomes}"
    run.ready = outcome_of(modem.ready)
    run.state = modem.state
    assert run.state in (State.IDLE, State.FAILED), run.state
    run.written = [transport.value()]
    run.unsolicited = list(modem.unsolicited)
    modem.connectionLost(Failure(Exception("unplugged")))
    assert outcome_of(modem.closed) == "sent None"
    return run


ALLOWED_COMMANDS = (
    b"ATE0\r", b"AT+CMEE=1\r", b"AT+CPIN?\r", b'AT+CPIN="1234"\r', b"AT+CMGF=1\r",
    b'AT+CSCS="GSM"\r', b'AT+CSCS="UCS2"\r', b"AT+CSMP=17,167,0,0\r", b"AT+CSMP=17,167,0,8\r",
    ESC,
)  # fmt: skip


def assert_only_commands(written: bytes) -> None:
    """Everything written is one of our commands, an AT+CMGS line, or a body ended by Ctrl-Z."""
    rest = written
    while rest:
        for command in ALLOWED_COMMANDS:
            if rest.startswith(command):
                rest = rest[len(command) :]
                break
        else:
            if rest.startswith(b"AT+CMGS="):
                end = rest.index(b"\r")
                rest = rest[end + 1 :]
            else:
                end = rest.find(CTRL_Z)
                assert end > 0, f"unexpected bytes to the modem: {rest[:80]!r}"
                assert rest[:end].isascii() and b"\r" not in rest[:end]
                rest = rest[end + 1 :]


@fuzz_settings(ci_examples=300)
@given(
    script=st.lists(STEPS, max_size=20),
    cuts=st.lists(st.integers(0, 20_000), max_size=30),
    pin=st.sampled_from([None, PIN]),
    warm=st.booleans(),
)
def test_modem_dialogue_survives_any_output(
    script: list[Step], cuts: list[int], pin: str | None, warm: bool
) -> None:
    """Any modem output, cut anywhere: no exception, bounded state, every send ends classified,
    and the same outcome as when each burst arrives in one read."""
    run = play(script, cuts, pin, warm)
    assert_only_commands(run.written[0])
    whole = play(script, [], pin, warm)
    assert (run.outcomes, run.ready, run.state, run.written, run.unsolicited) == (
        whole.outcomes,
        whole.ready,
        whole.state,
        whole.written,
        whole.unsolicited,
    )


def test_a_megabyte_of_garbage() -> None:
    """1 MB without a newline, in one read or in 4 KB reads, leaves the buffer bounded and the
    modem able to answer the next command; 1 MB of lines takes a fraction of a second."""
    for chunk in (1 << 20, 4096):
        clock = Clock()
        transport = StringTransport()
        modem = ModemProtocol(clock)
        modem.makeConnection(transport)
        garbage = bytes(range(32, 127)) * ((1 << 20) // 95)
        started = time.process_time()
        for at in range(0, len(garbage), chunk):
            modem.dataReceived(garbage[at : at + chunk])
            assert len(modem._buffer) <= MAX_BUFFER  # noqa: SLF001
        assert len(garbage) > 1_000_000
        modem.dataReceived(b"OK\r\n")  # the end of the garbage line, not an answer
        assert modem.state is State.INIT_ECHO
        modem.dataReceived(b"\r\nOK\r\n")
        assert modem.state is State.INIT_CMEE
        modem.dataReceived(b"RING\r\n" * ((1 << 20) // 6))
        assert len(modem.unsolicited) == MAX_UNSOLICITED
        assert time.process_time() - started < 5.0
