"""ModemLink: opening the serial port, reopening with backoff, waiting for a ready modem."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from secmail.sms.at import ModemError, ModemGone, ModemProtocol, ModemTimeout, State
from secmail.sms.errors import SmsPermanentError, classify
from secmail.sms.modem import LinkState, ModemLink

NUMBER = "+358401234567"


class FakeSerial(StringTransport):
    """A serial port whose loseConnection really disconnects, as SerialPort's does."""

    def __init__(self, protocol: ModemProtocol) -> None:
        super().__init__()
        self.protocol = protocol

    def loseConnection(self) -> None:
        super().loseConnection()
        self.protocol.connectionLost(Failure(ConnectionLost()))


class LinkTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.opened: list[FakeSerial] = []
        self.fail_opens = 0
        self.pin: str | None = None
        self.link = ModemLink(
            self.clock,
            self.open_port,
            lambda: ModemProtocol(self.clock, self.pin, command_timeout=5),
            ready_timeout=30,
        )

    def open_port(self, protocol: ModemProtocol) -> object:
        if self.fail_opens:
            self.fail_opens -= 1
            raise OSError(2, "No such file or directory: '/dev/ttyUSB0'")
        port = FakeSerial(protocol)
        protocol.makeConnection(port)
        self.opened.append(port)
        return port

    def answer(self, *lines: str) -> None:
        port = self.opened[-1]
        for line in lines:
            port.protocol.dataReceived(b"\r\n" + line.encode() + b"\r\n")

    def initialise(self, cpin: str = "+CPIN: READY") -> None:
        self.answer("OK", "OK", cpin, "OK")
        if cpin == "+CPIN: SIM PIN":
            self.answer("OK")
        self.answer("OK")

    def error_of(self, d: Deferred[Any], kind: type[Exception] = ModemError) -> Any:
        return self.failureResultOf(d, kind).value

    def test_open_and_send(self) -> None:
        """Once the modem is initialised, a send goes through the current protocol."""
        self.link.start()
        self.initialise()
        self.assertIs(self.link.state, LinkState.READY)
        d = Deferred.fromCoroutine(self.link.send(NUMBER, "hi"))
        proto = self.opened[-1].protocol
        self.assertIs(proto.state, State.SENDING_COMMAND)
        self.answer("OK", "OK")
        proto.dataReceived(b"> ")
        self.answer("+CMGS: 3", "OK")
        self.assertEqual(self.successResultOf(d), "3")

    def test_send_waits_for_ready(self) -> None:
        """A send issued while the modem initialises goes out once it is ready."""
        self.link.start()
        d = Deferred.fromCoroutine(self.link.send(NUMBER, "hi"))
        self.assertNoResult(d)
        self.initialise()
        self.assertEqual(self.opened[-1].protocol.state, State.SENDING_COMMAND)

    def test_send_wait_times_out(self) -> None:
        """With no modem for `ready_timeout` seconds, the send fails temporarily."""
        self.fail_opens = 100
        self.link.start()
        d = Deferred.fromCoroutine(self.link.send(NUMBER, "hi"))
        self.clock.advance(29)
        self.assertNoResult(d)
        self.clock.advance(1)
        self.assertTrue(self.error_of(d, ModemTimeout).temporary)

    def test_bad_number_fails_before_waiting(self) -> None:
        """Input errors are reported at once, even without a modem."""
        self.fail_opens = 100
        self.link.start()
        d = Deferred.fromCoroutine(self.link.send("0401234567", "hi"))
        error = self.error_of(d)
        self.assertFalse(error.temporary)
        self.assertIn("not in international form", str(error))

    def test_open_failure_backoff(self) -> None:
        """Failed opens are retried after 1, 2, 4 ... seconds, capped at 60."""
        self.fail_opens = 9
        self.link.start()
        delays = []
        while self.fail_opens:
            (call,) = self.clock.getDelayedCalls()
            delays.append(call.getTime() - self.clock.seconds())
            self.clock.advance(delays[-1])
        self.assertEqual(delays, [1, 2, 4, 8, 16, 32, 60, 60])
        self.assertEqual(self.opened, [])
        self.clock.advance(60)
        self.assertEqual(len(self.opened), 1)
        self.assertIs(self.link.state, LinkState.OPENING)

    def test_modem_disappears_and_returns(self) -> None:
        """A lost modem fails the pending send temporarily and is reopened after the backoff."""
        self.link.start()
        self.initialise()
        d = Deferred.fromCoroutine(self.link.send(NUMBER, "hi"))
        self.opened[-1].protocol.connectionLost(Failure(ConnectionLost()))
        self.assertTrue(self.error_of(d, ModemGone).temporary)
        self.assertIs(self.link.state, LinkState.WAITING_RETRY)
        self.clock.advance(1)
        self.assertEqual(len(self.opened), 2)
        self.initialise()
        self.assertIs(self.link.state, LinkState.READY)

    def test_backoff_resets_after_ready(self) -> None:
        """After a successful initialisation the next reopen waits 1 s again."""
        self.fail_opens = 3
        self.link.start()
        self.clock.pump([1, 2, 4])
        self.initialise()
        self.opened[-1].protocol.connectionLost(Failure(ConnectionLost()))
        (call,) = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime() - self.clock.seconds(), 1)

    def test_init_timeout_reopens(self) -> None:
        """A modem that stops answering during init is closed and reopened."""
        self.link.start()
        self.clock.advance(5)
        self.assertTrue(self.opened[0].disconnecting)
        self.assertIs(self.link.state, LinkState.WAITING_RETRY)
        self.clock.advance(1)
        self.assertEqual(len(self.opened), 2)

    def test_text_too_long_is_permanent(self) -> None:
        """Text that needs two SMS is refused at once, for good: another backend may take it."""
        self.link.start()
        d = Deferred.fromCoroutine(self.link.send(NUMBER, "x" * 161))
        error = self.error_of(d)
        self.assertFalse(error.temporary)
        self.assertIn("does not fit one message", str(error))
        self.assertIs(classify(error), SmsPermanentError)

    def test_silent_modem_is_reopened(self) -> None:
        """A plugged-in modem that stops answering is reopened after two timed-out sends."""
        self.link.start()
        self.initialise()
        d = Deferred.fromCoroutine(self.link.send(NUMBER, "hi"))
        self.clock.advance(5)  # the command timeout
        self.error_of(d, ModemTimeout)
        self.clock.advance(2)  # the modem settles after a timeout
        self.assertFalse(self.opened[0].disconnecting)
        d = Deferred.fromCoroutine(self.link.send(NUMBER, "hi"))
        self.clock.advance(5)
        self.error_of(d, ModemTimeout)
        self.assertTrue(self.opened[0].disconnecting)
        self.assertIs(self.link.state, LinkState.WAITING_RETRY)
        self.assertEqual(len(self.opened), 1)
        self.clock.advance(1)
        self.assertEqual(len(self.opened), 2)
        self.initialise()
        d = Deferred.fromCoroutine(self.link.send(NUMBER, "hi"))
        self.answer("OK", "OK")
        self.opened[-1].protocol.dataReceived(b"> ")
        self.answer("+CMGS: 4", "OK")
        self.assertEqual(self.successResultOf(d), "4")

    def test_one_timeout_then_success_keeps_the_link(self) -> None:
        """Timeouts must come in a row: a send that works in between resets the count."""
        self.link.start()
        self.initialise()
        for _ in range(2):
            d = Deferred.fromCoroutine(self.link.send(NUMBER, "hi"))
            self.clock.advance(5)
            self.error_of(d, ModemTimeout)
            self.clock.advance(2)
            d = Deferred.fromCoroutine(self.link.send(NUMBER, "hi"))
            self.answer("OK", "OK")
            self.opened[-1].protocol.dataReceived(b"> ")
            self.answer("+CMGS: 5", "OK")
            self.assertEqual(self.successResultOf(d), "5")
        self.assertEqual(len(self.opened), 1)
        self.assertFalse(self.opened[0].disconnecting)

    def test_wrong_pin_not_retried(self) -> None:
        """A refused PIN stops the link: retrying would burn PIN attempts towards a PUK lock."""
        self.pin = "9999"
        self.link.start()
        self.answer("OK", "OK", "+CPIN: SIM PIN", "OK", "+CME ERROR: 16")
        self.assertIs(self.link.state, LinkState.FAILED)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        error = self.error_of(Deferred.fromCoroutine(self.link.send(NUMBER, "hi")))
        self.assertEqual(error.code, 16)

    def test_wrong_pin_fails_waiting_sends(self) -> None:
        """Sends waiting for the modem learn at once that the PIN was refused."""
        self.pin = "9999"
        self.link.start()
        d = Deferred.fromCoroutine(self.link.send(NUMBER, "hi"))
        self.answer("OK", "OK", "+CPIN: SIM PIN", "OK", "+CME ERROR: 16")
        self.assertEqual(self.error_of(d).code, 16)

    def test_stop(self) -> None:
        """Stopping closes the port, fails waiting sends and schedules nothing."""
        self.link.start()
        d = Deferred.fromCoroutine(self.link.send(NUMBER, "hi"))
        self.link.stop()
        self.error_of(d, ModemGone)
        self.assertTrue(self.opened[0].disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIs(self.link.state, LinkState.STOPPED)
