"""A withdrawn (revoked) letter in the portal: its link and its sessions answer 410, withdrawn.

The portal's Klein app through C{treq.testing.StubTreq} (no sockets) on a real SQLite store,
as in tests/test_portal.py; the letter is withdrawn with L{MessageTrace.revoke}.
"""

from __future__ import annotations

from secmail.store.trace import MessageTrace
from tests.fixtures.portal import PortalFixture

WITHDRAWN = "The sender has withdrawn this message"


class RevokedLetterTests(PortalFixture):
    async def test_link_answers_410_withdrawn(self) -> None:
        """After revoke, the link's landing page and its Open answer 410 with the withdrawn page."""
        letter = await self.letter()
        landing = await self.browser().get(letter.link)
        csrf = landing.csrf()
        await MessageTrace(self.db).revoke(letter.message_id, now=self.now())
        browser = self.browser()
        for reply in (
            await browser.get(letter.link),
            await browser.post(letter.link, {"csrf": csrf}),
            await browser.post(letter.link + "/code", {"csrf": csrf}),
        ):
            self.assertEqual(reply.code, 410)
            self.assertIn(WITHDRAWN, reply.text)
            self.assertNotIn("expired", reply.text)
            self.assert_no_content(reply)
        self.assertNotIn("viewed", await self.event_kinds(letter))

    async def test_open_session_stops_working(self) -> None:
        """A reader already signed in can read no more once the letter is withdrawn."""
        letter = await self.letter()
        browser = await self.signed_in(letter)
        self.assertEqual((await browser.get("/read")).code, 200)
        await MessageTrace(self.db).revoke(letter.message_id, now=self.now())
        for path in ("/read", "/read/html", "/read/attachment/0", "/read/eml"):
            reply = await browser.get(path)
            self.assertEqual(reply.code, 401, path)
            self.assert_no_content(reply)

    async def test_session_left_open_says_withdrawn(self) -> None:
        """A session that outlived the revoke finds the content gone: 410, withdrawn."""
        letter = await self.letter()
        browser = await self.signed_in(letter)

        def withdraw_behind_the_sessions(txn: object) -> None:
            run = txn.execute  # type: ignore[attr-defined]
            run("UPDATE envelopes SET state = 'revoked' WHERE id = ?", (letter.envelope_id,))
            run("DELETE FROM message_chunks WHERE message_id = ?", (letter.message_id,))

        await self.db.run(withdraw_behind_the_sessions)
        reply = await browser.get("/read")
        self.assertEqual(reply.code, 410)
        self.assertIn(WITHDRAWN, reply.text)

    async def test_session_on_a_withdrawn_letter_whose_content_stays(self) -> None:
        """Withdrawn for this recipient while another may still read it: the content stays,
        but a session of this recipient (begun or open meanwhile) reads nothing."""
        letter = await self.letter()
        browser = await self.signed_in(letter)
        await self.db.run(
            lambda txn: txn.execute(
                "UPDATE envelopes SET state = 'revoked' WHERE id = ?", (letter.envelope_id,)
            )
        )
        for path in ("/read", "/read/attachment/0", "/read/eml"):
            reply = await browser.get(path)
            self.assertEqual(reply.code, 410, path)
            self.assertIn(WITHDRAWN, reply.text)

    async def test_withdrawn_page_is_translated(self) -> None:
        """The withdrawn page speaks the reader's language."""
        letter = await self.letter()
        await MessageTrace(self.db).revoke(letter.message_id, now=self.now())
        for language, words in (
            ("fi", "Lähettäjä on perunut"),
            ("sv", "Avsändaren har återkallat"),
        ):
            browser = self.browser(**{"__Host-secmail-lang": language})
            reply = await browser.get(letter.link)
            self.assertEqual(reply.code, 410)
            self.assertIn(words, reply.text)
