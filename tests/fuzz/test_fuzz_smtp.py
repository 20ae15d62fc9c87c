"""
Fuzzing the ESMTP intake: random sessions against GatewayESMTP with the real delivery and store.

The server runs on a StringTransport and a MemoryReactorClock; its delivery is the real
L{GatewayDelivery} and L{Intake} over a real L{MessageStore} on SQLite in a temporary
directory, with the database "thread" run synchronously so that every commit has happened
by the time the reply is written. A hypothesis state machine sends commands in any order,
pipelined, split at any byte, in odd case, too long, with bare CR/LF, NUL and 8-bit bytes,
STARTTLS in odd places, and DATA bodies from the seed corpus. After every step it checks the
replies (well formed, at most 512 octets), that nothing was logged as a failure, that a 250
after DATA names a message now in the store with the body sent, that a message refused
stores nothing, and that nothing is answered once the server has closed the connection.
"""

from __future__ import annotations

import gc
import ipaddress
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, ITLSTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import alsoProvides, implementer

from secmail.crypto import MasterKey
from secmail.smtp.delivery import GatewayDelivery
from secmail.smtp.server import GatewayESMTP
from secmail.store.database import Database
from secmail.store.engines import SqliteEngine
from secmail.store.messages import MessageStore
from secmail.store.spool import clean_spool
from tests.fixtures.intake import make_intake
from tests.fuzz.support import corpus, fuzz_settings, gateway_settings

HOST = "gw.example"
T0 = 1_700_000_000
IDLE_TIMEOUT = 60
CORPUS = corpus()
REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])([ -])([\t\x20-\x7e]*)")


# --- a store whose database "thread" is the caller ------------------------------------------


class SynchronousPool:
    """Stands for the database's one-thread pool: runs the work at once, on this thread."""

    def callInThreadWithCallback(
        self, on_result: Any, function: Any, *args: Any, **kw: Any
    ) -> None:
        try:
            result = function(*args, **kw)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class Reactor(MemoryReactorClock):
    """A memory reactor whose callFromThread runs at once (there is no other thread)."""

    def callFromThread(self, function: Any, *args: Any, **kw: Any) -> None:
        function(*args, **kw)


def synchronously(d: defer.Deferred[Any]) -> Any:
    """The result of a Deferred that must already have fired."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the store did not answer synchronously"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


class Gateway:
    """Settings, a real store on SQLite and an intake: what every session of a test shares."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.settings = gateway_settings(
            directory,
            accepted_networks=["127.0.0.0/8", "::1/128"],
            max_message_size=60_000,
            max_header_size=4_000,
            max_recipients=3,
            max_hops=3,
            idle_timeout=IDLE_TIMEOUT,
            soft_error_limit=6,
            hard_error_limit=12,
        )
        self.reactor = Reactor()
        self.reactor.advance(T0)
        engine = SqliteEngine(os.path.join(directory, "fuzz.sqlite"))
        self.db = Database(engine, self.reactor)
        self.db._pool = SynchronousPool()  # type: ignore[assignment]
        self.db.prepare_blocking()
        self.db.start()
        self.master = MasterKey(os.urandom(32))
        self.store = MessageStore(self.db, self.master)
        self.intake = make_intake(
            self.settings,
            self.store,
            self.master,
            self.reactor,
            lambda f, *a, **kw: defer.maybeDeferred(f, *a, **kw),
        )
        clean_spool(self.intake.spool_dir)

    def stored(self, message_id: str) -> bytes:
        """A message's plaintext read back from the database (not from the recent cache)."""
        reader = MessageStore(self.db, self.master)
        return synchronously(defer.Deferred.fromCoroutine(reader.read_all(message_id)))

    def message_count(self) -> int:
        return synchronously(defer.Deferred.fromCoroutine(self.store.count_messages()))

    def close(self) -> None:
        self.db.stop()


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None  # tmpfs: commits without disk fsync
    directory = tempfile.mkdtemp(prefix="secmail-fuzz-", dir=base)
    gateway = Gateway(directory)
    yield gateway
    gateway.close()
    shutil.rmtree(directory, ignore_errors=True)


# --- the session ----------------------------------------------------------------------------


@implementer(IOpenSSLServerConnectionCreator)
class FakeTLSContext:
    """The server's TLS context; the fake transport never does a handshake."""

    def serverConnectionForTLS(self, tlsProtocol: Any) -> Any:
        raise NotImplementedError


class TLSCapableTransport(StringTransport):
    """A StringTransport that records STARTTLS instead of doing a handshake."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        alsoProvides(self, ITLSTransport)
        self.tls_started = 0

    def startTLS(self, contextFactory: object, normal: bool = True) -> None:
        self.tls_started += 1


@implementer(ILogObserver)
class Failures(list[dict[str, Any]]):
    """Log events that carry a failure (a traceback) or are errors in the legacy sense."""

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None or event.get("isError"):
            self.append(event)


def describe(events: list[dict[str, Any]]) -> str:
    out = []
    for event in events:
        failure = event.get("log_failure")
        out.append(str(event.get("log_format")))
        if failure is not None:
            out.append(failure.getTraceback())
    return "\n".join(out)


# --- what a client may send -----------------------------------------------------------------

VERBS = [
    b"HELO", b"EHLO", b"MAIL", b"RCPT", b"DATA", b"RSET", b"NOOP", b"QUIT", b"VRFY", b"EXPN",
    b"STARTTLS", b"HELP", b"AUTH", b"BDAT", b"TURN", b"ETRN", b"XCLIENT", b"GET", b"POST",
    b"CONNECT", b"",
]  # fmt: skip
ADDRESSES = [
    b"alice@corp.example", b"bob@partner.example.s", b"carol@partner.example.0401234567.s",
    b"dave@corp.example", b"erin@outside.example", b"bounces@gw.example",
    b"bounces+0123456789abcdef@gw.example", b"", b"postmaster", b"a@[127.0.0.1]",
    b"\"quoted local\"@corp.example", b"x@corp.example.s.s", b"@route:x@corp.example",
    "jörg@corp.example".encode(), b"a\x00b@corp.example", b"<nested>@x",
]  # fmt: skip
PARAMETERS = [
    b"", b" SIZE=100", b" SIZE=999999999999", b" SIZE=x", b" BODY=8BITMIME", b" BODY=7BIT",
    b" BODY=BINARYMIME", b" SMTPUTF8", b" NOTIFY=NEVER", b" AUTH=<>", b" SIZE=", b" =",
]  # fmt: skip
JUNK = st.binary(max_size=40) | st.sampled_from([b"\r", b"\n", b"\x00", b"\xff\xfe", b"\t \t"])


@st.composite
def command_lines(draw: st.DrawFn) -> bytes:
    """One command line (without its line end): plausible, odd-cased, too long or junk."""
    kind = draw(st.integers(0, 9))
    verb = draw(st.sampled_from(VERBS))
    if kind <= 5:
        if verb in (b"MAIL", b"RCPT"):
            path = draw(st.sampled_from(ADDRESSES))
            word = b"FROM:" if verb == b"MAIL" else b"TO:"
            arg = word + draw(st.sampled_from([b"<%s>", b"%s", b" <%s>", b"<%s"])) % path
            arg += draw(st.sampled_from(PARAMETERS))
        elif verb in (b"HELO", b"EHLO"):
            arg = draw(st.sampled_from([b"client.example", b"", b"[127.0.0.1]", b"x" * 300]))
        else:
            arg = draw(st.sampled_from([b"", b"", b"x", b"<a@b>", b"  "]))
        line = verb + (b" " + arg if arg else b"")
    elif kind <= 7:
        line = verb + b" " + draw(JUNK)
    elif kind == 8:
        # Around the command line limit (2048) and far beyond it.
        length = draw(st.sampled_from([2040, 2047, 2048, 2049, 2050, 5000, 70_000]))
        line = (verb + b" " + b"x" * length)[:length]
    else:
        line = draw(st.binary(max_size=60))
    case = draw(st.sampled_from(["as is", "lower", "mixed"]))
    if case == "lower":
        line = line.lower()
    elif case == "mixed":
        line = bytes(c ^ 0x20 if 65 <= c <= 90 and i % 2 else c for i, c in enumerate(line))
    return line


LINE_ENDS = st.sampled_from([b"\r\n"] * 8 + [b"\n", b"\r", b"\r\r\n", b"\x00\r\n", b""])


@st.composite
def batches(draw: st.DrawFn) -> bytes:
    """Several command lines sent in one go (pipelining), with odd line ends among them."""
    lines = draw(st.lists(command_lines(), min_size=1, max_size=6))
    return b"".join(line + draw(LINE_ENDS) for line in lines)


BODY_LINES = st.sampled_from(
    [
        b"Subject: hello", b"From: Alice <alice@corp.example>", b"Received: from x by y",
        b"", b".", b"..", b".hidden", b"x" * 999, b"caf\xc3\xa9 \xff", b"a\rb", b"a\nb",
        b"a\x00b", b"\tcontinued", b"MAIL FROM:<smuggled@evil.example>", b"QUIT",
    ]
)  # fmt: skip


@st.composite
def bodies(draw: st.DrawFn) -> list[bytes]:
    """A DATA body as lines: a seed message, generated lines, or a mix of both."""
    lines: list[bytes] = []
    if draw(st.booleans()):
        seed = CORPUS[draw(st.sampled_from(sorted(CORPUS)))]
        lines = seed.split(b"\r\n")
        if lines and lines[-1] == b"":
            lines.pop()
    if draw(st.booleans()):
        extra = draw(st.lists(BODY_LINES, max_size=8))
        at = draw(st.integers(0, len(lines)))
        lines[at:at] = extra
    return lines


def stuffed(lines: list[bytes]) -> bytes:
    """The DATA body as a correct client sends it: dot-stuffed, ended by CRLF.CRLF."""
    return b"".join((b"." + line if line[:1] == b"." else line) + b"\r\n" for line in lines) + (
        b".\r\n"
    )


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    """C{data} split at the given offsets: how TCP may deliver it."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]


# --- the state machine ----------------------------------------------------------------------


_FIELD = re.compile(rb"([!-9;-~]+)[ \t]*:")


def as_stored(body: list[bytes]) -> list[bytes]:
    """
    The lines the intake stores for a DATA body, by the README's rules: header fields named
    X-Secmail-* (any case, with their continuation lines) are removed, and a body that
    starts without a blank line gets one. Everything else is kept byte for byte.
    """
    out: list[bytes] = []
    in_field = dropping = False
    for n, line in enumerate(body):
        if not line:
            return out + body[n:]
        if line[:1] in (b" ", b"\t") and in_field:
            if not dropping:
                out.append(line)
            continue
        match = _FIELD.match(line)
        if line[:1] not in (b" ", b"\t") and match is None:
            return [*out, b"", *body[n:]]
        in_field = True
        dropping = match is not None and match.group(1).lower().startswith(b"x-secmail-")
        if not dropping:
            out.append(line)
    return out


class SmtpSession(RuleBasedStateMachine):
    """One client connection; see the module docstring for what is checked after each step."""

    gateway: Gateway

    def __init__(self) -> None:
        super().__init__()
        self.failures = Failures()
        globalLogPublisher.addObserver(self.failures)
        self.protocol: GatewayESMTP | None = None
        self.transport: StringTransport | None = None
        self.closed_reply: bytes | None = None  # the reply after which the server closed
        self.ended = False
        self.replies: list[tuple[int, bytes]] = []
        self.accepted: list[str] = []

    @initialize(
        tls=st.booleans(), peer=st.sampled_from(["127.0.0.1", "127.0.0.1", "::1", "10.9.9.9"])
    )
    def connect(self, tls: bool, peer: str) -> None:
        address: Any
        if ipaddress.ip_address(peer).version == 6:
            address = IPv6Address("TCP", peer, 4321)
        else:
            address = IPv4Address("TCP", peer, 4321)
        self.transport = (
            TLSCapableTransport(peerAddress=address)
            if tls
            else StringTransport(peerAddress=address)
        )
        self.protocol = GatewayESMTP(
            self.gateway.settings.smtp,
            HOST,
            lambda: GatewayDelivery(self.gateway.intake),
            self.gateway.reactor,
            tls_context_factory=FakeTLSContext() if tls else None,
        )
        self.protocol.makeConnection(self.transport)
        greeting = self.take()
        assert greeting and greeting[0][0] in (220, 554), greeting

    # -- talking ------------------------------------------------------------------------------

    def send(self, data: bytes, cuts: list[int] | None = None) -> list[tuple[int, bytes]]:
        assert self.protocol is not None
        for piece in pieces(data, cuts or []):
            self.protocol.dataReceived(piece)
        return self.take()

    def take(self) -> list[tuple[int, bytes]]:
        """The replies written since the last call, each checked; notes a close."""
        assert self.transport is not None
        data = self.transport.value()
        self.transport.clear()
        if self.closed_reply is not None:
            assert data == b"", f"answered {data!r} after closing with {self.closed_reply!r}"
            return []
        replies = parse_replies(data)
        self.replies.extend(replies)
        for _code, text in replies:
            if text.startswith(b"2.0.0 Ok: queued as "):
                self.check_stored(text[len(b"2.0.0 Ok: queued as ") :].decode("ascii"))
        if self.transport.disconnecting:
            assert replies, "closed the connection without a reply"
            self.closed_reply = b"%d %s" % replies[-1]
            assert replies[-1][0] in (221, 421, 554), self.closed_reply
        for code, _ in replies:
            if code in (221, 421):
                assert self.transport.disconnecting, f"{code} but the connection stays open"
        return replies

    def check_stored(self, message_id: str) -> None:
        """A 250 after DATA: the message is in the store (unless it was a bounce we dropped)."""
        if message_id in ("dropped", "returned"):
            return
        self.accepted.append(message_id)
        self.gateway.stored(message_id)  # raises LookupError if it is not there

    @rule(data=batches(), cuts=st.lists(st.integers(0, 10_000), max_size=4))
    @precondition(lambda self: not self.ended)
    def pipelined_commands(self, data: bytes, cuts: list[int]) -> None:
        self.send(data, cuts)

    @rule(data=st.binary(min_size=1, max_size=200))
    @precondition(lambda self: not self.ended)
    def garbage(self, data: bytes) -> None:
        self.send(data)

    @rule(
        greeting=st.sampled_from([b"EHLO client.example", b"HELO client.example", b"ehlo x", b""]),
        sender=st.sampled_from(ADDRESSES[:8]),
        recipients=st.lists(st.sampled_from(ADDRESSES[:8]), min_size=1, max_size=4),
        body=bodies(),
        pipelined=st.booleans(),
        cuts=st.lists(st.integers(0, 100_000), max_size=6),
    )
    @precondition(lambda self: not self.ended)
    def transaction(
        self,
        greeting: bytes,
        sender: bytes,
        recipients: list[bytes],
        body: list[bytes],
        pipelined: bool,
        cuts: list[int],
    ) -> None:
        """A whole mail transaction as a client sends it, the envelope pipelined or not."""
        envelope = [greeting] if greeting else []
        envelope += [b"MAIL FROM:<%s>" % sender] + [b"RCPT TO:<%s>" % r for r in recipients]
        if pipelined:
            self.send(b"".join(line + b"\r\n" for line in envelope + [b"DATA"]), cuts)
        else:
            for line in envelope + [b"DATA"]:
                self.send(line + b"\r\n")
                if self.closed_reply is not None:
                    return
        if self.closed_reply is not None or not self.replies or self.replies[-1][0] != 354:
            return
        count = self.gateway.message_count()
        before = len(self.accepted)
        replies = self.send(stuffed(body), cuts)
        if self.closed_reply is not None and not replies:
            return
        assert replies, "no reply to the end of DATA"
        code, text = replies[-1]
        if code == 250 and text.startswith(b"2.0.0 Ok: queued as "):
            assert len(self.accepted) in (before, before + 1)
            if len(self.accepted) == before + 1:
                stored = self.gateway.stored(self.accepted[-1])
                expected = b"".join(line + b"\r\n" for line in as_stored(body))
                assert stored.startswith(b"Received: from ")
                assert stored.endswith(expected), "the stored message is not the body sent"
        else:
            assert code >= 400, replies
            assert self.gateway.message_count() == count, f"{code} but something was stored"

    @rule(
        before=st.sampled_from([b"", b"EHLO x\r\n", b"MAIL FROM:<a@corp.example>\r\n"]),
        after=st.sampled_from([b"", b"EHLO injected\r\n", b"RSET\r\n", b"RSET"]),
        verb=st.sampled_from([b"STARTTLS", b"starttls", b"STARTTLS x", b"STARTTLS "]),
    )
    @precondition(lambda self: not self.ended)
    def starttls(self, before: bytes, after: bytes, verb: bytes) -> None:
        """STARTTLS anywhere, with plaintext pipelined behind it (which must never be answered)."""
        assert self.protocol is not None and self.transport is not None
        tls_before = getattr(self.transport, "tls_started", 0)
        replies = self.send(before + verb + b"\r\n" + after)
        if getattr(self.transport, "tls_started", 0) > tls_before:
            ready = [i for i, (code, _) in enumerate(replies) if code == 220]
            assert ready, replies
            assert replies[ready[-1] + 1 :] == [], f"plaintext after STARTTLS answered: {replies}"

    @rule(seconds=st.sampled_from([0.5, 1.0, 1.5, IDLE_TIMEOUT - 1, IDLE_TIMEOUT + 1, 400]))
    def time_passes(self, seconds: float) -> None:
        self.gateway.reactor.advance(seconds)
        self.take()

    @rule(after=st.sampled_from([b"", b"NOOP\r\n", b"MAIL FROM:<a@corp.example>\r\n"]))
    @precondition(lambda self: not self.ended)
    def quit(self, after: bytes) -> None:
        self.send(b"QUIT\r\n" + after)

    @rule()
    @precondition(lambda self: not self.ended)
    def client_goes_away(self) -> None:
        self.end()

    def end(self) -> None:
        assert self.protocol is not None
        if not self.ended:
            self.ended = True
            self.protocol.connectionLost(Failure(ConnectionDone()))
            self.take()

    @invariant()
    def nothing_logged_as_failure(self) -> None:
        assert not self.failures, describe(self.failures)

    @invariant()
    def closed_means_closed(self) -> None:
        if self.closed_reply is not None and not self.ended:
            self.send(b"NOOP\r\nQUIT\r\n")
            self.end()

    def teardown(self) -> None:
        try:
            if self.protocol is not None:
                self.end()
            gc.collect()  # an unhandled error in a Deferred is logged when it is collected
            assert not self.failures, describe(self.failures)
        finally:
            globalLogPublisher.removeObserver(self.failures)


def parse_replies(data: bytes) -> list[tuple[int, bytes]]:
    """
    Complete SMTP replies (RFC 5321 4.2): CRLF lines of three digits, "-" or " ", printable
    text, at most 512 octets with CRLF; a multi-line reply keeps one code. Returns each reply
    as its code and the text of its last line.
    """
    if not data:
        return []
    assert data.endswith(b"\r\n"), f"reply not ended by CRLF: {data[-80:]!r}"
    replies: list[tuple[int, bytes]] = []
    pending: int | None = None
    for line in data[:-2].split(b"\r\n"):
        assert len(line) + 2 <= 512, f"reply line of {len(line) + 2} octets: {line[:80]!r}"
        match = REPLY_LINE.fullmatch(line)
        assert match, f"malformed reply line {line!r}"
        code = int(match.group(1))
        assert pending is None or pending == code, f"code changed within a reply: {line!r}"
        if match.group(2) == b"-":
            pending = code
        else:
            pending = None
            replies.append((code, match.group(3)))
    assert pending is None, "multi-line reply without its last line"
    return replies


def test_smtp_sessions(gateway: Gateway) -> None:
    """Random ESMTP sessions: replies stay well formed, 250 means stored, nothing crashes."""
    SmtpSession.gateway = gateway
    run_state_machine_as_test(
        SmtpSession, settings=fuzz_settings(ci_examples=60, stateful_step_count=15)
    )
