"""
Tests for secmail.smtp.encoder: the DATA encoder, by example and by property.
"""

from __future__ import annotations

import operator
import re

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from secmail.smtp.encoder import DataEncoder
from tests.fixtures.smtp import (
    BODY,
    decode_wire,
)


def encode(*chunks: bytes) -> bytes:
    encoder = DataEncoder()
    return b"".join(encoder.feed(chunk) for chunk in chunks) + encoder.finish()


class DataEncoderTests(SynchronousTestCase):
    def test_plain_message(self) -> None:
        """A CRLF message passes through unchanged and gets the terminator."""
        self.assertEqual(encode(BODY), BODY + b".\r\n")

    def test_empty_message(self) -> None:
        """An empty message is just the terminator."""
        self.assertEqual(encode(), b".\r\n")
        self.assertEqual(encode(b""), b".\r\n")

    def test_first_line_dot(self) -> None:
        """A dot at the very start of the message is stuffed (Twisted's SMTPClient misses it)."""
        self.assertEqual(encode(b".hidden\r\nx\r\n"), b"..hidden\r\nx\r\n.\r\n")

    def test_dot_at_chunk_boundary(self) -> None:
        """A dot line starting a new chunk is stuffed, after a chunk that ended in CRLF."""
        self.assertEqual(encode(b"line1\r\n", b".x\r\n"), b"line1\r\n..x\r\n.\r\n")

    def test_lone_dot_at_chunk_boundary(self) -> None:
        """The smuggling case: a chunk ending in LF and the next starting '.LF' cannot end DATA."""
        wire = encode(b"a\n", b".\nMAIL FROM:<x@y>\n")
        self.assertEqual(wire, b"a\r\n..\r\nMAIL FROM:<x@y>\r\n.\r\n")

    def test_dot_split_from_its_line(self) -> None:
        """A line whose first byte is the last byte of a chunk is stuffed once."""
        self.assertEqual(encode(b"a\r\n.", b".b\r\n"), b"a\r\n...b\r\n.\r\n")

    def test_dot_inside_line_not_stuffed(self) -> None:
        """Only a dot at the start of a line is doubled."""
        self.assertEqual(encode(b"a.b\r\n a.\r\n"), b"a.b\r\n a.\r\n.\r\n")

    def test_bare_lf(self) -> None:
        """Bare LF line ends become CRLF."""
        self.assertEqual(encode(b"a\nb\n"), b"a\r\nb\r\n.\r\n")

    def test_bare_cr(self) -> None:
        """A bare CR is a line end too, never passed on bare."""
        self.assertEqual(encode(b"a\rb\r\r\n"), b"a\r\nb\r\n\r\n.\r\n")

    def test_crlf_split_across_chunks(self) -> None:
        """CR at the end of one chunk and LF at the start of the next are one line end."""
        self.assertEqual(encode(b"a\r", b"\nb\r\n"), b"a\r\nb\r\n.\r\n")
        self.assertEqual(encode(b"a\r", b"", b"\nb"), b"a\r\nb\r\n.\r\n")

    def test_cr_cr_lf(self) -> None:
        """CR CR LF (what SMTPClient makes of CRLF) is an empty line, not a double line end."""
        self.assertEqual(encode(b"a\r\r\nb"), b"a\r\n\r\nb\r\n.\r\n")

    def test_final_partial_line(self) -> None:
        """A last line without a line end gets CRLF before the terminator."""
        self.assertEqual(encode(b"no newline"), b"no newline\r\n.\r\n")

    def test_long_line_folded(self) -> None:
        """A 3000-byte line is folded into 998-octet wire lines with CRLF SP continuations."""
        wire = encode(b"x" * 3000 + b"\r\n")
        lines = wire.split(b"\r\n")
        self.assertEqual(lines[0], b"x" * 998)
        self.assertEqual(lines[1], b" " + b"x" * 997)
        self.assertEqual(lines[2], b" " + b"x" * 997)
        self.assertEqual(lines[3], b" " + b"x" * 8)
        self.assertEqual(lines[4:], [b".", b""])

    def test_long_line_in_small_chunks(self) -> None:
        """Folding gives the same wire bytes however the long line is chunked."""
        data = b"y" * 3000 + b"\r\nend\r\n"
        pieces = [data[i : i + 7] for i in range(0, len(data), 7)]
        self.assertEqual(encode(*pieces), encode(data))

    def test_exactly_998_not_folded(self) -> None:
        """A line of exactly 998 octets is sent as one line."""
        self.assertEqual(encode(b"z" * 998 + b"\r\n"), b"z" * 998 + b"\r\n.\r\n")

    def test_stuffed_dot_counts_toward_limit(self) -> None:
        """A 998-octet line starting with a dot folds, so the wire line stays at 998 octets."""
        wire = encode(b"." + b"z" * 997 + b"\r\n")
        self.assertEqual(wire, b".." + b"z" * 996 + b"\r\n z\r\n.\r\n")

    def test_folding_is_ambiguous_by_design(self) -> None:
        """Known limit: a fold looks just like a 998-octet line then a line starting with SP."""
        self.assertEqual(encode(b"q" * 999), encode(b"q" * 998 + b"\r\n q"))

    def test_memory_bounded(self) -> None:
        """Feeding a huge line returns all but at most 998 bytes at once: nothing builds up."""
        encoder = DataEncoder()
        out = encoder.feed(b"w" * 100_000)
        self.assertGreaterEqual(len(out), 100_000 - 998)

    def test_feed_after_finish(self) -> None:
        """The encoder refuses to be used after the terminator was produced."""
        encoder = DataEncoder()
        encoder.finish()
        self.assertRaises(RuntimeError, encoder.feed, b"x")
        self.assertRaises(RuntimeError, encoder.finish)


_PIECES = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"\r\n.", b"\n.\n", b" ", b"\r\r\n", b".\r"]),
    st.builds(operator.mul, st.sampled_from([b"x", b".", b" ", b"ab"]), st.integers(990, 2100)),
)

_MESSAGES = st.lists(_PIECES, max_size=12).map(b"".join)

_CUTS = st.lists(st.integers(min_value=0, max_value=50_000), max_size=8)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def canonical(data: bytes) -> bytes:
    text = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    if text and not text.endswith(b"\r\n"):
        text += b"\r\n"
    return text


def last_wire_length(line: bytes) -> int:
    """The length of the last wire line that L{DataEncoder} makes of one input line."""
    length = len(line) + (1 if line.startswith(b".") else 0)
    if length <= 998:
        return length
    return 1 + ((length - 998 - 1) % 997 + 1)


def fold_ambiguous(text: bytes) -> bool:
    """Whether a canonical text has a full-length wire line followed by a line starting with SP."""
    lines = text.split(b"\r\n")
    return any(
        last_wire_length(a) == 998 and b.startswith(b" ")
        for a, b in zip(lines, lines[1:], strict=False)
    )


class DataEncoderPropertyTests(SynchronousTestCase):
    @settings(max_examples=150, deadline=None)
    @given(data=_MESSAGES, cuts=_CUTS)
    def test_wire_form(self, data: bytes, cuts: list[int]) -> None:
        """Any input gives CRLF-only lines of at most 1000 octets, and '.' only as terminator."""
        wire = encode(*split_at(data, cuts))
        self.assertTrue(wire.endswith(b".\r\n"))
        self.assertNotIn(b"\r", wire.replace(b"\r\n", b""))
        self.assertNotIn(b"\n", wire.replace(b"\r\n", b""))
        lines = wire.split(b"\r\n")[:-1]
        self.assertTrue(all(len(line) + 2 <= 1000 for line in lines))
        self.assertEqual(lines[-1], b".")
        self.assertNotIn(b".", lines[:-1])
        self.assertTrue(all(line.startswith(b"..") for line in lines[:-1] if line[:1] == b"."))

    @settings(max_examples=150, deadline=None)
    @given(data=_MESSAGES, cuts=_CUTS)
    def test_round_trip(self, data: bytes, cuts: list[int]) -> None:
        """Un-stuffing and un-folding the wire bytes gives back the canonicalised input."""
        assume(not fold_ambiguous(canonical(data)))
        self.assertEqual(decode_wire(encode(*split_at(data, cuts))), canonical(data))

    @settings(max_examples=150, deadline=None)
    @given(data=_MESSAGES, cuts=_CUTS)
    def test_chunking_does_not_matter(self, data: bytes, cuts: list[int]) -> None:
        """The wire bytes depend only on the content, never on where the chunks break."""
        self.assertEqual(encode(*split_at(data, cuts)), encode(data))

    @settings(max_examples=100, deadline=None)
    @given(data=_MESSAGES, cuts=_CUTS)
    def test_bounded_buffering(self, data: bytes, cuts: list[int]) -> None:
        """After each chunk, at most 998 bytes of input are held back."""
        encoder = DataEncoder()
        fed = written = 0
        for chunk in split_at(data, cuts):
            fed += len(chunk)
            written += len(encoder.feed(chunk))
            self.assertGreaterEqual(written, fed - 998)
