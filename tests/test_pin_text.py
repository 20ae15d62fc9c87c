"""
The words of the PIN challenge: the SMS text per language (secmail.sms.pin_text, with the
portal's catalogues), and the notices to a sender (web.pin).
"""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime
from email.message import EmailMessage

import pytest

from secmail import config
from secmail.masking import mask_number
from secmail.sms import pin_text
from secmail.sms.gsm import is_gsm7, parts_needed
from secmail.sms.pin_text import DEFAULT_PIN_TEXT
from secmail.store.messages import Envelope
from secmail.store.portal import CODE_LIFETIME, PIN_LOCK_AFTER
from secmail.web import pin
from secmail.web.i18n import translator
from secmail.web.pin import lock_notice, wrong_number_notice

T0 = 1_700_000_000
NOW = datetime.fromtimestamp(T0 + 3600, UTC)
ALICE = "alice@corp.example"
BOB = "bob@partner.example"
# Not the number in the notices' example address (0401234567), so a leak cannot hide.
NUMBER = "+358507654321"
PIN = "482913"
LANGUAGES = ("en", "fi", "sv")


def settings(**sections: dict[str, object]) -> config.Settings:
    return config.from_mapping(
        {
            "gateway": {
                "hostname": "gw.example",
                "bounce_address": "bounces@gw.example",
                "notification_from": "secmail@gw.example",
            },
            **sections,
        }
    )


def pin_sms_text(s: config.Settings, language: str, code: str) -> str:
    """The PIN SMS by the rules in secmail.sms.pin_text, in the portal's translations."""
    return pin_text.pin_sms_text(s.sms, s.portal.brand_name, language, translator(language), code)


def pin_text_problems(s: config.Settings) -> list[str]:
    return pin_text.pin_text_problems(s.sms, s.portal, translator)


def envelope(sender: str = ALICE, phone: str | None = NUMBER) -> Envelope:
    return Envelope(
        id="e" * 32,
        message_id="m" * 32,
        recipient=BOB,
        original=f"{BOB}.0507654321.s",
        level="registered",
        phone=phone,
        state="notified",
        created=T0,
        sender=sender,
    )


def parse(content: bytes) -> EmailMessage:
    message = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def body(content: bytes) -> str:
    part = parse(content).get_body(("plain",))
    assert part is not None
    text = part.get_content()
    assert isinstance(text, str)
    return " ".join(text.split())  # quoted-printable may break a line anywhere


# --- the SMS text -----------------------------------------------------------------------------


@pytest.mark.parametrize("language", LANGUAGES)
def test_default_text_fits_one_gsm_part(language: str) -> None:
    """With the default brand, every language's text is GSM 7-bit and one SMS part."""
    text = pin_sms_text(settings(), language, PIN)
    assert is_gsm7(text)
    assert parts_needed(text) == 1
    assert PIN in text
    assert f"{CODE_LIFETIME // 60} " in text
    brand = {"en": "Secure mail", "fi": "Suojattu posti", "sv": "Skyddad e-post"}[language]
    assert text.startswith(brand + ": "), "the default brand is translated, as on the pages"
    assert "{" not in text and "}" not in text


def test_texts_are_translated() -> None:
    """Finnish and Swedish get their own words, English the built-in ones."""
    texts = {language: pin_sms_text(settings(), language, PIN) for language in LANGUAGES}
    assert texts["en"] == DEFAULT_PIN_TEXT.format(brand="Secure mail", pin=PIN, minutes=10)
    assert len(set(texts.values())) == 3
    assert "minuuttia" in texts["fi"]
    assert "minuter" in texts["sv"]


@pytest.mark.parametrize("language", LANGUAGES)
def test_longest_brand_still_one_part(language: str) -> None:
    """A brand of the most characters allowed (60) still leaves the text in one part."""
    brand = "Example Municipality Social and Health Services Department x"[:60]
    text = pin_sms_text(settings(portal={"brand_name": brand}), language, PIN)
    assert brand in text
    assert is_gsm7(text)
    assert parts_needed(text) == 1


def test_override_one_language() -> None:
    """[sms] pin_text replaces one language's text; the others keep theirs."""
    plain = settings()
    custom = settings(sms={"pin_text": {"fi": "{brand} PIN {pin}, {minutes} min"}})
    assert pin_sms_text(custom, "fi", PIN) == f"Suojattu posti PIN {PIN}, 10 min"
    for language in ("en", "sv"):
        assert pin_sms_text(custom, language, PIN) == pin_sms_text(plain, language, PIN)
    assert pin_sms_text(plain, "fi", PIN) != pin_sms_text(custom, "fi", PIN)


@pytest.mark.parametrize("language", LANGUAGES)
def test_portal_sends_the_same_text(language: str) -> None:
    """The portal's PIN SMS (web.pin) is the text these rules write, in its catalogues."""
    for s in (settings(), settings(sms={"pin_text": {language: "{brand}: {pin}"}})):
        assert pin.pin_sms_text(s.sms, s.branding, language, PIN) == pin_sms_text(s, language, PIN)


# --- the notices to the sender ----------------------------------------------------------------


def test_lock_notice() -> None:
    """The lock notice goes to the letter's sender, from the gateway, in ASCII only."""
    notice = lock_notice(settings().identity, envelope(), NOW)
    assert notice is not None
    assert notice.recipient == ALICE
    assert notice.sender == "bounces@gw.example"
    assert notice.content.isascii()
    mail = parse(notice.content)
    assert mail["To"] == ALICE
    assert "secmail@gw.example" in mail["From"]
    assert "locked" in mail["Subject"]
    assert mail["Auto-Submitted"] == "auto-generated"
    text = body(notice.content)
    assert BOB in text
    assert f"{PIN_LOCK_AFTER} times" in text
    assert "2023-11-14 22:13 UTC" in text  # when the letter was sent
    assert NUMBER not in text and NUMBER[1:] not in text


def test_wrong_number_notice_masks_number() -> None:
    """The wrong-number notice names the number masked, never whole."""
    notice = wrong_number_notice(
        settings().identity, settings().secure.extension, envelope(), NUMBER, NOW
    )
    assert notice is not None
    assert notice.recipient == ALICE
    assert parse(notice.content)["To"] == ALICE
    assert notice.content.isascii()
    text = body(notice.content)
    assert mask_number(NUMBER) in text
    assert "7654321" not in notice.content.decode("ascii")
    assert "7654321" not in text
    assert BOB in text
    assert f"{BOB.partition('@')[0]}@partner.example.0401234567.s" in text


def test_no_notice_for_null_sender() -> None:
    """A letter from <> gets no notice: there is nobody to write to."""
    assert lock_notice(settings().identity, envelope(sender=""), NOW) is None
    assert (
        wrong_number_notice(
            settings().identity, settings().secure.extension, envelope(sender=""), NUMBER, NOW
        )
        is None
    )


def test_coding_2_checks_against_70() -> None:
    """With Kannel's coding=2 in the URL every SMS is UCS-2: the built-in texts are too long."""
    ucs2 = config.from_mapping(
        {
            "sms": {
                "order": ["http"],
                "http": {"url": "http://127.0.0.1:13013/s?to={to}&text={text}&coding=2"},
            }
        }
    )
    problems = pin_text_problems(ucs2)
    assert len(problems) == 3
    assert problems[0].startswith("portal.brand_name: the en PIN SMS would be ")
    assert "one SMS holds 70 when sms.http sends coding=2 (UCS-2)" in problems[0]
    gsm = config.from_mapping(
        {
            "sms": {
                "order": ["http"],
                "http": {"url": "http://127.0.0.1:13013/s?to={to}&text={text}"},
            }
        }
    )
    assert pin_text_problems(gsm) == []
    short = config.from_mapping(
        {
            "sms": {
                "order": ["http"],
                "http": {"url": "http://127.0.0.1:13013/s?to={to}&text={text}&coding=2"},
                "pin_text": {"en": "PIN {pin}", "fi": "PIN {pin}", "sv": "PIN {pin}"},
            }
        }
    )
    assert pin_text_problems(short) == []
