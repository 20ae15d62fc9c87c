"""
Tests for secmail.smtp.downgrade: 8-bit mail made 7-bit for a peer without 8BITMIME. The
property tests build random MIME trees (8-bit text, binary, nested multiparts,
message/rfc822 with 8-bit inside, 8-bit headers) and check that every line is 7-bit and at
most 998 octets, and that each part decodes to what it was.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
from email.header import decode_header, make_header
from email.message import Message

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from secmail.smtp.downgrade import MAX_LINE, DowngradeError, downgrade, is_eight_bit

CRLF = b"\r\n"


def parse(raw: bytes) -> Message:
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def leaves(message: Message) -> list[tuple[str, bytes]]:
    """Each leaf part's type and decoded content, depth first, into message/rfc822 too."""
    out: list[tuple[str, bytes]] = []
    if message.is_multipart():
        for part in message.get_payload():
            out += leaves(part)
        return out
    payload = message.get_payload(decode=True)
    assert isinstance(payload, bytes)
    out.append((message.get_content_type(), payload))
    return out


def header_text(value: str) -> str:
    """A header value as a reader sees it: encoded-words decoded, folding undone."""
    return str(make_header(decode_header(value))).replace("\r\n", "").replace("\n", "")


def check_7bit(out: bytes) -> None:
    assert out.isascii(), "an 8-bit byte is left"
    assert out.endswith(CRLF) or not out
    for line in out.split(CRLF):
        assert len(line) <= MAX_LINE, f"a line of {len(line)} octets"
        assert b"\r" not in line and b"\n" not in line


# --- strategies --------------------------------------------------------------------------

_WORD = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zl", "Zp")),
    min_size=1,
    max_size=12,
)
_TEXT_LINE = st.lists(_WORD, max_size=8).map(" ".join).map(lambda s: s.encode("utf-8"))
_TEXT = st.lists(
    st.one_of(
        _TEXT_LINE,
        st.binary(max_size=1200).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    ),
    min_size=1,
    max_size=6,
).map(CRLF.join)
_HEADER_TEXT = st.lists(_WORD, min_size=1, max_size=6).map(" ".join)


@st.composite
def _leaf(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        cte = draw(st.sampled_from(["8bit", "binary", "7bit", None]))
        head = b"Content-Type: text/plain; charset=utf-8\r\n"
        body = draw(_TEXT)
    else:
        cte = draw(st.sampled_from(["8bit", "binary"]))
        head = b"Content-Type: application/octet-stream\r\n"
        body = draw(st.binary(max_size=300)).replace(b"\r", b"").replace(b"\n", CRLF)
    if cte is not None:
        head += b"Content-Transfer-Encoding: " + cte.encode() + CRLF
    if draw(st.booleans()):
        head += b"Content-Description: " + draw(_HEADER_TEXT).encode("utf-8") + CRLF
    return head + CRLF + body


def _entities(depth: int) -> st.SearchStrategy[bytes]:
    if depth == 0:
        return _leaf()
    return st.one_of(_leaf(), _multipart(depth), _rfc822(depth))


@st.composite
def _multipart(draw: st.DrawFn, depth: int) -> bytes:
    boundary = b"b" + str(depth).encode() + b"-" + draw(st.sampled_from([b"x", b"y"]))
    parts = draw(st.lists(_entities(depth - 1), min_size=1, max_size=3))
    out = b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n'
    if draw(st.booleans()):
        out += b"Content-Transfer-Encoding: 8bit\r\n"
    out += CRLF + b"preamble\r\n"
    for part in parts:
        out += b"--" + boundary + CRLF + part + CRLF
    return out + b"--" + boundary + b"--\r\n"


@st.composite
def _rfc822(draw: st.DrawFn, depth: int) -> bytes:
    inner = draw(_message(depth - 1))
    return (
        b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + inner.rstrip(CRLF)
    )


@st.composite
def _message(draw: st.DrawFn, depth: int = 2) -> bytes:
    subject = draw(_HEADER_TEXT)
    name = draw(_HEADER_TEXT)
    head = (
        b"From: " + _display(name) + b" <alice@example.net>\r\n"
        b"Subject: " + subject.encode("utf-8") + CRLF + b"MIME-Version: 1.0\r\n"
    )
    body = draw(_entities(depth))
    return head + body + CRLF


def _display(name: str) -> bytes:
    return b'"' + name.replace("\\", "").replace('"', "").encode("utf-8") + b'"'


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=150, deadline=None)
    @given(_message())
    def test_seven_bit_and_same_content(self, raw: bytes) -> None:
        """After downgrade every line is 7-bit and ≤ 998 octets; every part decodes the same."""
        out = downgrade(raw)
        check_7bit(out)
        before, after = parse(raw), parse(out)
        self.assertEqual(
            [(t, b.replace(CRLF, b"\n")) for t, b in leaves(before)],
            [(t, b.replace(CRLF, b"\n")) for t, b in leaves(after)],
        )
        subject = raw.split(b"Subject: ", 1)[1].split(CRLF, 1)[0].decode("utf-8")
        self.assertEqual(header_text(str(after["Subject"])).strip(), subject.strip())

    @settings(max_examples=300)
    @given(
        st.one_of(
            st.binary(max_size=2000).map(lambda b: b"Subject: x\r\n\r\n" + b),
            st.lists(
                st.sampled_from(
                    [
                        b"Content-Type: multipart/mixed; boundary=b\r\n",
                        b"Content-Type: message/rfc822\r\n",
                        b'Content-Type: text/plain; name="\xc3\xa4"\r\n',
                        b"Content-Transfer-Encoding: 8bit\r\n",
                        b"Content-Transfer-Encoding: quoted-printable\r\n",
                        b"To: \xc3\xa4 <a@b>\r\n",
                        b"Subject: \xc3\xa4\r\n",
                        b"\r\n",
                        b"--b\r\n",
                        b"--b--\r\n",
                        b"\xc3\xa4 =C3=\r\n",
                        b" folded \xff\r\n",
                    ]
                ),
                max_size=30,
            ).map(b"".join),
        )
    )
    def test_any_bytes(self, raw: bytes) -> None:
        """Any bytes come out 7-bit, or are refused in words: never another exception."""
        try:
            out = downgrade(raw)
        except DowngradeError as e:
            self.assertTrue(e.reason)
            return
        check_7bit(out)


# --- examples ----------------------------------------------------------------------------

FORWARD = (
    b"From: Bob <bob@example.net>\r\n"
    b"Subject: Fwd: hi\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="==b=="\r\n'
    b"\r\n"
    b"--==b==\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"See below.\r\n"
    b"--==b==\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"From: =?utf-8?q?J=C3=B6rg?= <jorg@example.net>\r\n"
    b"Subject: plain\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Gr\xc3\xbc\xc3\x9fe\r\n"
    b"--==b==--\r\n"
)


class ExampleTests(SynchronousTestCase):
    def test_seven_bit_untouched(self) -> None:
        """A 7-bit message comes back as it was (line ends made CRLF)."""
        raw = b"Subject: hi\nX-Long: " + b"a" * 2000 + b"\n\nbody\n"
        self.assertEqual(downgrade(raw), raw.replace(b"\n", CRLF))

    def test_forwarded_message_rfc822(self) -> None:
        """message/rfc822 stays 7bit on the outside; its 8-bit text part becomes QP."""
        out = downgrade(FORWARD)
        check_7bit(out)
        self.assertIn(b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 7bit\r\n", out)
        self.assertIn(b"\r\n\r\nGr=C3=BC=C3=9Fe\r\n--==b==--\r\n", out)
        self.assertIn(b"--==b==\r\nContent-Type: text/plain; charset=utf-8\r\n", out)
        self.assertIn(b"See below.\r\n--==b==\r\n", out)  # the 7-bit part, byte for byte

    def test_binary_part_base64(self) -> None:
        """An 8-bit part that is not text becomes base64; its file name RFC 2231."""
        raw = (
            b"MIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
            b"--b\r\n"
            b'Content-Type: application/pdf; name="\xc3\xa4.pdf"\r\n'
            b"Content-Transfer-Encoding: binary\r\n\r\n"
            b"\x00\xff\xfe\r\n--b--\r\n"
        )
        out = downgrade(raw)
        check_7bit(out)
        part = parse(out).get_payload(0)
        self.assertEqual(part["Content-Transfer-Encoding"], "base64")
        self.assertEqual(part.get_payload(decode=True), b"\x00\xff\xfe")
        name = email.utils.collapse_rfc2231_value(part.get_param("name"))
        self.assertEqual(name, "\u00e4.pdf")

    def test_non_mime_body(self) -> None:
        """A message without MIME headers and an 8-bit body becomes MIME, QP, UTF-8."""
        out = downgrade(b"Subject: x\r\n\r\nK\xc3\xb6ln\r\n")
        self.assertEqual(
            out,
            b"Subject: x\r\nContent-Transfer-Encoding: quoted-printable\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nK=C3=B6ln\r\n",
        )

    def test_address_header(self) -> None:
        """8-bit display names become encoded-words; the addresses stay."""
        out = downgrade(b'To: "M\xc3\xbcller, A" <a@x.de>, b@y.de\r\n\r\nx\r\n')
        check_7bit(out)
        to = email.message_from_bytes(out, policy=email.policy.default)["To"]
        self.assertEqual(
            [(a.display_name, a.addr_spec) for a in to.addresses],
            [("M\u00fcller, A", "a@x.de"), ("", "b@y.de")],
        )

    def test_refused(self) -> None:
        """What cannot be made 7-bit without changing the message is refused, saying why."""
        cases = {
            b"From: j\xc3\xb6rg@x.de\r\n\r\nx\r\n": "an address in the From header has "
            "non-ASCII characters (that needs SMTPUTF8)",
            b"Subject: \xe4\r\n\r\nx\r\n": "the Subject header has 8-bit bytes that are not UTF-8",
            b"Message-ID: <\xc3\xa4@x>\r\n\r\nx\r\n": "the Message-ID header has 8-bit bytes, "
            "which cannot be encoded there",
            b"Content-Type: multipart/mixed\r\n\r\n\xc3\xa4\r\n": "a multipart/mixed part has no "
            "boundary parameter",
            b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n\xc3\xa4\r\n': "a "
            "multipart/mixed part has no part delimited by its boundary",
            b"Content-Transfer-Encoding: base64\r\n\r\n\xc3\xa4\r\n": "a base64-encoded "
            "text/plain part has 8-bit bytes",
            b"Content-Type: message/partial\r\n\r\n\xc3\xa4\r\n": "a message/partial part has "
            "8-bit content, which it may not have",
        }
        for raw, reason in cases.items():
            with self.assertRaises(DowngradeError) as e:
                downgrade(raw)
            self.assertEqual(e.exception.reason, reason)

    def test_is_eight_bit(self) -> None:
        """Any byte over 127 makes data 8-bit."""
        self.assertFalse(is_eight_bit(b"plain \x7f text"))
        self.assertTrue(is_eight_bit(b"plain \x80 text"))
