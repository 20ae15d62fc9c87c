"""
Masking numbers and secrets (secmail.masking): what a log line, an event, the CLI and
check-config may show of a phone number, a password or an API key.
"""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from secmail.masking import (
    mask_body,
    mask_dsn,
    mask_headers,
    mask_number,
    mask_pin,
    mask_sms_recipients,
    mask_url,
)


class MaskTests(SynchronousTestCase):
    def test_examples(self) -> None:
        """Masked numbers keep the country code, two leading and two trailing digits."""
        examples = {
            "+358401234567": "+358 40 *** **67",
            "+46701234567": "+46 70 *** **67",
            "+12025550123": "+1 20 *** ***23",
            "+4915112345678": "+49 15 *** *** *78",
            "+35840123": "+358 ***23",
            "+3584": "+358 ***",
            "0401234567": "***",
            "": "***",
            "+358 40 123 4567": "+358 40 *** **67",
        }
        self.assertEqual({n: mask_number(n) for n in examples}, examples)

    @given(st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True))
    def test_never_shows_the_middle(self, number: str) -> None:
        """At most seven of a number's digits survive masking."""
        masked = mask_number(number)
        self.assertLessEqual(sum(c.isdigit() for c in masked), 7)
        self.assertIn("***", masked)
        self.assertTrue(masked.endswith((number[-2:], "***")), masked)


def test_mask_sms_recipients() -> None:
    """The number in an e-mail-to-SMS address is masked, in the address and in a reply."""
    shown, text = mask_sms_recipients(
        ["358401234567@sms.example", "alice@corp.example"],
        "550 5.1.1 <358401234567@sms.example>: no such subscriber",
    )
    assert shown == ["+358 40 *** **67@sms.example", "alice@corp.example"]
    assert text == "550 5.1.1 <+358 40 *** **67@sms.example>: no such subscriber"
    assert "358401234567" not in text + "".join(shown)


def test_mask_url_keeps_placeholders_only() -> None:
    """A gateway URL loses its password and query values; {to} and {text} stay."""
    url = "https://user:pw1@gw.example/send?user=u&password=pw2&to={to}&text={text}&flag"
    assert (
        mask_url(url)
        == "https://user:***@gw.example/send?user=***&password=***&to={to}&text={text}&flag"
    )


def test_mask_body_form_and_json() -> None:
    """A body template's values are hidden, form or JSON, placeholders kept; bad JSON whole."""
    assert mask_body("key=k3y&to={to}") == "key=***&to={to}"
    shown = json.loads(mask_body('{"key": "k3y", "n": [1, "{to}"], "m": {"t": "{text}"}}'))
    assert shown == {"key": "***", "n": ["***", "{to}"], "m": {"t": "{text}"}}
    assert mask_body("{not json") == "***"
    assert mask_body(None) is None


def test_mask_secrets() -> None:
    """Header values, a SIM PIN and a database password are hidden; an empty PIN stays empty."""
    assert mask_headers({"Authorization": "Bearer t0ken"}) == {"Authorization": "***"}
    assert (mask_pin("1234"), mask_pin("")) == ("***", "")
    assert mask_dsn("postgresql://u:s3cret@db/x") == "postgresql://u:***@db/x"
    assert mask_dsn("sqlite:/var/lib/secmail.sqlite") == "sqlite:/var/lib/secmail.sqlite"


def test_mask_url_hides_a_lone_user_part() -> None:
    """An API key given as the URL's user (https://KEY@host/...) is hidden too."""
    assert mask_url("https://s3cr3tkey@sms.example/send?to={to}") == (
        "https://***@sms.example/send?to={to}"
    )
