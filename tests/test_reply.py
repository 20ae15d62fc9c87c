"""Reply, reply all and forward from the reading page: the mail built, and the portal's routes.

The first half tests L{secmail.web.reply} as pure functions. The second drives the portal through
C{StubTreq} with the fixtures of C{tests/fixtures/portal.py}; the request body limit and the
in-memory body are tested on the real site (L{secmail.web.site.make_site}) over a
C{StringTransport}, since StubTreq builds a site of its own.
"""

from __future__ import annotations

import email.header
import io
import re
import secrets
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import HTTPChannel

from secmail.address import Level
from secmail.crypto import MasterKey
from secmail.store.messages import NewMessage, hash_token
from secmail.store.rows import short_id
from secmail.web import forms, site
from secmail.web.forms import Upload, parse_multipart
from secmail.web.portal import Portal
from secmail.web.reply import (
    ReplyError,
    attachment_filename,
    build_reply,
    reply_choices,
)
from secmail.web.reply_letters import reply_messages
from secmail.web.site import make_site
from tests.fixtures.logs import CapturedLog
from tests.fixtures.mails import ALICE, BINARY, BOB, HEAD, RICH, mime, parse
from tests.fixtures.portal import Browser, Letter, PortalFixture, Reply
from tests.fixtures.settings import INTERNAL, RELAY, make_settings

CAROL = "carol@partner.example"
DAVE = "dave@corp.example"
ERIN = "erin@corp.example"
MALLORY = "mallory@evil.example"
DATE = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
LIMIT = 200_000  # the portal's max_upload_size in these tests: a 150 KB upload fits

THREAD = mime(
    "From: Alice Example <alice@corp.example>",
    "To: Bob Reader <bob@partner.example.s>, carol@partner.example",
    "Cc: Dave <dave@corp.example>, alice@corp.example",
    "Subject: Quarterly figures",
    "Date: Tue, 14 Nov 2023 22:13:20 +0000",
    "Message-ID: <q3@corp.example>",
    "References: <root@corp.example> <mid@corp.example>",
    "MIME-Version: 1.0",
    "Content-Type: text/plain; charset=utf-8",
    "",
    "First line.",
    "",
    "Third line.",
)


def unit_settings(**portal: Any) -> Any:
    return make_settings("/nonexistent/secmail-reply-tests", portal=portal)


def sections(settings: Any) -> dict[str, Any]:
    """What the reply builders read of the settings: routes, secure and the gateway's identity."""
    return {"routes": settings.routes, "secure": settings.secure, "identity": settings.identity}


def build(
    mode: str = "reply",
    text: str = "Thanks, Alice.",
    uploads: Sequence[Upload] = (),
    forward_to: str = "",
    raw: bytes = THREAD,
    reader: str = BOB,
    reader_original: str = BOB + ".s",
) -> Any:
    return build_reply(
        original=raw,
        mode=mode,
        reader=reader,
        reader_original=reader_original,
        text=text,
        uploads=uploads,
        forward_to=forward_to,
        **sections(unit_settings()),
        date=DATE,
    )


def text_of(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    return str(body.get_content()).replace("\r\n", "\n")


def files_of(message: EmailMessage) -> list[tuple[str | None, str, bytes]]:
    return [
        (part.get_filename(), part.get_content_type(), part.get_payload(decode=True))
        for part in message.iter_attachments()
        if part.get_content_type() != "message/rfc822"
    ]


# --- the mail ---------------------------------------------------------------------------------


class ReplyMailTests(SynchronousTestCase):
    def test_threading_headers(self) -> None:
        """In-Reply-To is the original's Message-ID; References its References plus that ID."""
        mail = parse(build().content)
        self.assertEqual(mail["In-Reply-To"], "<q3@corp.example>")
        self.assertEqual(
            mail["References"], "<root@corp.example> <mid@corp.example> <q3@corp.example>"
        )

    def test_threading_without_references(self) -> None:
        """With only a Message-ID, References is that ID; with neither, no threading headers."""
        only_id = THREAD.replace(b"References: <root@corp.example> <mid@corp.example>\r\n", b"")
        mail = parse(build(raw=only_id).content)
        self.assertEqual(mail["References"], "<q3@corp.example>")
        none = only_id.replace(b"Message-ID: <q3@corp.example>\r\n", b"")
        bare = parse(build(raw=none).content)
        self.assertIsNone(bare["In-Reply-To"])
        self.assertIsNone(bare["References"])

    def test_long_references_trimmed(self) -> None:
        """A long References chain keeps its first ID and the latest ones, 20 in all."""
        ids = " ".join(f"<r{i}@corp.example>" for i in range(40))
        raw = THREAD.replace(b"<root@corp.example> <mid@corp.example>", ids.encode())
        references = parse(build(raw=raw).content)["References"].split()
        self.assertEqual(len(references), 20)
        self.assertEqual(references[0], "<r0@corp.example>")
        self.assertEqual(references[-2:], ["<r39@corp.example>", "<q3@corp.example>"])

    def test_quoting(self) -> None:
        """The typed text comes first, then "On <date>, <from> wrote:" and the original quoted."""
        body = text_of(parse(build(text="Thanks, Alice.\r\nSee you.").content))
        self.assertEqual(
            body,
            "Thanks, Alice.\nSee you.\n\n"
            "On Tue, 14 Nov 2023 22:13:20 +0000, Alice Example <alice@corp.example> wrote:\n"
            "> First line.\n>\n> Third line.\n",
        )

    def test_quoting_html_only(self) -> None:
        """An original with only HTML is quoted as its text, without tags."""
        raw = mime(
            *HEAD,
            "Content-Type: text/html; charset=utf-8",
            "",
            "<p>Hello <b>there</b></p><p>Second &amp; last</p><script>x()</script>",
        )
        body = text_of(parse(build(raw=raw).content))
        self.assertIn("> Hello there\n> Second & last", body)
        self.assertNotIn("<", body.replace("<alice@corp.example>", ""))
        self.assertNotIn("x()", body)

    def test_subject_prefixes(self) -> None:
        """Re: is added once (not to Re:/RE:), Fwd: once; an empty subject says so."""
        for original, mode, expected in [
            ("Quarterly figures", "reply", "Re: Quarterly figures"),
            ("Re: Quarterly figures", "reply", "Re: Quarterly figures"),
            ("RE: Quarterly figures", "reply-all", "RE: Quarterly figures"),
            ("", "reply", "Re: (no subject)"),
            ("Quarterly figures", "forward", "Fwd: Quarterly figures"),
            ("Fwd: Quarterly figures", "forward", "Fwd: Quarterly figures"),
        ]:
            raw = THREAD.replace(b"Subject: Quarterly figures", f"Subject: {original}".encode())
            mail = parse(build(mode=mode, raw=raw, forward_to=DAVE).content)
            self.assertEqual(mail["Subject"], expected, (original, mode))

    def test_sender_fields(self) -> None:
        """From is the reader (via secmail), Reply-To the marked address; no Auto-Submitted."""
        mail = parse(build().content)
        [sender] = mail["From"].addresses
        self.assertEqual(sender.addr_spec, BOB)
        self.assertEqual(sender.display_name, "Bob Reader (via secmail)")
        self.assertEqual(mail["Reply-To"].addresses[0].addr_spec, BOB + ".s")
        self.assertIsNone(mail["Auto-Submitted"])
        self.assertRegex(mail["Message-ID"], r"^<[^<>\s]+@gw\.example>$")

    def test_reply_goes_to_sender_only(self) -> None:
        """Reply: To the original sender, nobody in Cc, nobody outside."""
        reply = build()
        mail = parse(reply.content)
        self.assertEqual([a.addr_spec for a in mail["To"].addresses], [ALICE])
        self.assertIsNone(mail["Cc"])
        self.assertEqual(reply.audience.internal, (ALICE,))
        self.assertEqual(reply.audience.secure, ())

    def test_reply_to_field_wins(self) -> None:
        """When the original has a Reply-To (inside the organisation), the reply goes there."""
        raw = THREAD.replace(b"Subject:", b"Reply-To: Team <team@corp.example>\r\nSubject:")
        reply = build(raw=raw)
        self.assertEqual(reply.audience.internal, ("team@corp.example",))

    def test_reply_all_splits_inside_and_outside(self) -> None:
        """Reply all: insiders get the mail, outsiders (shown marked) a letter; not the reader."""
        reply = build(mode="reply-all")
        self.assertEqual(reply.audience.internal, (ALICE, DAVE))
        [carol] = reply.audience.secure
        self.assertEqual((carol.address, carol.level), (CAROL, Level.LETTER))
        mail = parse(reply.content)
        self.assertEqual(
            [a.addr_spec for a in mail["To"].addresses], [ALICE, CAROL + ".s"]
        )  # Alice's own "reply all" to this stays secure for Carol
        self.assertEqual([a.addr_spec for a in mail["Cc"].addresses], [DAVE])

    def test_registered_outsider_stays_registered(self) -> None:
        """An outsider the sender wrote as a registered letter gets a registered letter."""
        raw = THREAD.replace(b"Cc: Dave", b"Cc: Erik <erik@partner.example.0401234567.s>, Dave")
        secure = {r.address: r for r in build(mode="reply-all", raw=raw).audience.secure}
        erik = secure["erik@partner.example"]
        self.assertEqual((erik.level, erik.phone), (Level.REGISTERED, "+358401234567"))

    def test_reply_choices(self) -> None:
        """Reply is offered for an internal sender; Reply all only when it reaches more people."""
        settings = unit_settings()
        self.assertEqual(reply_choices(THREAD, BOB, **sections(settings)), (True, True))
        alone = mime(*HEAD, "", "Only Bob.")
        self.assertEqual(reply_choices(alone, BOB, **sections(settings)), (True, False))
        outside = THREAD.replace(
            b"From: Alice Example <alice@corp.example>", b"From: " + MALLORY.encode()
        )
        self.assertEqual(reply_choices(outside, BOB, **sections(settings)), (False, False))

    def test_outside_sender_refused(self) -> None:
        """A reply (or reply all) to a sender outside the organisation is refused, saying why."""
        raw = THREAD.replace(
            b"From: Alice Example <alice@corp.example>", b"From: " + MALLORY.encode()
        )
        for mode in ("reply", "reply-all"):
            with self.assertRaises(ReplyError) as e:
                build(mode=mode, raw=raw)
            self.assertIn(MALLORY, str(e.exception))
            self.assertIn("outside the organisation", str(e.exception))
            self.assertIn("corp.example", str(e.exception))
        no_sender = THREAD.replace(b"From: Alice Example <alice@corp.example>\r\n", b"")
        with self.assertRaises(ReplyError) as e:
            build(raw=no_sender)
        self.assertIn("no sender address", str(e.exception))

    def test_reply_to_the_gateway_refused(self) -> None:
        """A Reply-To naming only the gateway's own address leaves nobody: refused."""
        raw = THREAD.replace(b"Subject:", b"Reply-To: secmail-bounces@corp.example\r\nSubject:")
        gateway = {"bounce_address": "secmail-bounces@corp.example"}
        with self.assertRaises(ReplyError) as e:
            build_reply(
                original=raw,
                mode="reply",
                reader=BOB,
                reader_original=BOB,
                text="Hi",
                uploads=(),
                forward_to="",
                **sections(make_settings("/nonexistent/secmail-reply-tests", gateway=gateway)),
                date=DATE,
            )
        self.assertIn("nobody in the organisation", str(e.exception))

    def test_empty_reply_refused(self) -> None:
        """A reply with no text and no file is refused; a forward needs no text."""
        with self.assertRaises(ReplyError) as e:
            build(text=" \r\n ")
        self.assertIn("write a reply", str(e.exception))
        build(text="", uploads=[Upload("a.txt", "text/plain", b"x")])
        build(mode="forward", text="", forward_to=DAVE)

    def test_unknown_mode_refused(self) -> None:
        """A mode other than reply, reply-all and forward is refused."""
        with self.assertRaises(ReplyError):
            build(mode="bounce")

    def test_forward(self) -> None:
        """Forward: to the typed internal addresses, Fwd: subject, the original attached."""
        reply = build(mode="forward", text="FYI", forward_to=f"{DAVE}, <{ERIN}>; {DAVE}")
        self.assertEqual(reply.audience.internal, (DAVE, ERIN))
        mail = parse(reply.content)
        self.assertEqual([a.addr_spec for a in mail["To"].addresses], [DAVE, ERIN])
        self.assertIsNone(mail["In-Reply-To"])
        self.assertIn("FYI", text_of(mail))
        self.assertIn("---------- Forwarded message ----------", text_of(mail))
        [attached] = [
            p for p in mail.iter_attachments() if p.get_content_type() == "message/rfc822"
        ]
        self.assertEqual(attached.get_filename(), "message.eml")
        self.assertIn(THREAD, reply.content)  # byte for byte

    def test_forward_eight_bit(self) -> None:
        """An 8-bit original (raw UTF-8 header and body) is forwarded, attached byte for byte."""
        raw = THREAD.replace(b"Quarterly", b"Quartalsz\xc3\xa4hlen").replace(
            b"Third line.", b"Dritte Zeile \xc3\xbc."
        )
        reply = build(mode="forward", forward_to=DAVE, raw=raw)
        self.assertIn(raw, reply.content)
        [attached] = [
            p
            for p in parse(reply.content).iter_attachments()
            if p.get_content_type() == "message/rfc822"
        ]
        self.assertEqual(attached["Content-Transfer-Encoding"], "8bit")

    def test_forward_refuses_outside_addresses(self) -> None:
        """Forwarding to any address outside the organisation is refused, naming it."""
        for typed, named in [
            (f"{DAVE}, {MALLORY}", MALLORY),
            (CAROL + ".s", CAROL),
            ("not an address", "not"),
            ("", "Type the address"),
        ]:
            with self.assertRaises(ReplyError) as e:
                build(mode="forward", forward_to=typed)
            self.assertIn(named, str(e.exception), typed)

    def test_route_forms_refused(self) -> None:
        """Forward, reply and reply all refuse %, !, route and quoted forms, naming the address."""
        for typed in (
            "boss%evil.example@corp.example",
            "evil.example!boss@corp.example",
            "@corp.example:boss@evil.example",
            '"boss@evil.example"@corp.example',
            "boss@[192.0.2.1]",
        ):
            with self.assertRaises(ReplyError) as e:
                build(mode="forward", forward_to=f"{DAVE}, {typed}")
            self.assertIn(typed, str(e.exception), typed)
        percent = b"boss%evil.example@corp.example"
        sender = THREAD.replace(b"<alice@corp.example>", b"<" + percent + b">", 1)
        with self.assertRaises(ReplyError) as e:
            build(raw=sender)
        self.assertIn(percent.decode(), str(e.exception))
        cc = THREAD.replace(b"Cc: Dave <dave@corp.example>", b"Cc: Boss <" + percent + b">")
        with self.assertRaises(ReplyError) as e:
            build(mode="reply-all", raw=cc)
        self.assertIn(percent.decode(), str(e.exception))
        # Reply (to Alice) still works; reply all is not offered.
        self.assertEqual(build(raw=cc).audience.internal, (ALICE,))
        self.assertEqual(reply_choices(cc, BOB, **sections(unit_settings())), (True, False))

    def test_attachments_intact(self) -> None:
        """Uploaded files arrive byte for byte, under safe names, with a plain MIME type."""
        uploads = [
            Upload("report.pdf", "application/pdf", BINARY),
            Upload('C:\\dir\\..\\"x".exe\r\nX-Injected: 1', "text/html\r\nX: y", b"<b>"),
            Upload("", "multipart/mixed", b"\x00"),
        ]
        reply = build(uploads=uploads)
        found = files_of(parse(reply.content))
        self.assertEqual(
            found,
            [
                ("report.pdf", "application/pdf", BINARY),
                ("_x_.exe__X-Injected_ 1", "application/octet-stream", b"<b>"),
                ("attachment-3", "application/octet-stream", b"\x00"),
            ],
        )
        self.assertEqual(reply.attachments, tuple(name for name, _, _ in found))

    def test_attachment_filename(self) -> None:
        """File names lose paths, controls, quotes and bidi overrides, and are kept short."""
        self.assertEqual(attachment_filename("../../etc/passwd", 0), "passwd")
        self.assertEqual(attachment_filename("a\u202etxt.exe", 0), "a_txt.exe")
        self.assertEqual(attachment_filename("...", 4), "attachment-5")
        long = attachment_filename("x" * 300 + ".pdf", 0)
        self.assertEqual((len(long), long[-4:]), (100, ".pdf"))

    @settings(max_examples=150, deadline=None)
    @given(
        text=st.text(),
        filename=st.text(),
        subject=st.text(),
        name=st.text(),
        forward_to=st.text(),
    )
    def test_no_header_injection(
        self, text: str, filename: str, subject: str, name: str, forward_to: str
    ) -> None:
        """Whatever the form and the original's headers hold, the mail has only its own fields."""
        encoded_subject = email.header.Header(subject, "utf-8").encode()
        encoded_name = email.header.Header(name, "utf-8").encode()
        raw = THREAD.replace(b"Quarterly figures", encoded_subject.encode("ascii")).replace(
            b"Alice Example", encoded_name.encode("ascii")
        )
        upload = Upload(filename, "text/plain", b"data")
        for mode in ("reply", "reply-all", "forward"):
            try:
                reply = build(
                    mode=mode, text=text + "x", uploads=[upload], forward_to=forward_to, raw=raw
                )
            except ReplyError:
                self.assertEqual(mode, "forward")  # only typed addresses can be refused
                continue
            head = reply.content.split(b"\r\n\r\n", 1)[0]
            names = [
                line.split(b":", 1)[0].decode()
                for line in head.split(b"\r\n")
                if line[:1] not in (b" ", b"\t")
            ]
            expected = ["From", "To", "Reply-To", "Subject", "Date", "Message-ID", "References"]
            expected += ["MIME-Version", "Content-Type"]
            if mode == "reply-all":
                expected.insert(2, "Cc")
            if mode != "forward":
                expected.insert(expected.index("References"), "In-Reply-To")
            self.assertEqual(names, expected)
            self.assertNotIn(b"\r\n\r\n", head)
            self.assertTrue(
                all(b"\r" not in line and b"\n" not in line for line in head.split(b"\r\n"))
            )
            mail = parse(reply.content)
            for part in mail.walk():
                for key in part.keys():
                    self.assertNotIn(key.lower(), ("x-injected", "bcc"))

    def test_address_injection_refused(self) -> None:
        """A line break or header in a typed forward address is refused, not written."""
        for typed in (f"{DAVE}\r\nBcc: {MALLORY}", f"{DAVE}\nX-Injected: 1", f'"{DAVE}"'):
            with self.assertRaises(ReplyError):
                build(mode="forward", forward_to=typed)


class ReplyMessagesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.settings = unit_settings()
        self.master = MasterKey(b"k" * 32)
        self.tokens: list[str] = []

    def new_token(self) -> str:
        self.tokens.append(secrets.token_urlsafe(32))
        return self.tokens[-1]

    def messages(self, mode: str) -> list[NewMessage]:
        reply = build(mode=mode, forward_to=f"{DAVE}, someone@corp.example")
        return reply_messages(
            reply,
            texts=self.settings.notification_texts,
            routes=self.settings.routes,
            master=self.master,
            reader=BOB,
            about="original-id",
            date=DATE,
            new_token=self.new_token,
        )

    def test_reply_is_queued_on_the_incoming_route(self) -> None:
        """A reply: kind reply, one row per domain on its route, from the bounce address."""
        [message] = self.messages("reply")
        self.assertEqual((message.kind, message.sender), ("reply", "bounces@gw.example"))
        self.assertEqual(message.envelopes, ())
        [row] = message.deliveries
        self.assertEqual(row.recipients, (ALICE,))
        self.assertEqual((row.kind, row.route, row.domain), ("reply", INTERNAL, "corp.example"))
        self.assertEqual(
            (row.sender, row.notify, row.about), ("bounces@gw.example", "", "original-id")
        )

    def test_forward_kind(self) -> None:
        """A forward is queued as kind forward, all its recipients in one row per domain."""
        [message] = self.messages("forward")
        [row] = message.deliveries
        self.assertEqual((message.kind, row.kind), ("forward", "forward"))
        self.assertEqual(row.recipients, (DAVE, "someone@corp.example"))

    def test_outsiders_get_a_secure_letter(self) -> None:
        """Reply all: an outsider gets an envelope, fresh token and notification, never the mail."""
        reply, letter, notification = self.messages("reply-all")
        self.assertEqual(reply.deliveries[0].recipients, (ALICE, DAVE))
        self.assertEqual((letter.kind, letter.sender, letter.deliveries), ("mail", BOB, ()))
        [envelope] = letter.envelopes
        [token] = self.tokens
        self.assertEqual((envelope.recipient, envelope.level), (CAROL, "letter"))
        self.assertEqual(envelope.token_hash, hash_token(token))
        self.assertEqual(
            [kind for _, kind, _ in letter.events], ["received", "notification queued"]
        )
        [row] = notification.deliveries
        self.assertEqual((notification.kind, row.kind), ("notification", "notification"))
        self.assertEqual(row.recipients, (CAROL,))
        self.assertEqual(row.route, RELAY)
        self.assertEqual(row.sender, f"bounces+{envelope.id}@gw.example")
        self.assertEqual(row.about, letter.content.message_id)
        text = notification.content.small_plaintext()
        assert text is not None
        self.assertIn(f"/m/{token}".encode(), text)
        self.assertNotIn(b"Thanks, Alice", text)
        for message in (reply, letter, notification):
            for delivery in message.deliveries:
                if CAROL in delivery.recipients:
                    self.assertEqual(delivery.kind, "notification")


# --- the portal ---------------------------------------------------------------------------------


def multipart(
    fields: Sequence[tuple[str, str]],
    files: Sequence[tuple[str, str, str, bytes]] = (),
) -> tuple[bytes, str]:
    """A multipart/form-data body as a browser writes it, and its Content-Type."""
    boundary = "----secmailtest" + secrets.token_hex(8)
    out = []
    for name, value in fields:
        out.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value.encode()
            + b"\r\n"
        )
    for name, filename, content_type, data in files:
        out.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'.encode()
            + data
            + b"\r\n"
        )
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


class UploadingBrowser(Browser):
    """
    The portal tests' browser with the reply form (text and files). Like a browser, it
    posts the last reading page's form id (set by the fixture's C{reader}).
    """

    form_id: str | None = None

    async def read_page(self) -> Reply:
        """GET /read and keep its reply form's id, as the page's forms would."""
        page = await self.get("/read")
        self.form_id = page.form_id()
        return page

    async def send(
        self,
        mode: str,
        csrf: str | None,
        text: str = "",
        to: str = "",
        files: Sequence[tuple[str, str, bytes]] = (),
    ) -> Reply:
        fields = [("mode", mode), ("text", text), ("to", to)]
        if csrf is not None:
            fields.insert(0, ("csrf", csrf))
        if self.form_id is not None:
            fields.append(("form", self.form_id))
        body, content_type = multipart(fields, [("files", *f) for f in files])
        return await self.post_body("/read/reply", body, content_type)


class ReplyPortalFixture(PortalFixture):
    def setUp(self) -> None:
        super().setUp()
        self.settings = make_settings(
            self.data_dir, portal={"url": "https://portal.gw.example", "max_upload_size": LIMIT}
        )
        self.portal = Portal(
            self.settings,
            self.store,
            self.portal_store,
            self.clock,
            csrf_key=secrets.token_bytes(32),
            on_commit=self.committed,
        )
        self.resource = self.portal.app.resource()

    async def reader(self, raw: bytes = THREAD) -> tuple[Letter, UploadingBrowser, str]:
        """Bob, signed in to a letter, and his session's CSRF value from the reading page."""
        letter = await self.letter(raw)
        signed_in = await self.signed_in(letter)
        browser = UploadingBrowser(self.resource, signed_in.cookies)
        page = await browser.read_page()
        self.assertEqual(page.code, 200)
        self.assertIsNotNone(browser.form_id)
        return letter, browser, page.csrf()

    async def sent(self) -> list[Any]:
        return [r for r in await self.rows() if r.kind in ("reply", "forward")]


class ReplyPortalTests(ReplyPortalFixture):
    async def test_reading_page_has_the_forms(self) -> None:
        """/read has Reply, Reply all and Forward forms: multipart, labelled, with the CSRF."""
        _, browser, csrf = await self.reader()
        page = (await browser.get("/read")).text
        self.assertEqual(
            page.count('<form method="post" action="/read/reply" enctype="multipart/form-data"'),
            2,
        )
        self.assertEqual(page.count(f'<input type="hidden" name="csrf" value="{csrf}">'), 3)
        for control in ("reply-text", "reply-files", "forward-to", "forward-text", "forward-files"):
            self.assertIn(f'<label for="{control}">', page)
            self.assertIn(f'id="{control}"', page)
        self.assertIn('type="file" id="reply-files" name="files" multiple', page)
        self.assertIn('name="mode" value="reply"', page)
        self.assertIn('name="mode" value="reply-all"', page)
        self.assertIn('name="mode" value="forward"', page)

    async def test_no_reply_all_when_alone(self) -> None:
        """Reply all is not offered when the reader was the only recipient."""
        _, browser, _ = await self.reader(RICH)
        page = (await browser.get("/read")).text
        self.assertIn('value="reply"', page)
        self.assertNotIn('value="reply-all"', page)

    async def test_no_reply_to_outside_sender(self) -> None:
        """An outside sender: no Reply form, a note instead; a reply POST is refused (400)."""
        raw = THREAD.replace(
            b"From: Alice Example <alice@corp.example>", b"From: " + MALLORY.encode()
        )
        _, browser, csrf = await self.reader(raw)
        page = (await browser.get("/read")).text
        self.assertNotIn('value="reply"', page)
        self.assertIn("you cannot reply from here", page)
        reply = await browser.send("reply", csrf, text="Hello")
        self.assertEqual(reply.code, 400)
        self.assertIn(f"The sender, {MALLORY}, is outside the organisation", reply.text)
        self.assertEqual(await self.sent(), [])

    async def test_reply_is_queued(self) -> None:
        """A reply is queued as kind reply on the incoming route, threaded, attachment intact."""
        letter, browser, csrf = await self.reader()
        commits = self.commits
        reply = await browser.send(
            "reply", csrf, text="Thanks, Alice.", files=[("data.bin", "application/x-data", BINARY)]
        )
        self.assertEqual(reply.code, 303, reply.text)
        self.assertEqual(reply.header("Location"), "/read/sent")
        self.assertEqual(self.commits, commits + 1)
        [row] = await self.sent()
        self.assertEqual((row.kind, row.route, row.recipients), ("reply", INTERNAL, (ALICE,)))
        self.assertEqual(
            (row.sender, row.notify, row.about), ("bounces@gw.example", "", letter.message_id)
        )
        mail = parse(await self.store.read_all(row.message_id))
        self.assertEqual(mail["Subject"], "Re: Quarterly figures")
        self.assertEqual(mail["In-Reply-To"], "<q3@corp.example>")
        self.assertEqual(mail["From"].addresses[0].addr_spec, BOB)
        self.assertIn("Thanks, Alice.\n\nOn Tue, 14 Nov 2023", text_of(mail))
        self.assertEqual(files_of(mail), [("data.bin", "application/x-data", BINARY)])
        self.assertEqual(await self.count("envelopes"), 1)  # Bob's own; nobody else's
        done = await browser.get("/read/sent")
        self.assertEqual(done.code, 200)
        self.assertIn(f"Reply sent by e-mail to {ALICE}. Attached: data.bin.", done.text)

    async def test_events_recorded(self) -> None:
        """Each reply and forward is an event on the original, for this envelope."""
        letter, browser, csrf = await self.reader()
        await browser.send("reply", csrf, text="One")
        await browser.read_page()
        await browser.send("forward", csrf, to=DAVE)
        events = [
            (kind, envelope_id, detail)
            for _, kind, envelope_id, detail in await self.store.events(letter.message_id)
            if kind in ("replied", "forwarded")
        ]
        self.assertEqual(
            events,
            [
                ("replied", letter.envelope_id, f"Reply sent by e-mail to {ALICE}."),
                ("forwarded", letter.envelope_id, f"Forwarded by e-mail to {DAVE}."),
            ],
        )

    async def test_double_send_sends_once(self) -> None:
        """The same reading page's form posted twice (a double click) sends one mail."""
        letter, browser, csrf = await self.reader()
        first = await browser.send("reply", csrf, text="Once")
        again = await browser.send("reply", csrf, text="Once")
        self.assertEqual((first.code, again.code), (303, 303))
        self.assertEqual(again.header("Location"), "/read/sent")
        self.assertEqual(len(await self.sent()), 1)
        replied = [k for _, k, _, _ in await self.store.events(letter.message_id) if k == "replied"]
        self.assertEqual(replied, ["replied"])
        for bad in ("", "short", "x" * 65):
            browser.form_id = bad
            self.assertEqual((await browser.send("reply", csrf, text="x")).code, 403, bad)
        await browser.read_page()
        self.assertEqual((await browser.send("reply", csrf, text="Twice")).code, 303)
        self.assertEqual(len(await self.sent()), 2)

    async def test_reply_all_makes_a_secure_letter(self) -> None:
        """Reply all: an outsider gets only a notification of a secure letter she can read."""
        letter, browser, csrf = await self.reader()
        log = CapturedLog(self)
        reply = await browser.send("reply-all", csrf, text="SecretReplyText for everyone")
        self.assertEqual(reply.code, 303, reply.text)
        [row] = await self.sent()
        self.assertEqual(row.recipients, (ALICE, DAVE))
        [notice] = await self.rows("notification")
        copy = short_id(notice.about)
        via = f"from 127.0.0.1 via the portal (reply-all to {short_id(letter.message_id)})"
        self.assertEqual(len(log.lines()), 3, log.lines())
        self.assertRegex(
            log.lines()[0],
            rf"^{short_id(row.message_id)}: accepted {re.escape(via)} sender=<{BOB}> size=\d+"
            rf" recipients=<{ALICE}> \(relay\), <{DAVE}> \(relay\)$",
        )
        self.assertRegex(
            log.lines()[1],
            rf"^{copy}: accepted {re.escape(via)} sender=<{BOB}> size=\d+"
            rf" recipients=<{CAROL}> \(letter\)$",
        )
        self.assertEqual(
            log.lines()[2],
            f"{copy}: notification {short_id(notice.message_id)} queued to=<{CAROL}>",
        )
        self.assertNotIn("SecretReplyText", log.everything())
        for item in await self.rows():
            if CAROL in item.recipients:
                self.assertEqual(item.kind, "notification")
                self.assertEqual(item.route, RELAY)
                self.assertNotIn(b"SecretReplyText", await self.store.read_all(item.message_id))
        [notification] = [r for r in await self.rows("notification") if r.recipients == (CAROL,)]
        text = parse(await self.store.read_all(notification.message_id)).get_body(("plain",))
        assert text is not None
        [token] = re.findall(r"https://portal\.gw\.example/m/([A-Za-z0-9_-]+)", text.get_content())
        envelope = await self.store.envelope_by_token(token)
        assert envelope is not None
        self.assertEqual((envelope.recipient, envelope.sender), (CAROL, BOB))
        self.assertNotEqual(envelope.message_id, letter.message_id)
        carol = await self.signed_in(Letter(token, envelope.message_id, envelope.id))
        page = await carol.get("/read")
        self.assertIn("SecretReplyText for everyone", page.text)
        self.assertIn("Re: Quarterly figures", page.text)
        done = await browser.get("/read/sent")
        self.assertIn(f"Sent as a secure message to {CAROL}.", done.text)

    async def test_forward_inside(self) -> None:
        """A forward to an internal address is queued there with the original attached."""
        _, browser, csrf = await self.reader()
        reply = await browser.send("forward", csrf, text="FYI", to=DAVE)
        self.assertEqual(reply.code, 303, reply.text)
        [row] = await self.sent()
        self.assertEqual((row.kind, row.route, row.recipients), ("forward", INTERNAL, (DAVE,)))
        content = await self.store.read_all(row.message_id)
        self.assertIn(THREAD, content)
        self.assertEqual(parse(content)["Subject"], "Fwd: Quarterly figures")

    async def test_forward_outside_refused(self) -> None:
        """A forward outside is refused naming the address, text kept, nothing queued."""
        letter, browser, csrf = await self.reader()
        reply = await browser.send("forward", csrf, text="Look <at> this", to=f"{DAVE}, {MALLORY}")
        self.assertEqual(reply.code, 400)
        self.assertIn(f"{MALLORY} is outside the organisation", reply.text)
        self.assertIn('role="alert"', reply.text)
        self.assertIn(">Look &lt;at&gt; this</textarea>", reply.text)
        self.assertIn(f'value="{DAVE}, {MALLORY}"', reply.text)
        self.assertIn('<details class="card" open>', reply.text)
        self.assertEqual(await self.rows(), [])
        self.assertNotIn("forwarded", await self.event_kinds(letter))

    async def test_empty_reply_refused(self) -> None:
        """A reply with no text and no file gets a page that says so (400); nothing is sent."""
        _, browser, csrf = await self.reader()
        reply = await browser.send("reply", csrf, text="   ")
        self.assertEqual(reply.code, 400)
        self.assertIn("Please write a reply or attach a file.", reply.text)
        self.assertEqual(await self.rows(), [])

    async def test_csrf_required(self) -> None:
        """Missing, wrong or another session's CSRF: 403, and nothing queued or recorded."""
        letter, browser, right = await self.reader()
        _, _, other_csrf = await self.reader()
        for csrf in (None, "", "0" * 43, other_csrf, "é" + right[1:]):
            reply = await browser.send("reply", csrf, text="Hello")
            self.assertEqual(reply.code, 403, csrf)
        body, _ = multipart([("csrf", "x"), ("mode", "reply"), ("text", "Hello")])
        not_a_form = await browser.post_body("/read/reply", body, "text/plain")
        self.assertEqual(not_a_form.code, 403)
        self.assertEqual(await self.rows(), [])
        self.assertNotIn("replied", await self.event_kinds(letter))
        # Sign-out takes the same value, non-ASCII and all, and refuses it too (no 500).
        self.assertEqual((await browser.post("/logout", {"csrf": "é" + right[1:]})).code, 403)
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_signed_out(self) -> None:
        """Without a session, a reply is 401 and nothing is queued."""
        _, browser, csrf = await self.reader()
        stranger = UploadingBrowser(self.resource)
        self.assertEqual((await stranger.send("reply", csrf, text="Hi")).code, 401)
        self.assertEqual(await self.rows(), [])

    async def test_too_large_upload_in_the_app(self) -> None:
        """Files over max_upload_size (when no request limit came first): 413, text kept."""
        _, browser, csrf = await self.reader()
        big = b"x" * (LIMIT + 1)
        reply = await browser.send("reply", csrf, text="Kept text", files=[("big.bin", "x/y", big)])
        self.assertEqual(reply.code, 413)
        self.assertIn("come to 201 kB; at most 200 kB can be sent at once", reply.text)
        self.assertIn(">Kept text</textarea>", reply.text)
        self.assertIn("Files you attached have to be chosen again.", reply.text)
        self.assertEqual(await self.rows(), [])

    async def test_no_header_injection_through_the_form(self) -> None:
        """Line breaks in the text, a file name and the address field add no header."""
        _, browser, csrf = await self.reader()
        injected = "\r\nBcc: mallory@evil.example\r\nX-Injected: 1"
        refused = await browser.send("forward", csrf, text="x", to=DAVE + injected)
        self.assertEqual(refused.code, 400)
        reply = await browser.send(
            "reply",
            csrf,
            text="Hi" + injected,
            files=[("a%22.txt%0D%0AX-Injected: 1", "text/plain" + injected, b"data")],
        )
        self.assertEqual(reply.code, 303, reply.text)
        [row] = await self.sent()
        self.assertEqual(row.recipients, (ALICE,))
        mail = parse(await self.store.read_all(row.message_id))
        for part in mail.walk():
            self.assertNotIn("X-Injected", part)
            self.assertNotIn("Bcc", part)

    async def test_sent_page_before_sending(self) -> None:
        """/read/sent with nothing sent says so; without a session it is 401."""
        _, browser, _ = await self.reader()
        self.assertIn("Nothing has been sent", (await browser.get("/read/sent")).text)
        self.assertEqual((await self.browser().get("/read/sent")).code, 401)


class MultipartTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(data=st.binary(max_size=3000), text=st.text(max_size=200))
    def test_round_trip(self, data: bytes, text: str) -> None:
        """Any file bytes and any text come back exactly from a multipart body."""
        body, content_type = multipart(
            [("text", text)], [("files", "f.bin", "application/octet-stream", data)]
        )
        form = parse_multipart(body, content_type.encode())
        self.assertEqual(form.one("text"), text)
        [upload] = form.uploads("files")
        self.assertEqual((upload.filename, upload.data), ("f.bin", data))

    def test_empty_file_input_ignored(self) -> None:
        """A file input with no file chosen (empty name and body) gives no upload."""
        body, content_type = multipart(
            [("a", "1")], [("files", "", "application/octet-stream", b"")]
        )
        form = parse_multipart(body, content_type.encode())
        self.assertEqual(form.uploads("files"), [])
        self.assertEqual(form.one("a"), "1")

    def test_rfc2231_names_in_text_charsets_only(self) -> None:
        """A file or field name labelled with a non-text codec (punycode: time growing with
        the square of the name, on the reactor thread) is not decoded with it."""
        body = (
            b"--x\r\nContent-Disposition: form-data; name*=unicode_escape''\\u0041; "
            b"filename*=punycode''caf-dma.txt\r\n\r\ndata\r\n"
            b"--x\r\nContent-Disposition: form-data; name=b; filename*=utf-8''%C3%A4.txt\r\n"
            b"\r\nmore\r\n--x--\r\n"
        )
        form = parse_multipart(body, b"multipart/form-data; boundary=x")
        self.assertEqual([u.filename for u in form.uploads("\\u0041")], ["caf-dma.txt"])
        self.assertEqual([u.filename for u in form.uploads("b")], ["ä.txt"])

    def test_malformed_bodies(self) -> None:
        """No boundary, no close delimiter or a part without headers' end is a FormError."""
        body, content_type = multipart([("a", "1")])
        for bad_body, bad_type in [
            (body, b"multipart/form-data"),
            (body[: body.rfind(b"--")], content_type.encode()),
            (
                b"--x\r\nContent-Disposition: form-data; name=a\r\n",
                b"multipart/form-data; boundary=x",
            ),
        ]:
            with self.assertRaises(forms.FormError):
                parse_multipart(bad_body, bad_type)


# --- the request body: in memory, and limited --------------------------------------------------


class BodyLimitTests(ReplyPortalFixture):
    def setUp(self) -> None:
        super().setUp()
        self.site = make_site(self.portal)
        self.site.reactor = Clock()  # the channel's timeouts, never fired here
        self.requests: list[Any] = []
        factory = self.site.requestFactory

        def record(channel: HTTPChannel, *queued: object) -> Any:
            request = factory(channel)
            self.requests.append(request)
            return request

        self.site.requestFactory = record
        self.bodies: list[object] = []
        process = site.BoundedRequest.process

        def process_and_record(request: site.BoundedRequest) -> None:
            self.bodies.append(request.content)
            process(request)

        self.patch(site.BoundedRequest, "process", process_and_record)

    def connect(self) -> tuple[HTTPChannel, StringTransport]:
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 5555))
        channel.makeConnection(transport)
        self.addCleanup(channel.connectionLost, Failure(ConnectionError("test over")))
        return channel, transport

    async def answered(self, transport: StringTransport) -> bytes:
        """The response, once the channel closes the connection (every request says close)."""
        for _ in range(5000):
            if transport.disconnecting:
                return transport.value()
            await deferLater(reactor, 0.001, lambda: None)
        raise AssertionError(f"no complete answer: {transport.value()[:300]!r}")

    def head(self, path: str, content_type: str, cookies: dict[str, str], extra: str = "") -> bytes:
        cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
        return (
            f"POST {path} HTTP/1.1\r\nHost: portal.gw.example\r\nConnection: close\r\n"
            f"Content-Type: {content_type}\r\nCookie: {cookie}\r\n{extra}"
        ).encode()

    async def test_large_upload_stays_in_memory(self) -> None:
        """A 150 KB upload is kept in memory (no temporary file is ever made) and sent."""

        def no_files(*args: object, **kwargs: object) -> None:
            raise AssertionError("a request body went to a temporary file")

        self.patch(tempfile, "TemporaryFile", no_files)
        _, browser, csrf = await self.reader()
        data = bytes(range(256)) * 600  # 150 KB
        body, content_type = multipart(
            [
                ("csrf", csrf),
                ("mode", "reply"),
                ("text", "Big one"),
                ("form", browser.form_id or ""),
            ],
            [("files", "big.bin", "application/octet-stream", data)],
        )
        channel, transport = self.connect()
        channel.dataReceived(
            self.head(
                "/read/reply", content_type, browser.cookies, f"Content-Length: {len(body)}\r\n"
            )
            + b"\r\n"
            + body
        )
        answer = await self.answered(transport)
        self.assertTrue(answer.startswith(b"HTTP/1.1 303 "), answer[:300])
        [content] = self.bodies
        self.assertIsInstance(content, io.BytesIO)
        [row] = await self.sent()
        mail = parse(await self.store.read_all(row.message_id))
        self.assertEqual(files_of(mail), [("big.bin", "application/octet-stream", data)])

    async def test_announced_body_over_limit(self) -> None:
        """A Content-Length over the limit gets 413 before the body, no 100 Continue, a close."""
        _, browser, csrf = await self.reader()
        channel, transport = self.connect()
        channel.dataReceived(
            self.head(
                "/read/reply",
                "multipart/form-data; boundary=x",
                browser.cookies,
                f"Content-Length: {LIMIT + 1}\r\nExpect: 100-continue\r\n",
            )
            + b"\r\n"
        )
        answer = transport.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 Content Too Large\r\n"), answer[:200])
        self.assertNotIn(b"100 Continue", answer)
        self.assertIn(b"Connection: close\r\n", answer)
        self.assertIn(b"Content-Security-Policy: ", answer)
        self.assertIn(b"larger than 200 kB", answer)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(await self.rows(), [])

    async def test_chunked_body_over_limit(self) -> None:
        """A chunked body is counted as it comes: past the limit it is 413 and dropped."""
        _, browser, csrf = await self.reader()
        channel, transport = self.connect()
        channel.dataReceived(
            self.head(
                "/read/reply",
                "multipart/form-data; boundary=x",
                browser.cookies,
                "Transfer-Encoding: chunked\r\n",
            )
            + b"\r\n"
        )
        chunk = b"y" * 50_000
        for _ in range(4):
            self.assertEqual(transport.value(), b"")
            channel.dataReceived(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        self.assertEqual(transport.value(), b"")  # 200,000 bytes: at the limit, not over
        channel.dataReceived(b"1\r\nz\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertLessEqual(self.requests[0].content.tell(), LIMIT)
        channel.dataReceived(b"0\r\n\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(await self.rows(), [])

    async def test_url_encoded_forms_still_work(self) -> None:
        """The portal's URL-encoded forms (here: sign out) are still read on the real site."""
        _, browser, csrf = await self.reader()
        channel, transport = self.connect()
        body = f"csrf={csrf}".encode()
        channel.dataReceived(
            self.head(
                "/logout",
                "application/x-www-form-urlencoded",
                browser.cookies,
                f"Content-Length: {len(body)}\r\n",
            )
            + b"\r\n"
            + body
        )
        answer = await self.answered(transport)
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer[:300])
        self.assertIn(b"You are signed out", answer)
        self.assertEqual(await self.count("sessions"), 0)
