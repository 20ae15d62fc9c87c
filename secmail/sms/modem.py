"""Keeping a GSM modem open: reopen with backoff when it fails to open or disappears.

`ModemLink` owns the serial port and a fresh `ModemProtocol` per opening. A send waits
(up to a timeout) for an initialised modem. A SIM that refuses its PIN is not retried:
each wrong attempt brings the SIM closer to a PUK lock, so that needs a person.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from secmail.sms.at import ModemError, ModemGone, ModemProtocol, ModemTimeout, prepare

log = Logger()

OpenPort = Callable[[ModemProtocol], object]
"""Opens the serial port for a protocol (connecting it) or raises; see `serial_opener`."""


def serial_opener(reactor: object, device: str, baudrate: int = 115200) -> OpenPort:
    """An `OpenPort` that opens `device` with Twisted's `SerialPort` (pyserial underneath)."""

    def open_port(protocol: ModemProtocol) -> object:
        from twisted.internet.serialport import SerialPort

        return SerialPort(protocol, device, reactor, baudrate=baudrate)

    return open_port


#: Sends in a row that may time out before a plugged-in but silent modem is reopened.
RESET_AFTER_TIMEOUTS = 2


class LinkState(Enum):
    STOPPED = "stopped"
    OPENING = "opening"
    READY = "ready"
    WAITING_RETRY = "waiting retry"
    FAILED = "failed"


class ModemLink:
    """One modem kept open across failures; `send` talks to whichever opening is ready."""

    name = "modem"

    def __init__(
        self,
        clock: IReactorTime,
        open_port: OpenPort,
        make_protocol: Callable[[], ModemProtocol],
        *,
        initial_delay: float = 1.0,
        max_delay: float = 60.0,
        ready_timeout: float = 30.0,
    ) -> None:
        self.clock = clock
        self.open_port = open_port
        self.make_protocol = make_protocol
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self.ready_timeout = ready_timeout
        self.state = LinkState.STOPPED
        self.delay = initial_delay
        self.error: ModemError | None = None
        """Why the link gave up (state FAILED)."""
        self.protocol: ModemProtocol | None = None
        self.timeouts = 0
        """Sends in a row that timed out on the current opening."""
        self._retry: IDelayedCall | None = None
        self._waiters: list[Deferred[ModemProtocol]] = []

    def start(self) -> None:
        if self.state is LinkState.STOPPED:
            self._open()

    def stop(self) -> None:
        self.state = LinkState.STOPPED
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        protocol, self.protocol = self.protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.loseConnection()
        self._release_waiters(ModemGone("modem link stopped"))

    async def send(self, number: str, text: str) -> str:
        """Send one SMS through the modem, waiting up to `ready_timeout` for it to be ready."""
        try:
            prepare(number, text)  # refuse bad input at once, not after waiting for the modem
        except ValueError as e:
            raise ModemError(None, str(e), temporary=False) from None
        protocol = await self._ready_protocol()
        try:
            reference = await protocol.send(number, text)
        except ModemTimeout:
            self._silent_after_timeout(protocol)
            raise
        if protocol is self.protocol:
            self.timeouts = 0
        return reference

    def _silent_after_timeout(self, protocol: ModemProtocol) -> None:
        """
        A modem that stops answering but stays plugged in is reopened (and so initialised
        again) after L{RESET_AFTER_TIMEOUTS} sends in a row timed out.
        """
        if protocol is not self.protocol:
            return
        self.timeouts += 1
        if self.timeouts < RESET_AFTER_TIMEOUTS:
            return
        self.timeouts = 0
        log.warn(
            "GSM modem did not answer {n} sends in a row; reopening it", n=RESET_AFTER_TIMEOUTS
        )
        if protocol.transport is not None:
            protocol.transport.loseConnection()

    async def _ready_protocol(self) -> ModemProtocol:
        if self.state is LinkState.READY and self.protocol is not None:
            return self.protocol
        if self.state is LinkState.FAILED:
            assert self.error is not None
            raise self.error
        if self.state is LinkState.STOPPED:
            raise ModemGone("modem link is not running")
        waiter: Deferred[ModemProtocol] = Deferred()
        self._waiters.append(waiter)
        timer = self.clock.callLater(
            self.ready_timeout, self._waiter_timed_out, waiter, self.ready_timeout
        )
        try:
            return await waiter
        finally:
            if timer.active():
                timer.cancel()

    def _waiter_timed_out(self, waiter: Deferred[ModemProtocol], seconds: float) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            waiter.errback(ModemTimeout("waiting for a ready modem", seconds))

    def _release_waiters(self, result: ModemProtocol | ModemError) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(result, ModemProtocol):
                waiter.callback(result)
            else:
                waiter.errback(result)

    def _open(self) -> None:
        self._retry = None
        self.state = LinkState.OPENING
        protocol = self.make_protocol()
        try:
            self.open_port(protocol)
        except Exception as e:  # pyserial raises SerialException, OSError, ValueError...
            log.warn(
                "GSM modem did not open ({error}); retrying in {delay:g} s",
                error=e,
                delay=self.delay,
            )
            self._schedule_retry()
            return
        self.protocol = protocol
        protocol.ready.addCallbacks(
            lambda _: self._ready(protocol), lambda f: self._init_failed(protocol, f)
        )
        protocol.closed.addCallback(lambda _: self._lost(protocol))

    def _ready(self, protocol: ModemProtocol) -> None:
        if protocol is not self.protocol:
            return
        log.info("GSM modem ready")
        self.state = LinkState.READY
        self.timeouts = 0
        self.delay = self.initial_delay
        self._release_waiters(protocol)

    def _init_failed(self, protocol: ModemProtocol, failure: Failure) -> None:
        error = failure.value
        if protocol is not self.protocol or isinstance(error, ModemGone):
            return  # the closed callback takes care of the retry
        if isinstance(error, ModemError) and not error.temporary:
            log.error("GSM modem unusable, not retrying: {error}", error=error)
            self.state = LinkState.FAILED
            self.error = error
            self.protocol = None
            self._release_waiters(error)
            if protocol.transport is not None:
                protocol.transport.loseConnection()
            return
        log.warn("GSM modem initialisation failed ({error}); reopening", error=error)
        if protocol.transport is not None:
            protocol.transport.loseConnection()

    def _lost(self, protocol: ModemProtocol) -> None:
        if protocol is not self.protocol:
            return
        self.protocol = None
        if self.state in (LinkState.STOPPED, LinkState.FAILED):
            return
        log.warn("GSM modem connection lost; reopening in {delay:g} s", delay=self.delay)
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        self.state = LinkState.WAITING_RETRY
        self._retry = self.clock.callLater(self.delay, self._open)
        self.delay = min(self.delay * 2, self.max_delay)
