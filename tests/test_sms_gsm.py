"""SMS text encoding: the GSM 7-bit alphabet, part counts and UCS-2 hex."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from secmail.sms.gsm import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    is_gsm7,
    is_safe_gsm_ascii,
    parts_needed,
    septets,
    ucs2_hex,
)

BASIC = "".join(sorted(GSM7_BASIC))
EXTENSION = "".join(sorted(GSM7_EXTENSION))
gsm_text = st.text(alphabet=BASIC + EXTENSION, max_size=600)
any_text = st.text(max_size=400)


def test_alphabet_sizes() -> None:
    """The basic table has 127 characters (128 codes minus the escape), extension 10."""
    assert len(GSM7_BASIC) == 127
    assert len(GSM7_EXTENSION) == 10
    assert not GSM7_BASIC & GSM7_EXTENSION


def test_is_gsm7_examples() -> None:
    """Nordic letters and '€' are GSM-7; Cyrillic, CJK, emoji and 'õ' are not."""
    assert is_gsm7("Hyvää päivää, Åsa! Ñoño §5 @ £ $ ¥")
    assert is_gsm7("Price: 5 € [approx] {ok} ~ | ^ \\")
    assert is_gsm7("")
    for text in ["Ж", "中文", "🙂", "õ", "ú", "`", "\t"]:
        assert not is_gsm7(text), text


@given(st.text(alphabet=BASIC, max_size=300))
def test_is_gsm7_on_basic_set(text: str) -> None:
    """Any text of basic-table characters is GSM-7, one septet per character."""
    assert is_gsm7(text)
    assert septets(text) == len(text)


@given(gsm_text, st.sampled_from("Ж中🙂õ"))
def test_one_foreign_character_makes_it_not_gsm7(text: str, foreign: str) -> None:
    """A single character outside both tables makes the whole text non-GSM-7."""
    assert not is_gsm7(text + foreign)


def test_parts_boundaries() -> None:
    """160/153 septets in GSM-7, 70/67 units in UCS-2, extension characters counting double."""
    assert parts_needed("") == 1
    assert parts_needed("a" * 160) == 1
    assert parts_needed("a" * 161) == 2
    assert parts_needed("a" * 306) == 2
    assert parts_needed("a" * 307) == 3
    assert parts_needed("€" * 80) == 1
    assert parts_needed("€" * 80 + "a") == 2
    assert parts_needed("Ж" * 70) == 1
    assert parts_needed("Ж" * 71) == 2
    assert parts_needed("Ж" * 134) == 2
    assert parts_needed("Ж" * 135) == 3
    assert parts_needed("🙂" * 35) == 1
    assert parts_needed("🙂" * 36) == 2


@given(gsm_text, st.text(alphabet=BASIC + EXTENSION, max_size=50))
def test_parts_monotonic_gsm(text: str, more: str) -> None:
    """Appending GSM-7 text to GSM-7 text never reduces the number of parts."""
    assert parts_needed(text + more) >= parts_needed(text)


@given(any_text, any_text)
def test_parts_monotonic_any(text: str, more: str) -> None:
    """Within one encoding, a longer text never needs fewer parts."""
    if is_gsm7(text) == is_gsm7(text + more):
        assert parts_needed(text + more) >= parts_needed(text)


@given(any_text)
def test_ucs2_hex_round_trip(text: str) -> None:
    """UCS-2 hex is upper-case UTF-16-BE, four hex digits per unit, and decodes back."""
    encoded = ucs2_hex(text)
    assert encoded == encoded.upper()
    assert len(encoded) % 4 == 0
    assert bytes.fromhex(encoded).decode("utf-16-be", "surrogatepass") == text


def test_ucs2_hex_examples() -> None:
    """Known code points: '+' 002B, '€' 20AC, 'Ж' 0416."""
    assert ucs2_hex("+€Ж") == "002B20AC0416"


def test_safe_gsm_ascii() -> None:
    """Only characters whose GSM code equals their ASCII code may be typed as ASCII."""
    assert is_safe_gsm_ascii("Your PIN is 1234. Call +358 40 123!")
    for text in ["@", "$", "_", "€", "[", "ä", "\n"]:
        assert not is_safe_gsm_ascii(text), text
