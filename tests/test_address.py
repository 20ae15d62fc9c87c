"""Tests for secmail.address: the marking convention and address syntax."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from secmail.address import (
    AddressError,
    DestinationError,
    Level,
    Recipient,
    check_sender,
    mailbox_key,
    normalise_phone,
    parse_phone,
    parse_recipient,
    portal_destination,
    postmaster_recipient,
    split_address,
)

EXT = ".s"
CC = "358"


def parse(address: str) -> Recipient:
    return parse_recipient(address, EXT, CC)


def refusal(address: str) -> AddressError:
    with pytest.raises(AddressError) as info:
        parse(address)
    return info.value


# --- marking ------------------------------------------------------------------------------


def test_unmarked_address_is_plain() -> None:
    """An address without the extension is relayed in the clear, unchanged."""
    assert parse("bob@partner.example") == Recipient(
        address="bob@partner.example",
        level=Level.PLAIN,
        phone=None,
        original="bob@partner.example",
    )


def test_extension_makes_a_letter() -> None:
    """The extension after the domain asks for a secure letter to the real address."""
    r = parse("bob@partner.example.s")
    assert (r.address, r.level, r.phone) == ("bob@partner.example", Level.LETTER, None)
    assert r.original == "bob@partner.example.s"


def test_extension_is_case_insensitive_and_domain_lowercased() -> None:
    """Marking works whatever the case; the domain is lower-cased but the local part is kept."""
    r = parse("Bob.Smith@Partner.EXAMPLE.S")
    assert (r.address, r.level) == ("Bob.Smith@partner.example", Level.LETTER)
    assert r.original == "Bob.Smith@Partner.EXAMPLE.S"


def test_national_number_gets_default_country_code() -> None:
    """A number with a leading 0 is national and gets the configured country code."""
    r = parse("bob@partner.example.0401234567.s")
    assert (r.address, r.level, r.phone) == (
        "bob@partner.example",
        Level.REGISTERED,
        "+358401234567",
    )


def test_number_without_leading_zero_is_international() -> None:
    """A number without a leading 0 starts with its own country code."""
    r = parse("bob@partner.example.447911123456.s")
    assert (r.level, r.phone) == (Level.REGISTERED, "+447911123456")
    assert parse("bob@partner.example.358401234567.s").phone == "+358401234567"


def test_international_prefix_00_is_understood() -> None:
    """A number written with the 00 international prefix reaches the same phone."""
    assert parse("bob@partner.example.00447911123456.s").phone == "+447911123456"


def test_normalise_phone_never_echoes_junk() -> None:
    """A caller's non-digit input is refused without echoing it into the SMTP reply."""
    with pytest.raises(AddressError) as info:
        normalise_phone("040\r\nX", "358")
    assert "\r" not in info.value.text and "X" not in info.value.text.split(";")[0]


def test_default_country_code_is_used() -> None:
    """The default country code comes from the argument, not from a built-in Finland."""
    r = parse_recipient("bob@partner.example.0612345678.s", EXT, "33")
    assert r.phone == "+33612345678"


def test_configured_extension_is_used() -> None:
    """Another extension marks, and ".s" then is just an ordinary label."""
    r = parse_recipient("bob@partner.example.Secure", "secure", CC)
    assert (r.address, r.level) == ("bob@partner.example", Level.LETTER)
    r = parse_recipient("bob@partner.example.s", ".secure", CC)
    assert (r.address, r.level) == ("bob@partner.example.s", Level.PLAIN)


def test_trailing_dot_is_normalised() -> None:
    """A fully qualified domain with a trailing dot means the same recipient."""
    r = parse("bob@partner.example.s.")
    assert (r.address, r.level, r.original) == (
        "bob@partner.example",
        Level.LETTER,
        "bob@partner.example.s.",
    )
    assert parse("bob@partner.example.").address == "bob@partner.example"


# --- refusals -----------------------------------------------------------------------------


def test_empty_address_is_a_syntax_error() -> None:
    """An empty recipient gets 501."""
    assert refusal("").code == 501
    assert refusal("   ").code == 501


@pytest.mark.parametrize(
    "address",
    [
        "bob",
        "bob@@partner.example",
        "bob@x@partner.example",
        "@partner.example",
        "bob@",
        "bob@.s",
        "bob@partner..example",
        ".bob@partner.example",
        "bob.@partner.example",
        "bo..b@partner.example",
        "bo(b)@partner.example",
        "bob@partner_x.example",
        "bob@-partner.example",
        "bob@partner-.example",
        "bob@partner.example\r\nRCPT TO:<evil@x.example>",
        "bob@partner.example\x00",
        "bob smith@partner.example",
        "bob@partner.example\t",
        "x" * 65 + "@partner.example",
        "bob@" + "a" * 64 + ".example",
        "bob@" + ".".join(["abcdefghi"] * 26) + ".example",
    ],
)
def test_malformed_addresses_get_501(address: str) -> None:
    """Addresses that break the syntax are refused with 501 and an enhanced status."""
    e = refusal(address)
    assert e.code == 501
    assert e.text.startswith("5.1.3 ")
    assert "\r" not in e.text and "\n" not in e.text and "\x00" not in e.text


def test_local_part_at_limit_is_accepted() -> None:
    """64 octets before the @ is still allowed (RFC 5321 §4.5.3.1.1)."""
    assert parse("x" * 64 + "@partner.example").level is Level.PLAIN


def test_special_but_legal_local_parts_are_accepted() -> None:
    """RFC 5322 atext characters such as + and ' pass through untouched."""
    r = parse("o'brien+tag@partner.example.s")
    assert r.address == "o'brien+tag@partner.example"


def test_quoted_local_part_is_refused_with_553() -> None:
    """Quoted local parts are a documented refusal, not a syntax error."""
    e = refusal('"bob smith"@partner.example')
    assert e.code == 553


def test_non_ascii_is_refused_with_553() -> None:
    """Without SMTPUTF8 a non-ASCII address is refused with 5.6.7."""
    e = refusal("jyrki.mäkelä@partner.example.s")
    assert (e.code, e.text[:6]) == (553, "5.6.7 ")


def test_address_literal_is_refused() -> None:
    """Address literals cannot be marked and are refused with 553."""
    assert refusal("bob@[192.0.2.1]").code == 553


@pytest.mark.parametrize("address", ["bob@example.s", "bob@s", "bob@localhost"])
def test_single_label_domain_is_refused(address: str) -> None:
    """Once the marking is stripped, the domain must have at least two labels."""
    e = refusal(address)
    assert e.code == 553
    assert e.text.startswith("5.1.3 ") and "is not a full domain" in e.text


def test_single_label_domain_named_in_reply() -> None:
    """The reply names the real domain that is too short."""
    assert "Domain example in bob@example.s" in refusal("bob@example.s").text


def test_short_number_is_refused() -> None:
    """A number label with fewer than 5 digits is not a phone number."""
    e = refusal("bob@partner.example.0401.s")
    assert e.code == 553
    assert e.text.startswith("5.1.3 Phone number 0401 in the address is not a valid number")


@pytest.mark.parametrize(
    "number",
    ["0000000", "0123456", "1234567890123456", "99912345678", "358123"],
)
def test_invalid_number_is_refused(number: str) -> None:
    """Numbers that phonenumbers cannot accept, or of the wrong length, give 553 naming them."""
    e = refusal(f"bob@partner.example.{number}.s")
    assert e.code == 553
    assert f"Phone number {number} " in e.text


def test_numeric_top_level_domain_hints_at_marking() -> None:
    """An unmarked address ending in a number probably lacks the extension: say so."""
    e = refusal("bob@partner.example.0401234567")
    assert e.code == 553
    assert "bob@partner.example.0401234567.s" in e.text


def test_split_address() -> None:
    """split_address lower-cases the domain only and drops a trailing dot."""
    assert split_address("Bob@Partner.Example.") == ("Bob", "partner.example")
    with pytest.raises(AddressError):
        split_address("nobody")


def test_address_error_is_a_value_error_with_reply() -> None:
    """AddressError carries the SMTP code and text and reads as the full reply."""
    e = refusal("")
    assert isinstance(e, ValueError)
    assert str(e) == f"{e.code} {e.text}"


# --- postmaster, senders, lengths -----------------------------------------------------------


@pytest.mark.parametrize("address", ["postmaster", "PostMaster", "POSTMASTER"])
def test_bare_postmaster_is_a_plain_recipient_without_domain(address: str) -> None:
    """RCPT TO:<postmaster> in any case is the plain, domain-less postmaster (RFC 5321 4.5.1)."""
    r = postmaster_recipient(address)
    assert r == Recipient(address="postmaster", level=Level.PLAIN, phone=None, original=address)
    assert r.domain == ""


@pytest.mark.parametrize("address", ["bob", "postmasters", "postmaster@corp.example", ""])
def test_only_the_bare_postmaster_is_special(address: str) -> None:
    """Any other address, with or without a domain, is not taken for the postmaster."""
    assert postmaster_recipient(address) is None


@pytest.mark.parametrize(
    "path", ["", "alice@corp.example", "a" * 64 + "@" + "b" * 181 + ".example"]
)
def test_sender_with_domain_or_null_is_accepted(path: str) -> None:
    """The null sender and any address with a domain, up to 254 characters, pass."""
    assert len(path) <= 254
    check_sender(path)


@pytest.mark.parametrize("path", ["a", "postmaster", "alice@", "@corp.example"])
def test_sender_without_domain_is_refused(path: str) -> None:
    """MAIL FROM:<a> gets 553 5.1.7 saying a domain is needed, never a guessed one."""
    with pytest.raises(AddressError) as info:
        check_sender(path)
    assert info.value.code == 553
    assert info.value.text.startswith("5.1.7 ")
    assert "needs a domain" in info.value.text


def test_sender_over_254_characters_is_refused() -> None:
    """A sender longer than RFC 5321 allows (254 characters) gets 553 5.1.7."""
    with pytest.raises(AddressError) as info:
        check_sender("a" * 64 + "@" + "b" * 182 + ".example")
    assert info.value.code == 553
    assert "longer than 254" in info.value.text


def test_recipient_over_254_characters_is_refused() -> None:
    """A recipient longer than 254 characters gets 501, though each part is within its limit."""
    address = "a" * 64 + "@" + ".".join(["b" * 60] * 3) + ".example"
    assert len(address) > 254
    assert refusal(address).code == 501
    assert "longer than 254" in refusal(address).text


# --- properties ---------------------------------------------------------------------------

_atom = st.text(alphabet=string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~", min_size=1)
_local = st.lists(_atom, min_size=1, max_size=4).map(".".join).filter(lambda s: len(s) <= 64)
_label = st.from_regex(r"\A[a-zA-Z0-9]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?\Z")
_tld = st.from_regex(r"\A[a-zA-Z][a-zA-Z0-9]{0,10}\Z")
_domain = st.builds(
    lambda labels, tld: ".".join([*labels, tld]),
    st.lists(_label, min_size=1, max_size=4),
    _tld,
).filter(lambda d: d.lower() not in ("s",) and not d.lower().endswith(".s"))
_valid_numbers = st.sampled_from(
    [
        ("0401234567", "+358401234567"),
        ("0501234567", "+358501234567"),
        ("358401234567", "+358401234567"),
        ("447911123456", "+447911123456"),
        ("12025550123", "+12025550123"),
    ]
)
_extension = st.sampled_from(["s", ".s", ".S", "secure", ".Sec"])

_pieces = st.sampled_from(
    ["@", ".", "s", ".s", "0401234567", "358", "0", "-", '"', "[", "]", "\r\n", "\x00", " ", "ä"]
)


@given(
    st.one_of(
        st.text(),
        st.lists(st.one_of(_pieces, st.text(max_size=5)), max_size=12).map("".join),
    )
)
@example("bob@partner.example.0401.s")
@example("@.s")
@example(".s")
def test_parse_raises_only_address_error(address: str) -> None:
    """Whatever arrives in RCPT TO, parsing either succeeds or raises AddressError."""
    try:
        r = parse(address)
    except AddressError as e:
        assert e.code in (501, 553)
        assert e.text[:2] == "5." and "\n" not in e.text and "\r" not in e.text
    else:
        assert r.original == address
        assert r.address.count("@") == 1


@given(_local, _domain, _extension)
def test_letter_round_trips(local: str, domain: str, extension: str) -> None:
    """Any valid address with the extension appended parses back to itself as a letter."""
    ext = extension if extension.startswith(".") else "." + extension
    r = parse_recipient(f"{local}@{domain}{ext}", extension, CC)
    assert r == Recipient(
        address=f"{local}@{domain.lower()}",
        level=Level.LETTER,
        phone=None,
        original=f"{local}@{domain}{ext}",
    )


@given(_local, _domain, _valid_numbers, _extension)
def test_registered_round_trips(
    local: str, domain: str, number: tuple[str, str], extension: str
) -> None:
    """Any valid address with a number and the extension parses to a registered letter."""
    ext = extension if extension.startswith(".") else "." + extension
    r = parse_recipient(f"{local}@{domain}.{number[0]}{ext}", extension, CC)
    assert (r.address, r.level, r.phone) == (
        f"{local}@{domain.lower()}",
        Level.REGISTERED,
        number[1],
    )


@given(_local, _domain)
def test_plain_round_trips(local: str, domain: str) -> None:
    """Any valid unmarked address is plain and keeps its local part exactly."""
    r = parse(f"{local}@{domain}")
    assert (r.address, r.level, r.phone) == (f"{local}@{domain.lower()}", Level.PLAIN, None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("+358 40 123 4567", "+358401234567"),
        ("00358401234567", "+358401234567"),
        ("040-123 4567", "+358401234567"),
        ("(040) 123.4567", "+358401234567"),
        ("+1 202 555 0143", "+12025550143"),
    ],
)
def test_parse_phone(text: str, expected: str) -> None:
    """Numbers as people write them, for the phone directory."""
    assert parse_phone(text, "358") == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("401234567", "write the number with its country code"),
        ("", "write the number with its country code"),
        ("+0401234567", "a country code does not start with 0"),
        ("+358 12", "is not a valid phone number"),
        ("040 12x4567", "is not a valid phone number"),
    ],
)
def test_parse_phone_refuses(text: str, message: str) -> None:
    with pytest.raises(AddressError, match=re.escape(message)):
        parse_phone(text, "358")


# --- portal destinations ------------------------------------------------------------------


def incoming(domain: str) -> bool:
    return domain in ("corp.example", "branch.corp.example")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("dave@corp.example", "dave@corp.example"),
        (" Dave.Smith+tag@CORP.example ", "Dave.Smith+tag@corp.example"),
        ("o'brien@branch.corp.example", "o'brien@branch.corp.example"),
    ],
)
def test_portal_destination_plain(given: str, expected: str) -> None:
    """A plain local@domain in an incoming domain is taken (domain lower-cased)."""
    assert portal_destination(given, incoming) == expected


@pytest.mark.parametrize(
    "given",
    [
        "boss%evil.example@corp.example",  # the percent hack
        "evil.example!boss@corp.example",  # a bang path
        "@corp.example:boss@evil.example",  # an RFC 821 source route
        "@a.example,@corp.example:boss@evil.example",
        "boss@evil.example@corp.example",
        '"boss@evil.example"@corp.example',  # a quoted local part
        '"boss"@corp.example',
        "boss(evil.example)@corp.example",  # a comment
        "boss@corp.example(x)",
        "boss@[192.0.2.1]",  # an address literal
        "boss@[IPv6:2001:db8::1]",
        "boss@192.0.2.1",
        "boss:x@corp.example",
        "boss@corp",
        ".boss@corp.example",
        "bo..ss@corp.example",
        "boss@-corp.example",
        "bo ss@corp.example",
        "boss\\@corp.example",
        "böss@corp.example",
        "boss@corp.example\r\nBcc: x@evil.example",
        "",
        "x" * 65 + "@corp.example",
    ],
)
def test_portal_destination_refuses_route_forms(given: str) -> None:
    """Route forms and anything but a plain address are refused, the message naming it."""
    with pytest.raises(DestinationError) as info:
        portal_destination(given, incoming)
    assert not info.value.outside
    if given.strip() and given.isprintable() and len(given) < 100:
        assert given.strip() in str(info.value)


def test_portal_destination_outside() -> None:
    """A plain address outside the incoming domains is refused as outside; None allows any."""
    with pytest.raises(DestinationError) as info:
        portal_destination("mallory@evil.example", incoming)
    assert info.value.outside and "mallory@evil.example" in str(info.value)
    assert portal_destination("mallory@evil.example", None) == "mallory@evil.example"
    with pytest.raises(DestinationError):
        portal_destination("mallory%corp.example@evil.example", None)


@given(st.text(alphabet=string.printable, max_size=80))
def test_portal_destination_result_is_plain(text: str) -> None:
    """Whatever is accepted is one @, no route characters, and in an incoming domain."""
    try:
        plain = portal_destination(text, incoming)
    except DestinationError:
        return
    local, _, domain = plain.partition("@")
    assert plain.count("@") == 1 and incoming(domain)
    assert not set(local) & set('%!:,"()[]\\ ')


def test_mailbox_key() -> None:
    """One mailbox, one key: case and a +tag in the local part do not make another."""
    assert mailbox_key("Olga+News@Outside.Example") == "olga@outside.example"
    assert mailbox_key("olga@outside.example") == "olga@outside.example"
    assert mailbox_key("olga+a+b@outside.example") == "olga@outside.example"
    assert mailbox_key("+only@outside.example") == "+only@outside.example"
    assert mailbox_key("olga.b@outside.example") == "olga.b@outside.example"
