"""What a running node does with changed cluster settings: SMS backends rebuilt, page frames."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from secmail.config import SmsSettings
from secmail.config.cluster import LiveSettings, effective
from secmail.services import StartStopService
from secmail.sms.live import LiveSms
from secmail.web.access import LiveFrame
from secmail.web.layout import template_page

FILE: dict[str, Any] = {"gateway": {"hostname": "gw.example"}}
SMTP_SMS = {"sms.order": ["smtp"], "sms.smtp.address": "{to}@sms.example"}


class FakeOutbox(StartStopService):
    def __init__(self, backends: list[Any]) -> None:
        super().__init__("sms-outbox", lambda: None, lambda: None)
        self.backends = backends
        self.woken = 0

    def wake(self) -> None:
        self.woken += 1


class LiveSmsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.built: list[tuple[SmsSettings, str]] = []
        self.stopping: list[Deferred[None]] = []
        self.sms = LiveSms(self.build, FakeOutbox)  # type: ignore[arg-type]

    def build(self, sms: SmsSettings, sender: str) -> tuple[list[Any], list[Any]]:
        self.built.append((sms, sender))
        link = StartStopService("sms-modem", lambda: None, self.stop_link)
        return list(sms.order), [link] if sms.order else []

    def stop_link(self) -> Deferred[None]:
        self.stopping.append(Deferred())
        return self.stopping[-1]

    def test_built_again_only_when_sms_settings_change(self) -> None:
        """A change elsewhere keeps the backends; an [sms] change stops the old, then starts."""
        self.sms.apply(effective(FILE, {}))
        self.assertIsNone(self.sms.outbox)
        self.sms.startService()
        self.sms.apply(effective(FILE, SMTP_SMS))
        outbox = self.sms.outbox
        assert isinstance(outbox, FakeOutbox)
        self.assertEqual(outbox.backends, ["smtp"])
        self.assertTrue(outbox.running)
        self.sms.wake()
        self.assertEqual(outbox.woken, 1)

        self.sms.apply(effective(FILE, {**SMTP_SMS, "portal.verification_phrase": "x"}))
        self.assertIs(self.sms.outbox, outbox)
        self.assertEqual(len(self.built), 2)

        self.sms.apply(effective(FILE, {}))
        self.assertFalse(outbox.running)
        self.assertIsNone(self.sms.outbox)
        self.assertEqual(len(self.built), 2)  # the new backends wait for the old link to stop
        self.stopping[0].callback(None)
        self.assertEqual(len(self.built), 3)
        self.assertEqual(list(self.sms), [])


def test_page_frame_follows_the_settings() -> None:
    """A page made after a change shows the new phrase; unchanged settings, the same frame."""
    live = LiveSettings(effective(FILE, {}))
    frame = LiveFrame(live)
    first = frame.frame
    assert frame.frame is first and first.branding.verification_phrase == ""
    live.update(effective(FILE, {"portal.verification_phrase": "Blue heron"}))
    assert frame.frame.branding.verification_phrase == "Blue heron"


class SubscriberFailureTests(SynchronousTestCase):
    def test_one_failing_subscriber_does_not_stop_the_others(self) -> None:
        live = LiveSettings(effective(FILE, {}))
        seen: list[Any] = []
        live.subscribe(lambda settings: 1 / 0)
        live.subscribe(seen.append)
        changed = effective(FILE, {"portal.verification_phrase": "x"})
        self.assertTrue(live.update(changed))
        self.assertEqual(seen, [changed])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


def english() -> Any:
    r = DummyRequest([b""])
    r.getCookie = lambda name: b"en" if name == b"__Host-secmail-lang" else None  # type: ignore[attr-defined]
    return r


def test_style_sheet_url_changes_with_the_brand_colour() -> None:
    """Browsers keep the style sheet an hour: a colour set while running is a new URL at once."""
    live = LiveSettings(effective(FILE, {}))
    frame = LiveFrame(live)
    page = template_page(english(), frame.frame, "signed_out.html").decode()
    assert 'href="/static/portal.css?v=1f5fae"' in page
    live.update(effective(FILE, {"portal.brand_colour": "#AA3300"}))
    page = template_page(english(), frame.frame, "signed_out.html").decode()
    assert 'href="/static/portal.css?v=aa3300"' in page
