"""The modem AT dialogue, driven by feeding modem output and checking bytes written and states."""

from __future__ import annotations

import time
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from secmail.sms.at import (
    MAX_BUFFER,
    MAX_UNSOLICITED,
    ModemError,
    ModemGone,
    ModemProtocol,
    ModemTimeout,
    State,
    parse_error,
    prepare,
)

NUMBER = "+358401234567"
NUMBER_UCS2 = "002B003300350038003400300031003200330034003500360037"


class ModemTestCase(SynchronousTestCase):
    def make(self, pin: str | None = None, **kwargs: Any) -> ModemProtocol:
        self.clock = Clock()
        self.transport = StringTransport()
        self.modem = ModemProtocol(self.clock, pin, **kwargs)
        self.modem.makeConnection(self.transport)
        return self.modem

    def written(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def answer(self, *lines: str) -> None:
        for line in lines:
            self.modem.dataReceived(b"\r\n" + line.encode() + b"\r\n")

    def expect(self, command: str, *lines: str) -> None:
        """The modem was sent exactly `command`; it answers with `lines`."""
        self.assertEqual(self.written(), command.encode() + b"\r")
        self.answer(*lines)

    def init_modem(self, pin: str | None = None, **kwargs: Any) -> ModemProtocol:
        modem = self.make(pin, **kwargs)
        self.expect("ATE0", "OK")
        self.expect("AT+CMEE=1", "OK")
        self.expect("AT+CPIN?", "+CPIN: READY", "OK")
        self.expect("AT+CMGF=1", "OK")
        self.assertIsNone(self.successResultOf(modem.ready))
        self.assertIs(modem.state, State.IDLE)
        return modem

    def send(self, number: str = NUMBER, text: str = "Your PIN is 1234") -> Deferred[str]:
        return Deferred.fromCoroutine(self.modem.send(number, text))

    def through_prompt(self, number: str = NUMBER) -> None:
        """Walk the GSM setup commands up to the prompt being shown."""
        self.expect('AT+CSCS="GSM"', "OK")
        self.expect("AT+CSMP=17,167,0,0", "OK")
        self.assertEqual(self.written(), f'AT+CMGS="{number}"\r'.encode())
        self.assertIs(self.modem.state, State.WAITING_PROMPT)
        self.modem.dataReceived(b"\r\n> ")

    def error_of(self, d: Deferred[Any], kind: type[Exception] = ModemError) -> Any:
        return self.failureResultOf(d, kind).value


class InitTests(ModemTestCase):
    def test_full_init_sim_ready(self) -> None:
        """A modem with an unlocked SIM goes through echo, CMEE, CPIN? and text mode to IDLE."""
        self.init_modem()

    def test_init_tolerates_echo(self) -> None:
        """An echoed command line before ATE0 takes effect is not mistaken for an answer."""
        self.make()
        self.expect("ATE0", "ATE0", "OK")
        self.assertIs(self.modem.state, State.INIT_CMEE)
        self.assertEqual(self.modem.unsolicited, [])

    def test_init_with_pin_entry(self) -> None:
        """When the SIM asks for its PIN, the configured PIN is entered, then text mode."""
        modem = self.make(pin="1234")
        self.expect("ATE0", "OK")
        self.expect("AT+CMEE=1", "OK")
        self.expect("AT+CPIN?", "+CPIN: SIM PIN", "OK")
        self.assertIs(modem.state, State.INIT_PIN_ENTRY)
        self.expect('AT+CPIN="1234"', "OK")
        self.expect("AT+CMGF=1", "OK")
        self.successResultOf(modem.ready)
        self.assertIs(modem.state, State.IDLE)

    def test_wrong_pin(self) -> None:
        """A wrong PIN fails `ready` with CME 16 and leaves the modem FAILED."""
        modem = self.make(pin="9999")
        self.expect("ATE0", "OK")
        self.expect("AT+CMEE=1", "OK")
        self.expect("AT+CPIN?", "+CPIN: SIM PIN", "OK")
        self.expect('AT+CPIN="9999"', "+CME ERROR: 16")
        error = self.error_of(modem.ready)
        self.assertEqual((error.source, error.code, error.text), ("CME", 16, "incorrect password"))
        self.assertFalse(error.temporary)
        self.assertIs(modem.state, State.FAILED)
        self.assertEqual(self.written(), b"")

    def test_pin_required_none_configured(self) -> None:
        """A SIM asking for a PIN with none configured fails `ready` saying what to set."""
        modem = self.make()
        self.expect("ATE0", "OK")
        self.expect("AT+CMEE=1", "OK")
        self.expect("AT+CPIN?", "+CPIN: SIM PIN", "OK")
        error = self.error_of(modem.ready)
        self.assertEqual(error.code, 11)
        self.assertIn("PIN", str(error))
        self.assertEqual(self.written(), b"")

    def test_sim_puk(self) -> None:
        """A SIM locked with PUK is not something we can fix: `ready` fails naming the state."""
        modem = self.make(pin="1234")
        self.expect("ATE0", "OK")
        self.expect("AT+CMEE=1", "OK")
        self.expect("AT+CPIN?", "+CPIN: SIM PUK", "OK")
        self.assertIn("SIM PUK", str(self.error_of(modem.ready)))

    def test_sim_not_inserted(self) -> None:
        """CME 10 on AT+CPIN? fails `ready` with 'SIM not inserted'."""
        modem = self.make()
        self.expect("ATE0", "OK")
        self.expect("AT+CMEE=1", "OK")
        self.expect("AT+CPIN?", "+CME ERROR: 10")
        self.assertEqual(self.error_of(modem.ready).text, "SIM not inserted")

    def test_cmee_unsupported_is_tolerated(self) -> None:
        """A modem answering ERROR to AT+CMEE=1 is still initialised."""
        self.make()
        self.expect("ATE0", "OK")
        self.expect("AT+CMEE=1", "ERROR")
        self.assertIs(self.modem.state, State.INIT_PIN_QUERY)

    def test_init_timeout(self) -> None:
        """A silent modem fails `ready` with ModemTimeout after the command timeout."""
        modem = self.make(command_timeout=5)
        self.clock.advance(4.9)
        self.assertNoResult(modem.ready)
        self.clock.advance(0.1)
        error = self.error_of(modem.ready, ModemTimeout)
        self.assertEqual(error.step, "ATE0")
        self.assertIs(modem.state, State.FAILED)

    def test_pin_not_in_timeout_message(self) -> None:
        """A timeout during PIN entry does not put the PIN into the error text."""
        modem = self.make(pin="4321", pin_timeout=30)
        self.expect("ATE0", "OK")
        self.expect("AT+CMEE=1", "OK")
        self.expect("AT+CPIN?", "+CPIN: SIM PIN", "OK")
        self.clock.advance(30)
        self.assertNotIn("4321", str(self.error_of(modem.ready, ModemTimeout)))

    def test_urc_during_init(self) -> None:
        """Unsolicited codes during init are recorded and do not end a step."""
        self.make()
        self.expect("ATE0", "+CREG: 1", "^RSSI:14", "OK")
        self.assertIs(self.modem.state, State.INIT_CMEE)
        self.assertEqual(self.modem.unsolicited, ["+CREG: 1", "^RSSI:14"])

    def test_connection_lost_during_init(self) -> None:
        """A modem unplugged during init fails `ready` with a temporary error."""
        modem = self.make()
        modem.connectionLost(Failure(ConnectionLost()))
        error = self.error_of(modem.ready, ModemGone)
        self.assertTrue(error.temporary)
        self.assertIs(modem.state, State.CLOSED)

    def test_send_before_ready_waits(self) -> None:
        """A send issued during init starts only once the modem is ready."""
        self.make()
        d = self.send()
        self.expect("ATE0", "OK")
        self.expect("AT+CMEE=1", "OK")
        self.expect("AT+CPIN?", "+CPIN: READY", "OK")
        self.expect("AT+CMGF=1", "OK")
        self.assertEqual(self.written(), b'AT+CSCS="GSM"\r')
        self.assertNoResult(d)

    def test_send_queued_fails_when_init_fails(self) -> None:
        """A send waiting for init fails with init's error."""
        self.make(command_timeout=5)
        d = self.send()
        self.clock.advance(5)
        self.error_of(d, ModemTimeout)
        self.error_of(self.modem.ready, ModemTimeout)

    def test_send_after_failed_init(self) -> None:
        """Sending on a modem whose init failed fails at once."""
        self.make(command_timeout=5)
        self.clock.advance(5)
        self.failureResultOf(self.modem.ready)
        self.error_of(self.send())


class SendTests(ModemTestCase):
    def test_send_gsm_text_exact_bytes(self) -> None:
        """GSM text: charset, DCS, AT+CMGS with the number, text and Ctrl-Z, +CMGS ref."""
        self.init_modem()
        d = self.send(text="Your PIN is 1234")
        self.through_prompt()
        self.assertEqual(self.written(), b"Your PIN is 1234\x1a")
        self.assertIs(self.modem.state, State.SENDING_TEXT)
        self.answer("+CMGS: 42")
        self.assertNoResult(d)
        self.answer("OK")
        self.assertEqual(self.successResultOf(d), "42")
        self.assertIs(self.modem.state, State.IDLE)

    def test_send_ucs2_text(self) -> None:
        """Text outside GSM-7 goes as UCS-2 hex with DCS 8, the number hex-encoded too."""
        self.init_modem()
        d = self.send(text="Ж 中")
        self.expect('AT+CSCS="UCS2"', "OK")
        self.expect("AT+CSMP=17,167,0,8", "OK")
        self.assertEqual(self.written(), f'AT+CMGS="{NUMBER_UCS2}"\r'.encode())
        self.modem.dataReceived(b"\r\n> ")
        self.assertEqual(self.written(), b"04160020" + b"4E2D" + b"\x1a")
        self.answer("+CMGS: 7", "OK")
        self.assertEqual(self.successResultOf(d), "7")

    def test_send_gsm_extension_via_ucs2_charset(self) -> None:
        """ "€" is GSM-7 (extension) but not typeable as ASCII: UCS-2 charset, DCS 0."""
        self.init_modem()
        self.send(text="5 €")
        self.expect('AT+CSCS="UCS2"', "OK")
        self.expect("AT+CSMP=17,167,0,0", "OK")
        self.assertEqual(self.written(), f'AT+CMGS="{NUMBER_UCS2}"\r'.encode())
        self.modem.dataReceived(b"> ")
        self.assertEqual(self.written(), b"0035002020AC\x1a")

    def test_cms_error_330(self) -> None:
        """+CMS ERROR: 330 after the text fails the send with 'SMSC address unknown'."""
        self.init_modem()
        d = self.send()
        self.through_prompt()
        self.written()
        self.answer("+CMS ERROR: 330")
        error = self.error_of(d)
        self.assertEqual((error.source, error.code), ("CMS", 330))
        self.assertIn("SMSC address unknown", str(error))
        self.assertIs(self.modem.state, State.IDLE)

    def test_plain_error_on_cmgs(self) -> None:
        """A plain ERROR instead of the prompt fails the send and frees the modem."""
        self.init_modem()
        d = self.send()
        self.expect('AT+CSCS="GSM"', "OK")
        self.expect("AT+CSMP=17,167,0,0", "OK")
        self.expect(f'AT+CMGS="{NUMBER}"', "ERROR")
        error = self.error_of(d)
        self.assertIsNone(error.code)
        self.assertIs(self.modem.state, State.IDLE)

    def test_error_on_setup_command(self) -> None:
        """An error on AT+CSCS fails the send without going on to AT+CMGS."""
        self.init_modem()
        d = self.send()
        self.expect('AT+CSCS="GSM"', "+CME ERROR: 4")
        self.assertEqual(self.error_of(d).text, "operation not supported")
        self.assertEqual(self.written(), b"")

    def test_timeout_waiting_for_prompt(self) -> None:
        """No prompt in time: the send fails, ESC leaves text entry, late answers are swallowed."""
        self.init_modem(command_timeout=10, settle_time=2)
        d = self.send()
        self.expect('AT+CSCS="GSM"', "OK")
        self.expect("AT+CSMP=17,167,0,0", "OK")
        self.written()
        self.clock.advance(10)
        error = self.error_of(d, ModemTimeout)
        self.assertTrue(error.temporary)
        self.assertEqual(self.written(), b"\x1b")
        self.assertIs(self.modem.state, State.RECOVERING)
        d2 = self.send()
        self.answer("OK")  # late answer to the abandoned step
        self.assertEqual(self.written(), b"")
        self.clock.advance(2)
        self.assertIs(self.modem.state, State.SENDING_COMMAND)
        self.assertEqual(self.written(), b'AT+CSCS="GSM"\r')
        self.assertNoResult(d2)

    def test_timeout_waiting_for_cmgs(self) -> None:
        """No +CMGS in time after Ctrl-Z: ModemTimeout, and the modem is usable afterwards."""
        self.init_modem(send_timeout=60, settle_time=2)
        d = self.send()
        self.through_prompt()
        self.written()
        self.clock.advance(59)
        self.assertNoResult(d)
        self.clock.advance(1)
        self.error_of(d, ModemTimeout)
        self.assertEqual(self.written(), b"")  # no ESC: the text was already submitted
        self.answer("+CMGS: 9", "OK")
        self.clock.advance(2)
        self.assertIs(self.modem.state, State.IDLE)

    def test_ok_without_reference(self) -> None:
        """OK after the text without a +CMGS line is an error, not an empty reference."""
        self.init_modem()
        d = self.send()
        self.through_prompt()
        self.answer("OK")
        self.error_of(d)

    def test_urcs_mid_dialogue(self) -> None:
        """RING, +CMTI, +CDS and friends between steps neither end nor break the send."""
        self.init_modem()
        d = self.send()
        self.expect('AT+CSCS="GSM"', "RING", "OK")
        self.expect("AT+CSMP=17,167,0,0", '+CMTI: "SM",3', "OK")
        self.assertEqual(self.written(), f'AT+CMGS="{NUMBER}"\r'.encode())
        self.answer("+CREG: 1")
        self.modem.dataReceived(b"\r\n> ")
        self.assertEqual(self.written(), b"Your PIN is 1234\x1a")
        self.answer("^RSSI:12", "+CMGS: 5", '+CDSI: "SM",4', "", "OK")
        self.assertEqual(self.successResultOf(d), "5")
        self.assertEqual(
            self.modem.unsolicited,
            ["RING", '+CMTI: "SM",3', "+CREG: 1", "^RSSI:12", '+CDSI: "SM",4'],
        )

    def test_unsolicited_callback(self) -> None:
        """The on_unsolicited callback sees each unsolicited line."""
        seen: list[str] = []
        self.init_modem(on_unsolicited=seen.append)
        self.answer("RING")
        self.assertEqual(seen, ["RING"])
        self.assertIs(self.modem.state, State.IDLE)

    def test_two_sends_in_order(self) -> None:
        """A second send waits for the first to finish, then goes out."""
        self.init_modem()
        first = self.send(text="first")
        second = self.send(NUMBER, "second")
        self.through_prompt()
        self.assertEqual(self.written(), b"first\x1a")
        self.answer("+CMGS: 1", "OK")
        self.assertEqual(self.successResultOf(first), "1")
        self.assertNoResult(second)
        self.through_prompt()
        self.assertEqual(self.written(), b"second\x1a")
        self.answer("+CMGS: 2", "OK")
        self.assertEqual(self.successResultOf(second), "2")

    def test_queue_continues_after_failure(self) -> None:
        """A failed send does not block the one queued behind it."""
        self.init_modem()
        first = self.send()
        second = self.send()
        self.expect('AT+CSCS="GSM"', "ERROR")
        self.error_of(first)
        self.assertEqual(self.written(), b'AT+CSCS="GSM"\r')
        self.assertNoResult(second)

    def test_connection_lost_mid_send(self) -> None:
        """Unplugging the modem after the text fails current and queued sends temporarily."""
        self.init_modem()
        first = self.send()
        second = self.send()
        self.through_prompt()
        self.modem.connectionLost(Failure(ConnectionLost()))
        self.assertTrue(self.error_of(first, ModemGone).temporary)
        self.error_of(second, ModemGone)
        self.assertIs(self.modem.state, State.CLOSED)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.error_of(self.send(), ModemGone)

    def test_prompt_split_across_reads(self) -> None:
        """A prompt arriving as ">" then " " is still recognised."""
        self.init_modem()
        self.send()
        self.expect('AT+CSCS="GSM"', "OK")
        self.expect("AT+CSMP=17,167,0,0", "OK")
        self.written()
        self.modem.dataReceived(b"\r\n>")
        self.assertEqual(self.written(), b"")
        self.modem.dataReceived(b" ")
        self.assertEqual(self.written(), b"Your PIN is 1234\x1a")

    def test_lines_split_across_reads(self) -> None:
        """Result lines arriving byte by byte are reassembled."""
        self.init_modem()
        d = self.send()
        self.through_prompt()
        for byte in b"\r\n+CMGS: 77\r\n\r\nOK\r\n":
            self.modem.dataReceived(bytes([byte]))
        self.assertEqual(self.successResultOf(d), "77")

    def test_number_validation(self) -> None:
        """Only international numbers are accepted; nothing is written for a bad one."""
        self.init_modem()
        for bad in ["0401234567", "358401234567", "+0401234567", "+35840 1234567", "+1", ""]:
            with self.subTest(number=bad):
                self.error_of(self.send(number=bad), ValueError)
        self.assertEqual(self.written(), b"")
        self.assertIs(self.modem.state, State.IDLE)

    def test_too_long_text(self) -> None:
        """Text needing more than one part is refused until concatenation is implemented."""
        self.init_modem()
        self.error_of(self.send(text="a" * 161), ValueError)
        self.error_of(self.send(text="Ж" * 71), ValueError)
        self.assertEqual(self.written(), b"")


class NoiseTests(ModemTestCase):
    """What a noisy or broken serial line sends: the dialogue stays bounded and in step."""

    def test_many_lines_in_one_read_take_linear_time(self) -> None:
        """2 MB of unsolicited lines in one read is handled in about a second, not a minute."""
        self.init_modem()
        data = b"RING\r\n" * (2_000_000 // 6)
        started = time.process_time()
        self.modem.dataReceived(data)
        self.assertLess(time.process_time() - started, 3.0)
        self.assertIs(self.modem.state, State.IDLE)

    def test_unsolicited_lines_are_bounded(self) -> None:
        """Only the latest MAX_UNSOLICITED lines are kept; the callback still sees every one."""
        seen: list[str] = []
        self.init_modem(on_unsolicited=seen.append)
        for i in range(MAX_UNSOLICITED + 50):
            self.answer(f"+CREG: {i}")
        self.assertEqual(len(seen), MAX_UNSOLICITED + 50)
        self.assertEqual(len(self.modem.unsolicited), MAX_UNSOLICITED)
        self.assertEqual(self.modem.unsolicited[-1], f"+CREG: {MAX_UNSOLICITED + 49}")

    def test_tail_of_an_overlong_line_is_not_an_answer(self) -> None:
        """A line over MAX_BUFFER cut by the reads is dropped whole: its tail "OK" is no OK."""
        self.init_modem()
        d = self.send()
        self.assertEqual(self.written(), b'AT+CSCS="GSM"\r')
        self.modem.dataReceived(b"x" * (MAX_BUFFER + 1))
        self.modem.dataReceived(b"OK\r\n")
        self.assertEqual(self.written(), b"")
        self.assertIs(self.modem.state, State.SENDING_COMMAND)
        self.answer("OK")  # the real answer still counts
        self.assertEqual(self.written(), b"AT+CSMP=17,167,0,0\r")
        self.assertNoResult(d)

    def test_overlong_line_in_one_read_is_dropped(self) -> None:
        """A line over MAX_BUFFER is dropped the same when it arrives in one read."""
        self.init_modem()
        self.modem.dataReceived(b"x" * (MAX_BUFFER + 1) + b"\r\nRING\r\n")
        self.assertEqual(self.modem.unsolicited, ["RING"])


class PureTests(SynchronousTestCase):
    def test_parse_error_codes(self) -> None:
        """Error result lines map to codes, sources, readable text and temporariness."""
        e = parse_error("+CMS ERROR: 331")
        assert e is not None
        self.assertEqual(
            (e.source, e.code, e.text, e.temporary), ("CMS", 331, "no network service", True)
        )
        e = parse_error("+CMS ERROR: 500")
        assert e is not None
        self.assertEqual(e.text, "unknown error")
        e = parse_error("+CME ERROR: 11")
        assert e is not None
        self.assertEqual((e.code, e.text, e.temporary), (11, "SIM PIN required", False))
        e = parse_error("+CME ERROR: 999")
        assert e is not None
        self.assertEqual(e.text, "error 999")
        e = parse_error("+CME ERROR: SIM failure")
        assert e is not None
        self.assertEqual((e.code, e.text), (None, "SIM failure"))
        self.assertIsNone(parse_error("OK"))
        self.assertIsNone(parse_error("+CMGS: 3"))

    def test_prepare_limits(self) -> None:
        """Exactly one part is accepted at both encodings' limits."""
        self.assertEqual(len(prepare(NUMBER, "a" * 160).body), 160)
        self.assertEqual(len(prepare(NUMBER, "Ж" * 70).body), 280)
        self.assertEqual(prepare(NUMBER, "$5").setup[0], 'AT+CSCS="UCS2"')
