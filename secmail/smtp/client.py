# -*- test-case-name: tests.test_smtp_client -*-
"""
The outbound SMTP client's protocol: one session that carries one transaction per message.

We do not use C{twisted.mail.smtp.SMTPClient} (reliability.md §5.1 item 7). Its DATA path
dot-stuffs each chunk on its own (L{secmail.smtp.encoder} says what goes wrong), and its
callback API has neither a timeout for each stage nor per-recipient results. So
L{SmtpClientProtocol} is a small state machine on L{secmail.smtp.session.SmtpSession}. It
sends one command at a time (with PIPELINING, one envelope at a time), and every state it
waits in has its own timeout on the injected clock. The coroutines that connect it to a
host are in L{secmail.smtp.outbound}; the outgoing message, the options and the outcomes
are in L{secmail.smtp.outgoing}.

8-bit mail (RFC 6152): before a message's MAIL FROM the client knows whether it has a byte
over 127, from L{OutgoingMessage.eight_bit} or by reading it once (a message of up to
L{PREFETCH_LIMIT} bytes is then sent from what was read, so it is read once either way).
An 8-bit message goes with C{BODY=8BITMIME} to a peer that offers 8BITMIME; to one that
does not, it is converted to 7 bits first (L{secmail.smtp.downgrade}, on a worker thread),
or, when that cannot be done, fails permanently without being sent. A 7-bit message goes
as before, without C{BODY=}.

Error texts name the host and the command, in the form
C{"mx.example.com[192.0.2.1]:25 said: 550 5.1.1 no such user (in reply to RCPT TO)"}. They
can go into a DSN as they are. They never quote message content.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IReactorTime,
    ITLSTransport,
)
from twisted.internet.ssl import (
    CertificateOptions,
    TLSVersion,
    optionsForClientTLS,
    platformTrust,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from secmail.smtp.downgrade import DowngradeError, downgrade, is_eight_bit
from secmail.smtp.encoder import DataEncoder
from secmail.smtp.outgoing import (
    ClientOptions,
    DeliveryError,
    DeliveryOutcome,
    DeliveryResult,
    OutgoingMessage,
    PermanentDeliveryError,
    TemporaryDeliveryError,
    TlsPolicy,
    check_envelope,
)
from secmail.smtp.session import Reply, SmtpSession, State, Transaction, settle
from secmail.tls import CertificateError, trust_root_from_pem

if TYPE_CHECKING:
    # Twisted documents this interface but does not export it from twisted.internet.ssl.
    from twisted.internet._sslverify import IOpenSSLTrustRoot

_log = Logger()

PREFETCH_LIMIT = 1024 * 1024
"""A message whose 8-bit-ness is not known is read before its MAIL FROM to find out. Up to
this many bytes are kept and sent from memory; a larger message is read again to send it."""


class SmtpClientProtocol(SmtpSession):
    """One SMTP session that carries a sequence of transactions, one per message.

    A state machine. The session goes GREETING, EHLO (or HELO), perhaps STARTTLS and EHLO
    again, and then, for each message in turn, PREPARE (unless the message is known to be
    7-bit, or 8-bit for a peer with 8BITMIME: see the module's docstring), MAIL FROM, RCPT
    TO, DATA, CONTENT and END_OF_DATA. A message that fails in PREPARE has sent nothing, so
    the session goes on with the next. After a transaction that ended in step with the
    peer, the next message starts with MAIL FROM, or with RSET first when the transaction
    failed. After the last message comes QUIT.

    It sends one command at a time, except that when the peer advertises PIPELINING (RFC
    2920) a message's MAIL FROM, RCPT TOs and DATA go out in one write. Their replies are
    then read in order, each in its own state with its own timeout, exactly as if the
    commands had gone one by one; only what is sent next differs. A transaction refused
    part-way (MAIL FROM, or every RCPT TO) is settled once the last reply of its group,
    the one to DATA, is in, unless a 421 ends the session first.

    C{results} has one Deferred per message, in order. Each fires with a L{DeliveryResult}
    or fails with a L{DeliveryError} as soon as that message's outcome is known.

    When the session ends early (lost connection, timeout, protocol error, a 421, a failed
    RSET), what each message still without an outcome gets depends on whether it was
    tried, that is whether the peer answered its MAIL FROM. The message in progress, if it
    was tried, gets the session's error itself. The others fail with a
    L{TemporaryDeliveryError} saying they were not tried, or, when the peer has not
    answered any MAIL FROM in this session, with the session's error itself: then that
    error (a refused greeting, say) is as much about one message as about any other, and
    a one-message session reports exactly what went wrong.

    Replies are handled only in the state that expects them. Bytes that come after the
    replies due, before we have sent the next command, cannot be an answer to that
    command. They are treated as a protocol error, which also stops plain-text injection
    after STARTTLS.

    It is also the transport's push producer while message content is sent, so a slow
    peer slows down how fast we read the content.
    """

    def __init__(
        self,
        clock: IReactorTime,
        hostname: str,
        messages: Sequence[OutgoingMessage],
        options: ClientOptions,
        tls: TlsPolicy,
    ) -> None:
        super().__init__(clock, hostname, messages, options.timeouts)
        self._invalid = [check_envelope(message) for message in self._messages]
        self._options = options
        self._tls = tls
        self._extensions: dict[str, str] = {}
        self._handlers = {
            State.GREETING: self._on_greeting,
            State.EHLO: self._on_ehlo,
            State.HELO: self._on_helo,
            State.STARTTLS: self._on_starttls,
            State.PREPARE: self._on_reply_while_preparing,
            State.MAIL: self._on_mail,
            State.RCPT: self._on_rcpt,
            State.DATA: self._on_data,
            State.CONTENT: self._on_early_reply,
            State.END_OF_DATA: self._on_end_of_data,
            State.RSET: self._on_rset,
            State.QUIT: self._on_quit,
        }

    # --- the session: greeting, hello, STARTTLS -------------------------------------------

    def _on_greeting(self, reply: Reply) -> None:
        if reply.kind == 2:
            self._send_ehlo()
        else:
            # Even a 554 greeting only means "not this host": Postfix skips 5xx greeters too.
            self._end_session(TemporaryDeliveryError(self._said(reply)))

    def _send_ehlo(self) -> None:
        self._command(State.EHLO, b"EHLO " + self._options.helo.encode(), self._timeouts.helo)

    def _on_ehlo(self, reply: Reply) -> None:
        if reply.kind == 2:
            self._extensions = {}
            for line in reply.lines[1:]:
                keyword, _, params = line.partition(" ")
                self._extensions[keyword.upper()] = params
            self._after_hello()
        elif reply.kind == 5:
            helo = b"HELO " + self._options.helo.encode()
            self._command(State.HELO, helo, self._timeouts.helo)
        else:
            self._end_session(TemporaryDeliveryError(self._said(reply)))

    def _on_helo(self, reply: Reply) -> None:
        if reply.kind == 2:
            self._extensions = {}
            self._after_hello()
        else:
            self._end_session(TemporaryDeliveryError(self._said(reply)))

    def _after_hello(self) -> None:
        if (
            self._tls is not TlsPolicy.NONE
            and not self._tls_started
            and "STARTTLS" in self._extensions
            and ITLSTransport.providedBy(self.transport)
        ):
            self._command(State.STARTTLS, b"STARTTLS", self._timeouts.starttls)
        else:
            self._begin_transaction()

    def _on_starttls(self, reply: Reply) -> None:
        if reply.kind != 2:
            if self._tls is TlsPolicy.OPPORTUNISTIC:
                self._begin_transaction()  # plain text, as if STARTTLS were not offered
            else:
                self._end_session(TemporaryDeliveryError(self._said(reply)))
            return
        try:
            creator = self._tls_creator()
            cast(ITLSTransport, self.transport).startTLS(creator)
        except Exception as e:
            _log.failure("Could not start TLS with {peer}", peer=self._peer)
            text = f"could not start TLS with {self._peer}: {e}"
            self._end_session(TemporaryDeliveryError(text), polite=False)
            return
        # RFC 3207 §4.2: forget everything learnt before TLS and say EHLO again.
        self._tls_started = True
        self._extensions = {}
        self._send_ehlo()

    def _tls_creator(self) -> IOpenSSLClientConnectionCreator:
        if self._tls is TlsPolicy.VERIFY:
            ca_file = self._options.ca_file
            trust = platformTrust() if ca_file is None else load_trust_root(ca_file)
            return optionsForClientTLS(
                self._hostname,
                trustRoot=trust,
                extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_2},
            )
        options = CertificateOptions(verify=False, raiseMinimumTo=TLSVersion.TLSv1_2)
        return cast(IOpenSSLClientConnectionCreator, options)

    # --- one transaction per message --------------------------------------------------------

    def _begin_transaction(self) -> None:
        """Start the next message: if need be, find out whether it is 8-bit; then its envelope."""
        index = self._next
        self._next += 1
        message, invalid = self._messages[index], self._invalid[index]
        self._txn = txn = Transaction(
            message=message,
            result=self.results[index],
            to_send=deque(r for r in message.recipients if r not in invalid),
            permanent=dict(invalid),
            pipelined="PIPELINING" in self._extensions,
        )
        if message.eight_bit is False:
            self._send_envelope(txn, message.size)
        elif message.eight_bit and "8BITMIME" in self._extensions:
            self._send_envelope(txn, message.size, eight_bit=True)
        else:
            # Read from memory, this finishes at once, so a pipelined envelope still goes
            # in one write.
            self._expect(State.PREPARE, self._timeouts.content)
            preparing = Deferred.fromCoroutine(self._prepare(txn))
            preparing.addErrback(self._prepare_failed, txn)
            if not preparing.called:
                # Done at once, it may have begun the next message, whose Deferred this is.
                self._sending = preparing

    def _preparing(self, txn: Transaction) -> bool:
        """Whether C{txn} is still being prepared: False once the session ended."""
        return self.state is State.PREPARE and self._txn is txn

    async def _prepare(self, txn: Transaction) -> None:
        """Read the message to see whether it is 8-bit; for a peer without 8BITMIME, convert it."""
        message = txn.message
        kept: list[bytes] | None = []
        eight_bit = bool(message.eight_bit)
        size = 0
        chunks = message.content()
        try:
            async for chunk in chunks:
                if not self._preparing(txn):
                    return
                self._start_timer(self._timeouts.content)
                size += len(chunk)
                eight_bit = eight_bit or is_eight_bit(chunk)
                if kept is not None:
                    kept.append(chunk)
                    if size > PREFETCH_LIMIT:
                        kept = None  # too much to keep: it is read again to be sent
                if eight_bit and kept is None:
                    break  # all that was to be learnt
        finally:
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()
        if not self._preparing(txn):
            return
        if eight_bit and "8BITMIME" not in self._extensions:
            raw = b"".join(kept) if kept is not None else await _read_all(message.content)
            if not self._preparing(txn):
                return
            run = self._options.run_in_thread
            try:
                converted: bytes = await (run(downgrade, raw) if run else _now(downgrade, raw))
            except DowngradeError as e:
                if self._preparing(txn):
                    text = (
                        f"{self._peer} does not accept 8-bit mail (no 8BITMIME) and the "
                        f"message could not be converted to 7-bit: {e.reason}"
                    )
                    self._end_transaction(PermanentDeliveryError(text), clean=True)
                return
            if not self._preparing(txn):
                return
            txn.kept = [converted]
            self._send_envelope(txn, None if message.size is None else len(converted))
            return
        txn.kept = kept
        self._send_envelope(txn, message.size, eight_bit=eight_bit)

    def _on_reply_while_preparing(self, reply: Reply) -> None:
        """A reply before we sent MAIL FROM answers nothing of ours (a 421 on shutting down)."""
        self._protocol_error(f"sent {reply.text!r} before our next command")

    def _prepare_failed(self, failure: Failure, txn: Transaction) -> None:
        """Reading (or converting) the message failed before its MAIL FROM: try it later."""
        if not self._preparing(txn):
            return
        _log.failure("Preparing a message for {peer} failed", failure, peer=self._peer)
        text = f"reading the message content failed ({type(failure.value).__name__})"
        # Nothing of this message was sent, so the session goes on with the next one.
        self._end_transaction(TemporaryDeliveryError(text), clean=True)

    def _send_envelope(
        self, txn: Transaction, size: int | None, *, eight_bit: bool = False
    ) -> None:
        """Send the MAIL FROM, and with PIPELINING the RCPT TOs and DATA too."""
        message = txn.message
        mail = b"MAIL FROM:<" + message.sender.encode() + b">"
        if size is not None and "SIZE" in self._extensions:
            mail += b" SIZE=%d" % size
        if eight_bit:
            mail += b" BODY=8BITMIME"
        if not txn.pipelined:
            self._command(State.MAIL, mail, self._timeouts.mail)
            return
        # RFC 2920: the whole envelope and DATA in one write, then the replies in order.
        lines = [mail]
        while txn.to_send:
            lines.append(self._rcpt_command(txn))
            self._queued.append((State.RCPT, self._timeouts.rcpt))
        lines.append(b"DATA")
        self._queued.append((State.DATA, self._timeouts.data_init))
        self._transport.write(b"\r\n".join(lines) + b"\r\n")
        self._expect(State.MAIL, self._timeouts.mail)

    def _rcpt_command(self, txn: Transaction) -> bytes:
        recipient = txn.to_send.popleft()
        txn.awaiting.append(recipient)
        return b"RCPT TO:<" + recipient.encode() + b">"

    def _on_mail(self, reply: Reply) -> None:
        txn = self._current
        txn.tried = self._tried_any = True
        if reply.kind != 2:
            if reply.kind not in (4, 5) or reply.code == 421 or not txn.pipelined:
                self._refused(reply)
                return
            # The RCPT TOs and DATA sent with it still get their replies, to be read first.
            txn.refusal = self._error_for(reply)
        if txn.pipelined:
            self._next_reply()
        else:
            self._next_recipient()

    def _next_recipient(self) -> None:
        """Without PIPELINING: the next RCPT TO, else DATA when some recipient was accepted."""
        txn = self._current
        if txn.to_send:
            self._command(State.RCPT, self._rcpt_command(txn), self._timeouts.rcpt)
        elif txn.accepted:
            self._command(State.DATA, b"DATA", self._timeouts.data_init)
        else:
            self._end_transaction(self._nothing_to_send(txn), clean=False)

    def _on_rcpt(self, reply: Reply) -> None:
        txn = self._current
        recipient = txn.awaiting.popleft()
        if reply.kind not in (2, 4, 5):
            self._protocol_error(f"gave an unexpected reply {reply.text!r} to RCPT TO")
            return
        if txn.refusal is not None:
            pass  # replies to RCPT TO after a refused MAIL FROM say nothing about the recipient
        elif reply.kind == 2:
            txn.accepted.append(recipient)
        elif reply.kind == 4:
            txn.temporary[recipient] = self._said(reply)
        else:
            txn.permanent[recipient] = self._said(reply)
        if txn.pipelined:
            self._next_reply()
        else:
            self._next_recipient()

    def _nothing_to_send(self, txn: Transaction) -> DeliveryOutcome:
        """The outcome of a transaction that had no accepted recipient, so sent no content."""
        if txn.refusal is not None:
            return txn.refusal
        if txn.temporary:
            # Every recipient was refused and some may try again later: each has its own answer.
            return DeliveryResult(temporary=dict(txn.temporary), permanent=dict(txn.permanent))
        first = next(iter(txn.permanent.values()))
        return PermanentDeliveryError(first, recipients=txn.permanent)

    def _on_data(self, reply: Reply) -> None:
        txn = self._current
        if txn.refusal is not None or not txn.accepted:
            # Pipelined, and MAIL FROM or every RCPT TO was refused: there is nothing to send.
            if reply.code == 354:
                # The peer took DATA all the same. A lone dot ends the empty message and
                # brings the conversation back in step; what it is answered counts for nothing.
                txn.discard = True
                self._command(State.END_OF_DATA, b".", self._timeouts.final_dot)
            else:
                self._end_transaction(self._nothing_to_send(txn), clean=False)
            return
        if reply.code == 354 and txn.kept is not None:
            # In memory already: all of it at once, as the transport buffers it anyway.
            encoder = DataEncoder()
            wire = [encoder.feed(chunk) for chunk in txn.kept]
            wire.append(encoder.finish())
            self._transport.write(b"".join(wire))
            self._expect(State.END_OF_DATA, self._timeouts.final_dot)
        elif reply.code == 354:
            self.state = State.CONTENT
            self._transport.registerProducer(self, True)
            self._sending = Deferred.fromCoroutine(self._send_content(txn))
            self._sending.addErrback(self._content_failed)
        else:
            self._refused(reply)

    def _sending_content_of(self, txn: Transaction) -> bool:
        """Whether we are still to send C{txn}'s content: False once the session stopped it."""
        return self.state is State.CONTENT and self._txn is txn

    async def _send_content(self, txn: Transaction) -> None:
        encoder = DataEncoder()
        chunks = txn.message.content()
        try:
            while True:
                self._start_timer(self._timeouts.content)
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                if not self._sending_content_of(txn):
                    return
                if chunk:
                    self._transport.write(encoder.feed(chunk))
                while self._paused is not None:
                    await self._paused
                if not self._sending_content_of(txn):
                    return
        finally:
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()
        if not self._sending_content_of(txn):
            return
        self._transport.unregisterProducer()
        self._transport.write(encoder.finish())
        self._expect(State.END_OF_DATA, self._timeouts.final_dot)

    def _content_failed(self, failure: Failure) -> None:
        """The content source raised, so the message must not be ended with a dot."""
        if self.state is not State.CONTENT:
            return  # we stopped the sending ourselves, and the outcome is settled already
        _log.failure("Reading the content for {peer} failed", failure, peer=self._peer)
        text = f"reading the message content failed ({type(failure.value).__name__})"
        self._end_session(TemporaryDeliveryError(text), polite=False)

    def _on_early_reply(self, reply: Reply) -> None:
        """A reply while we are still sending content: the peer gave up on the message."""
        self._end_session(self._error_for(reply), polite=False)

    def _on_end_of_data(self, reply: Reply) -> None:
        txn = self._current
        if txn.discard:
            self._end_transaction(self._nothing_to_send(txn), clean=False)
            return
        if reply.code == 250:
            result = DeliveryResult(
                accepted=list(txn.accepted),
                temporary=dict(txn.temporary),
                permanent=dict(txn.permanent),
                reply=self._said(reply),
            )
            self._end_transaction(result, clean=True)
            return
        if reply.kind == 5:
            error: DeliveryError = PermanentDeliveryError(self._said(reply))
        else:
            error = TemporaryDeliveryError(self._said(reply), try_other_hosts=False)
        self._end_transaction_or_session(reply, error)

    def _refused(self, reply: Reply) -> None:
        """MAIL FROM or DATA was refused: the transaction failed, the session goes on."""
        if reply.kind not in (4, 5):
            self._protocol_error(f"gave an unexpected reply {reply.text!r} to {self.state.value}")
            return
        self._end_transaction_or_session(reply, self._error_for(reply))

    def _end_transaction_or_session(self, reply: Reply, error: DeliveryError) -> None:
        """A failed transaction, and after a 421 the end of the session: the peer is closing."""
        if reply.code == 421:
            self._end_session(error)
        else:
            self._end_transaction(error, clean=False)

    def _end_transaction(self, outcome: DeliveryOutcome, *, clean: bool) -> None:
        """Settle the current message, then go on to the next one (RSET first unless C{clean})."""
        txn, self._txn = self._current, None
        if self._next >= len(self._messages):
            self._quit()
        elif clean:
            self._begin_transaction()
        else:
            self._command(State.RSET, b"RSET", self._timeouts.rset)
        settle(txn.result, outcome)

    def _on_rset(self, reply: Reply) -> None:
        if reply.kind == 2:
            self._begin_transaction()
        else:
            self._end_session(TemporaryDeliveryError(self._said(reply)))

    def _on_quit(self, reply: Reply) -> None:
        self.state = State.CLOSED
        self._cancel_timer()
        self._transport.loseConnection()


async def _read_all(content: Callable[[], AsyncIterator[bytes]]) -> bytes:
    return b"".join([chunk async for chunk in content()])


async def _now(f: Callable[[bytes], bytes], data: bytes) -> bytes:
    return f(data)


def load_trust_root(ca_file: str) -> IOpenSSLTrustRoot:
    """Trust the CA certificates in the PEM file C{ca_file}, which may hold several."""
    try:
        return trust_root_from_pem(ca_file)
    except CertificateError as e:
        raise TemporaryDeliveryError(str(e)) from None
