"""
Fakes and helpers shared by the outbound SMTP tests: a scripted peer (Conversation), messages,
replies, resolvers and a reactor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import (
    IHostnameResolver,
    IHostResolution,
    IResolutionReceiver,
    ITLSTransport,
)
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.names import dns
from zope.interface import implementer

from secmail.smtp.outgoing import (
    ClientOptions,
    OutgoingMessage,
)

HELO = "gw.example.net"

PEER = "mx.example.com[192.0.2.1]:25"

GREETING = b"220 mx.example.com ESMTP\r\n"

EHLO_REPLY = b"250-mx.example.com hello\r\n250 8BITMIME\r\n"
"""Without PIPELINING, so the client sends one command at a time."""

BODY = b"Subject: hi\r\n\r\nbody\r\n"


def content_of(*chunks: bytes) -> Callable[[], AsyncIterator[bytes]]:
    async def produce() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    return produce


def make_message(
    *recipients: str,
    chunks: Sequence[bytes] = (BODY,),
    sender: str = "alice@example.net",
    size: int | None = None,
    eight_bit: bool | None = None,
) -> OutgoingMessage:
    return OutgoingMessage(
        sender=sender,
        recipients=recipients or ("bob@example.com",),
        content=content_of(*chunks),
        size=size,
        eight_bit=eight_bit,
    )


@implementer(ITLSTransport)
class TlsStringTransport(StringTransport):
    """A StringTransport that can STARTTLS: it records the connection creator it was given."""

    def __init__(self, peer: IPv4Address | None = None) -> None:
        super().__init__(peerAddress=peer or IPv4Address("TCP", "192.0.2.1", 25))
        self.tls_started: list[Any] = []

    def startTLS(self, contextFactory: Any) -> None:
        self.tls_started.append(contextFactory)


def said(text: str, command: str) -> str:
    return f"{PEER} said: {text} (in reply to {command})"


def decode_wire(wire: bytes) -> bytes:
    """Undo dot-stuffing and folding: the receiving side's view of the message."""
    assert wire == b".\r\n" or wire.endswith(b"\r\n.\r\n")
    lines = wire[:-3].split(b"\r\n")
    assert lines[-1] == b""
    logical: list[bytes] = []
    previous = -1
    for line in lines[:-1]:
        if line.startswith(b" ") and previous == 998 and logical:
            logical[-1] += line[1:]
        else:
            logical.append(line[1:] if line.startswith(b".") else line)
        previous = len(line)
    return b"".join(line + b"\r\n" for line in logical)


ONE = b"Subject: one\r\n\r\nfirst\r\n"

TWO = b"Subject: two\r\n\r\n.second\r\n"

THREE = b"Subject: three\r\n\r\nthird"


def three_messages() -> list[OutgoingMessage]:
    return [
        make_message("bob@example.com", chunks=(ONE,)),
        make_message("carol@example.com", "dan@example.com", chunks=(TWO,), sender="eve@ex.net"),
        make_message("fay@example.com", chunks=(THREE,), sender=""),
    ]


def mx(preference: int, name: bytes, owner: bytes = b"example.com") -> dns.RRHeader:
    return dns.RRHeader(name=owner, type=dns.MX, payload=dns.Record_MX(preference, name))


@dataclass
class FakeResolver:
    """Answers MX queries from a list of records, or fails with an exception."""

    answer: list[dns.RRHeader] | Exception

    def lookupMailExchange(self, name: str, timeout: Any = None) -> Deferred[Any]:
        if isinstance(self.answer, Exception):
            return fail(self.answer)
        return succeed((self.answer, [], []))


@implementer(IHostResolution)
@dataclass
class _Resolution:
    name: str

    def cancel(self) -> None:
        raise NotImplementedError


@implementer(IHostnameResolver)
@dataclass
class FakeHostResolver:
    """Resolves host names from a table, for HostnameEndpoint on a MemoryReactorClock."""

    addresses: dict[str, str]

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Any = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        if hostName in self.addresses:
            address = IPv4Address("TCP", self.addresses[hostName], portNumber)
            resolutionReceiver.addressResolved(address)
        resolutionReceiver.resolutionComplete()
        return resolution


HOSTS = {f"mx{i}.example.com": f"192.0.2.{i}" for i in range(1, 8)}


def make_reactor() -> MemoryReactorClock:
    reactor = MemoryReactorClock()
    reactor.installNameResolver(FakeHostResolver(HOSTS))
    return reactor


def accept(reactor: MemoryReactorClock) -> tuple[Any, TlsStringTransport]:
    """Complete the latest connection attempt; return the protocol and its transport."""
    host, port, factory, _timeout, _bind = reactor.tcpClients[-1]
    address = IPv4Address("TCP", host, port)
    protocol = factory.buildProtocol(address)
    transport = TlsStringTransport(peer=address)
    protocol.makeConnection(transport)
    return protocol, transport


def serve(protocol: Any, transport: StringTransport, replies: Sequence[bytes]) -> bytes:
    transport.clear()
    for reply in replies:
        protocol.dataReceived(reply)
    return transport.value()


OPTIONS = ClientOptions(HELO)


def session_replies(*recipients: int) -> list[bytes]:
    """A stepwise server's replies to a whole session that accepts every message."""
    replies = [GREETING, EHLO_REPLY]
    for count in recipients:
        replies += [b"250 ok\r\n"] * (1 + count) + [b"354 go\r\n", b"250 ok\r\n"]
    return replies
