"""
The PIN SMS: its text in the reader's language, and the rule that it fits one SMS.

The words are translated by the portal's catalogues, which the web layer owns: the
caller passes them in (a C{language → gettext} function), so this module, the gateway
and the C{secmail} command never import the web layer.
"""

from __future__ import annotations

from collections.abc import Callable

from secmail.config import PortalSettings, SmsSettings
from secmail.sms.gsm import UCS2_SINGLE_UNITS, is_gsm7, parts_needed, ucs2_units
from secmail.store.portal import CODE_LIFETIME

#: A language's gettext: an English message in, its translation out.
Translate = Callable[[str], str]
#: The catalogues: a language code in, its L{Translate} out.
Translations = Callable[[str], Translate]


def N_(message: str) -> str:
    """Marks a message for the catalogues (web/locale) where it is written."""
    return message


#: portal.brand_name's default, which the pages translate.
DEFAULT_BRAND = N_("Secure mail")

#: The built-in PIN text, translated like the pages; C{[sms] pin_text} overrides it.
#: Kept within one SMS part (GSM 7-bit, 160 characters) in every language we ship.
DEFAULT_PIN_TEXT = N_(
    "{brand}: your PIN is {pin}. It works for {minutes} minutes. Do not share it."
)


def pin_sms_text(
    sms: SmsSettings, brand_name: str, language: str, translate: Translate, pin: str
) -> str:
    """The SMS that carries C{pin}, in C{language} (whose gettext is C{translate})."""
    template = sms.pin_text.get(language) or translate(DEFAULT_PIN_TEXT)
    brand = brand_name
    if brand == DEFAULT_BRAND:
        brand = translate(DEFAULT_BRAND)  # as the pages' header shows it
    return template.format(pin=pin, minutes=CODE_LIFETIME // 60, brand=brand)


def pin_text_problems(
    sms: SmsSettings, portal: PortalSettings, translations: Translations
) -> list[str]:
    """
    Why a PIN text would not fit one SMS (160 GSM 7-bit characters, 70 others, 70 for all
    when the HTTP gateway is told coding=2), for each portal language: a modem sends only
    single SMS, a gateway may cut a longer one, and one part arrives fastest.
    """
    http = sms.http
    # Kannel's coding=2 sends every text as UCS-2, where one SMS holds 70 characters.
    ucs2 = http is not None and "coding=2" in http.url + (http.body or "")
    problems = []
    for language in portal.languages:
        text = pin_sms_text(sms, portal.brand_name, language, translations(language), "123456")
        if ucs2 and ucs2_units(text) > UCS2_SINGLE_UNITS:
            holds = "70 when sms.http sends coding=2 (UCS-2)"
        elif parts_needed(text) > 1:
            holds = "160" if is_gsm7(text) else "70 with letters outside GSM 7-bit"
        else:
            continue
        size = f"would be {len(text)} characters and one SMS holds {holds}"
        if language in sms.pin_text:
            problems.append(f"sms.pin_text.{language}: the SMS {size}; shorten it")
        else:
            problems.append(
                f"portal.brand_name: the {language} PIN SMS {size}; shorten brand_name "
                f"or set sms.pin_text.{language}"
            )
    return problems
