# -*- test-case-name: tests.test_smtp_encoder -*-
"""
The DATA encoder of the SMTP client: raw message bytes in any chunking to SMTP wire bytes.

Pure and line-oriented: it makes line ends canonical CRLF, dot-stuffs every line and folds
lines longer than 998 octets. Twisted's C{SMTPClient.transformChunk} works on each chunk on
its own, so a line starting with "." at a chunk boundary is not dot-stuffed (an early end of
data, outbound smuggling) and CRLF split across chunks becomes CR CR LF; this does not.
8-bit mail for a peer without 8BITMIME is made 7-bit beforehand by L{secmail.smtp.downgrade}.
"""

from __future__ import annotations

import re

_LINE_END = re.compile(rb"\r\n|\r|\n")


class DataEncoder:
    """Turn raw message bytes, in any chunking, into SMTP DATA wire bytes.

    - Line ends become CRLF. A bare CR or bare LF counts as a line end, because a bare
      one must never reach the next hop (SMTP smuggling).
    - A line that starts with "." gets one more "." (RFC 5321 §4.5.2), wherever the chunk
      boundaries fall, the first line included.
    - A line longer than 998 octets is folded. After 998 octets on the wire we send CRLF and
      one space, then the rest: header-style folding, which is what Postfix does with
      smtp_line_length_limit. In a header this is a valid fold that unfolds to the same
      value. In a body it adds a line break and a space, and there is no lossless way to
      fold an over-long body line, which RFC 5322 forbids anyway. The leading space also
      means a continuation line is never dot-stuffed and never taken for the end of data.
      The limit counts the stuffed dot, so every wire line is at most 1000 octets with its
      CRLF.
    - L{finish} ends a last line that has no line end, then adds the C{.CRLF} terminator.

    Besides the chunk being worked on, it keeps at most one wire line (998 octets).
    """

    MAX_LINE = 998

    def __init__(self) -> None:
        self._line = bytearray()  # wire bytes of the current output line, without CRLF
        self._in_line = False  # the current input line has content, so stuffing is settled
        self._after_cr = False  # the last chunk ended in CR: an LF next completes that CRLF
        self._finished = False

    def feed(self, data: bytes) -> bytes:
        """Take the next chunk of the message and return the wire bytes that are complete."""
        if self._finished:
            raise RuntimeError("DataEncoder.feed() after finish()")
        out: list[bytes] = []
        pos, end = 0, len(data)
        if self._after_cr and data:
            self._after_cr = False
            if data[:1] == b"\n":
                pos = 1
        while pos < end:
            match = _LINE_END.search(data, pos)
            if match is None:
                self._append(data[pos:], out)
                break
            self._append(data[pos : match.start()], out)
            self._end_line(out)
            pos = match.end()
            if pos == end and match.group() == b"\r":
                self._after_cr = True
        return b"".join(out)

    def finish(self) -> bytes:
        """End the last line if it has no line end, and add the end-of-data line."""
        if self._finished:
            raise RuntimeError("DataEncoder.finish() called twice")
        self._finished = True
        out: list[bytes] = []
        if self._in_line:
            self._end_line(out)
        out.append(b".\r\n")
        return b"".join(out)

    def _append(self, segment: bytes, out: list[bytes]) -> None:
        if not segment:
            return
        line = self._line
        if not self._in_line:
            self._in_line = True
            if segment[:1] == b".":
                line += b"."
        pos = 0
        while True:
            room = self.MAX_LINE - len(line)
            if len(segment) - pos <= room:
                line += segment[pos:]
                return
            line += segment[pos : pos + room]
            pos += room
            out.append(bytes(line) + b"\r\n")
            line.clear()
            line += b" "

    def _end_line(self, out: list[bytes]) -> None:
        out.append(bytes(self._line) + b"\r\n")
        self._line.clear()
        self._in_line = False
