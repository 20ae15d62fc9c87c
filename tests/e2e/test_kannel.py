"""
The HTTP SMS backend against a real Kannel: L{HttpSmsGateway} with a real HTTP client
(treq over twisted.web's Agent) sends to smsbox's C{sendsms} interface, bearerbox hands
the message to fakesmsc, and the test reads what fakesmsc received.

The tests are trial C{TestCase}s, so they run on the real reactor; the Kannel processes
are started once for the class (see L{tests.e2e.kannel}). Without Kannel installed they
are skipped, except under CI (C{CI} set), where a missing Kannel is a failure.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from secmail import config
from secmail.config import HttpGatewaySettings
from secmail.sms.http import HttpSmsGateway, SmsPermanentError
from secmail.web.pin import pin_sms_text
from tests.e2e import kannel as kannel_module
from tests.e2e.kannel import Kannel, kannel_running

MISSING = kannel_module.missing()
IN_CI = bool(os.environ.get("CI"))
MISSING_REASON = (
    f"Kannel is not installed ({', '.join(MISSING)} missing; apt-get install kannel kannel-extras)"
)
pytestmark = pytest.mark.skipif(bool(MISSING) and not IN_CI, reason=MISSING_REASON)

#: Finnish with an en dash: ä ö å Å Ä Ö are in the GSM 7-bit alphabet, "–" is not.
PIN_TEXT = "secmail: your PIN is 123456. Käytä 10 minuutin sisällä – åäö ÅÄÖ"
#: Every character in the GSM 7-bit default alphabet (ä ö å Å Ä Ö included).
GSM_TEXT = "secmail: your PIN is 654321. Use it within 10 minutes. Käytä åäö ÅÄÖ"
ACCEPTED = "0: Accepted for delivery"


def unique_number() -> str:
    """A Finnish mobile number of its own for each message, so tests do not mix them up."""
    return "+35840" + "".join(secrets.choice("0123456789") for _ in range(7))


@pytest.fixture(scope="class")
def kannel_for_class(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Kannel]:
    if MISSING:  # only under CI: the skip mark covers the rest
        pytest.fail(f"CI is set, but {MISSING_REASON}")
    with kannel_running(tmp_path_factory.mktemp("kannel")) as kannel:
        request.cls.kannel = kannel
        yield kannel


@pytest.mark.usefixtures("kannel_for_class")
class KannelTests(TestCase):
    kannel: Kannel

    def gateway(self, url: str, **settings: Any) -> HttpSmsGateway:
        """The backend as production builds it: treq's HTTPClient over an Agent."""
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        client = HTTPClient(Agent(reactor, pool=pool))
        return HttpSmsGateway(
            HttpGatewaySettings(url=url, timeout=15.0, **settings), client, reactor
        )

    def unicode_gateway(self) -> HttpSmsGateway:
        """sendsms with the text read as UTF-8 and sent as UCS-2 (coding=2)."""
        return self.gateway(self.kannel.url(charset="UTF-8", coding="2"))

    async def test_non_gsm_text_arrives_unchanged_as_ucs2(self) -> None:
        number = unique_number()
        reference = await self.unicode_gateway().send(number, PIN_TEXT)
        self.assertEqual(reference, ACCEPTED)
        self.assertEqual(self.kannel.wait_for_sms(number=number), [(number, PIN_TEXT)])
        [sms] = [s for s in self.kannel.received() if s.number == number]
        self.assertEqual((sms.kind, sms.sender), ("ucs-2", kannel_module.SENDER))

    async def test_gsm_text_arrives_unchanged_as_ucs2(self) -> None:
        number = unique_number()
        reference = await self.unicode_gateway().send(number, GSM_TEXT)
        self.assertEqual(reference, ACCEPTED)
        self.assertEqual(self.kannel.wait_for_sms(number=number), [(number, GSM_TEXT)])

    async def test_gsm_text_arrives_unchanged_with_kannel_defaults(self) -> None:
        """Without charset/coding Kannel sends GSM 7-bit: fine for GSM-only texts..."""
        number = unique_number()
        reference = await self.gateway(self.kannel.url()).send(number, GSM_TEXT)
        self.assertEqual(reference, ACCEPTED)
        self.assertEqual(self.kannel.wait_for_sms(number=number), [(number, GSM_TEXT)])
        [sms] = [s for s in self.kannel.received() if s.number == number]
        self.assertEqual(sms.kind, "text")

    async def test_builtin_pin_texts_arrive_unchanged_as_gsm(self) -> None:
        """
        The shipped PIN texts (en, fi, sv: GSM 7-bit, with ä ö å) through the URL the
        README recommends (charset=UTF-8, no coding): one 7-bit SMS each, exactly as written.
        """
        settings = config.from_mapping({})
        for language in ("en", "fi", "sv"):
            text = pin_sms_text(settings.sms, settings.branding, language, "418276")
            number = unique_number()
            gateway = self.gateway(self.kannel.url(charset="UTF-8"))
            self.assertEqual(await gateway.send(number, text), ACCEPTED)
            self.assertEqual(self.kannel.wait_for_sms(number=number), [(number, text)])
            [sms] = [s for s in self.kannel.received() if s.number == number]
            self.assertEqual(sms.kind, "text", language)
        self.assertIn("ä", pin_sms_text(settings.sms, settings.branding, "fi", "418276"))

    async def test_kannel_defaults_lose_non_gsm_characters(self) -> None:
        """...but a character outside GSM 7-bit is lost, and Kannel still answers 202.
        This is why a text with such characters needs charset=UTF-8&coding=2."""
        number = unique_number()
        reference = await self.gateway(self.kannel.url(charset="UTF-8")).send(number, PIN_TEXT)
        self.assertEqual(reference, ACCEPTED)
        [(_, text)] = self.kannel.wait_for_sms(number=number)
        self.assertEqual(text, PIN_TEXT.replace("–", "?"))

    async def test_success_pattern_matches_kannel_answer(self) -> None:
        number = unique_number()
        gateway = self.gateway(
            self.kannel.url(charset="UTF-8", coding="2"), success=r"^0: Accepted"
        )
        self.assertEqual(await gateway.send(number, PIN_TEXT), ACCEPTED)
        self.assertEqual(self.kannel.wait_for_sms(number=number), [(number, PIN_TEXT)])

    async def test_wrong_password_is_permanent_error(self) -> None:
        number = unique_number()
        url = self.kannel.url(charset="UTF-8", coding="2").replace(
            f"password={self.kannel.password}", "password=wrong-password"
        )
        with self.assertRaises(SmsPermanentError) as caught:
            await self.gateway(url).send(number, PIN_TEXT)
        message = str(caught.exception)
        self.assertEqual(
            message, "gateway refused the message (HTTP 403: Authorization failed for sendsms)"
        )
        self.assertNotIn("123456", message)
        self.assertNotIn("wrong-password", message)
        # One SMSC link delivers in order: once a later message has arrived, the refused
        # one would have arrived before it.
        later = unique_number()
        await self.unicode_gateway().send(later, GSM_TEXT)
        self.kannel.wait_for_sms(number=later)
        self.assertEqual([s for s in self.kannel.received() if s.number == number], [])
