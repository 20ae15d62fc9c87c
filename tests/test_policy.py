"""Tests for secmail.policy: per-recipient decisions, routes and the subject keyword."""

from __future__ import annotations

import string
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secmail.address import AddressError, Level, Recipient, parse_recipient
from secmail.config import MX, Route, Settings, from_mapping
from secmail.policy import Decision, MessagePolicy, check_recipient, decide, strip_subject_keyword

INTERNAL = Route(mx=False, host="mail.corp.example", port=25)
RELAY = Route(mx=False, host="relay.corp.example", port=587)
PARTNER = Route(mx=False, host="mx.partner.example", port=2525)


def make_settings(mode: str = "marked", **secure: Any) -> Settings:
    return from_mapping(
        {
            "gateway": {"hostname": "gw.corp.example"},
            "routes": {
                "outgoing": "smtp://relay.corp.example:587",
                "incoming": "smtp://mail.corp.example:25",
                "incoming_domains": ["corp.example", "Sub.Corp.Example"],
                "domains": {"partner.example": "smtp://mx.partner.example:2525"},
            },
            "secure": {"mode": mode, **secure},
        }
    )


MARKED = make_settings("marked")
ALL = make_settings("all")


def r(address: str) -> Recipient:
    return parse_recipient(address, ".s", "358")


# --- check_recipient ----------------------------------------------------------------------


def test_marked_mode_refuses_plain_outside_recipient() -> None:
    """In mode "marked" unmarked mail to the outside is refused with 550 5.7.1."""
    with pytest.raises(AddressError) as info:
        check_recipient(r("bob@other.example"), MARKED.routes, MARKED.secure)
    assert info.value.code == 550
    assert info.value.text.startswith(
        '5.7.1 Only marked secure mail is accepted here (mode "marked"); '
    )
    assert "bob@other.example.s" in info.value.text


@pytest.mark.parametrize(
    "address",
    ["alice@corp.example", "alice@sub.corp.example", "bob@partner.example"],
)
def test_marked_mode_lets_plain_mail_to_own_domains_through(address: str) -> None:
    """Unmarked mail to incoming (and per-route) domains passes in mode "marked"."""
    check_recipient(r(address), MARKED.routes, MARKED.secure)


@pytest.mark.parametrize(
    "address", ["bob@other.example.s", "bob@other.example.0401234567.s", "alice@corp.example.s"]
)
def test_marked_recipients_always_pass(address: str) -> None:
    """Marked recipients are accepted in either mode."""
    check_recipient(r(address), MARKED.routes, MARKED.secure)
    check_recipient(r(address), ALL.routes, ALL.secure)


def test_all_mode_accepts_plain_outside_recipient() -> None:
    """In mode "all" unmarked outside mail is accepted (and relayed)."""
    check_recipient(r("bob@other.example"), ALL.routes, ALL.secure)


# --- routes -------------------------------------------------------------------------------


def test_routes_for_incoming_outgoing_and_override() -> None:
    """Each recipient's route is its real domain's: incoming, per-domain or outgoing."""
    policy = decide(
        [
            r("alice@corp.example"),
            r("bob@other.example"),
            r("carol@partner.example"),
            r("dave@other.example.s"),
            r("erin@partner.example.0401234567.s"),
            r("frank@Sub.Corp.Example.s"),
        ],
        None,
        MARKED.routes,
        MARKED.secure,
    )
    assert [d.route for d in policy.decisions] == [
        INTERNAL,
        RELAY,
        PARTNER,
        RELAY,
        PARTNER,
        INTERNAL,
    ]


POSTMASTER = Recipient(address="postmaster", level=Level.PLAIN, phone=None, original="PostMaster")


@pytest.mark.parametrize("settings", [MARKED, ALL], ids=["marked", "all"])
def test_bare_postmaster_goes_to_the_internal_mail_server(settings: Settings) -> None:
    """RCPT TO:<postmaster> passes in both modes and takes the incoming route, in the clear."""
    check_recipient(POSTMASTER, settings.routes, settings.secure)
    (decision,) = decide([POSTMASTER], "[secure] hello", settings.routes, settings.secure).decisions
    assert decision.route == INTERNAL
    assert decision.recipient.level is Level.PLAIN


@pytest.mark.parametrize("incoming", [None, MX])
def test_bare_postmaster_refused_without_internal_server(incoming: Route | None) -> None:
    """Without an internal mail server to take it, the bare postmaster is refused, saying why."""
    settings = replace(MARKED, routes=replace(MARKED.routes, incoming=incoming))
    with pytest.raises(AddressError) as info:
        check_recipient(POSTMASTER, settings.routes, settings.secure)
    assert info.value.code == 550
    assert "[routes] incoming" in info.value.text


def test_keyword_in_any_of_several_subjects_counts() -> None:
    """Given every Subject of a message, the keyword in any one of them makes it secure."""
    policy = decide([r("bob@other.example")], ["Hello", "[secure] Hello"], ALL.routes, ALL.secure)
    assert policy.subject_keyword_found
    assert policy.decisions[0].recipient.level is Level.LETTER
    assert not decide(
        [r("bob@other.example")], ["Hello", "Hi"], ALL.routes, ALL.secure
    ).subject_keyword_found
    assert not decide([r("bob@other.example")], [], ALL.routes, ALL.secure).subject_keyword_found


def test_mx_outgoing_route() -> None:
    """With outgoing = "mx", outside recipients route by MX."""
    settings = replace(MARKED, routes=replace(MARKED.routes, outgoing=MX))
    (decision,) = decide(
        [r("bob@other.example.s")], None, settings.routes, settings.secure
    ).decisions
    assert decision.route == MX


def test_mixed_recipients_are_decided_one_by_one() -> None:
    """A message may mix plain and secure recipients; each keeps its own marking."""
    policy = decide(
        [r("alice@corp.example"), r("bob@other.example.s"), r("carol@x.example.0401234567.s")],
        "Hello",
        ALL.routes,
        ALL.secure,
    )
    assert [d.recipient.level for d in policy.decisions] == [
        Level.PLAIN,
        Level.LETTER,
        Level.REGISTERED,
    ]
    assert [d.secure for d in policy.decisions] == [False, True, True]
    assert [d.recipient.address for d in policy.secure_recipients] == [
        "bob@other.example",
        "carol@x.example",
    ]
    assert [d.recipient.address for d in policy.plain_recipients] == ["alice@corp.example"]
    assert policy.subject_keyword_found is False


# --- subject keyword ----------------------------------------------------------------------


@pytest.mark.parametrize("subject", ["[secure] Offer", "Re: [SECURE] offer", "offer [Secure]"])
def test_keyword_makes_plain_outside_recipients_letters(subject: str) -> None:
    """In mode "all" the keyword (any case) upgrades unmarked outside recipients only."""
    policy = decide(
        [r("bob@other.example"), r("alice@corp.example"), r("carol@x.example.0401234567.s")],
        subject,
        ALL.routes,
        ALL.secure,
    )
    assert policy.subject_keyword_found
    levels = [d.recipient.level for d in policy.decisions]
    assert levels == [Level.LETTER, Level.PLAIN, Level.REGISTERED]
    assert policy.decisions[0].recipient.address == "bob@other.example"
    assert policy.decisions[0].recipient.original == "bob@other.example"


def test_mode_marked_ignores_keyword() -> None:
    """In mode "marked" the keyword neither upgrades nor is reported."""
    policy = decide([r("alice@corp.example")], "[secure] hi", MARKED.routes, MARKED.secure)
    assert not policy.subject_keyword_found
    assert policy.decisions[0].recipient.level is Level.PLAIN


def test_empty_keyword_never_matches() -> None:
    """An empty configured keyword turns the rule off rather than matching everything."""
    settings = make_settings("all", subject_keyword="")
    policy = decide([r("bob@other.example")], "anything", settings.routes, settings.secure)
    assert not policy.subject_keyword_found
    assert not policy.decisions[0].secure


def test_missing_subject_never_matches() -> None:
    """A message without a Subject header is decided by marking alone."""
    policy = decide([r("bob@other.example")], None, ALL.routes, ALL.secure)
    assert not policy.subject_keyword_found


def test_word_keyword_needs_word_boundaries() -> None:
    """A word keyword does not fire inside longer words (secure vs insecure)."""
    settings = make_settings("all", subject_keyword="secure")
    assert not decide(
        [r("bob@other.example")], "insecure, securely", settings.routes, settings.secure
    ).subject_keyword_found
    assert decide(
        [r("bob@other.example")], "SECURE: offer", settings.routes, settings.secure
    ).subject_keyword_found


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("[secure] Contract", "Contract"),
        ("Re: [SECURE] Contract", "Re: Contract"),
        ("Contract [Secure]", "Contract"),
        ("a [secure] [secure] b", "a b"),
        ("[secure]", ""),
        ("no  keyword here ", "no  keyword here "),
    ],
)
def test_strip_subject_keyword(subject: str, expected: str) -> None:
    """The keyword is removed in any case and the spaces around it are tidied."""
    assert strip_subject_keyword(subject, "[secure]") == expected


def test_strip_with_empty_keyword_is_identity() -> None:
    """An empty keyword leaves the subject alone."""
    assert strip_subject_keyword(" x ", "") == " x "


# --- properties ---------------------------------------------------------------------------

_addresses = st.sampled_from(
    [
        "alice@corp.example",
        "alice@corp.example.s",
        "x@sub.corp.example",
        "bob@other.example",
        "bob@other.example.s",
        "bob@other.example.0401234567.s",
        "carol@partner.example",
        "carol@partner.example.358501234567.s",
        "dave@ELSEWHERE.example",
    ]
)
# Plain lower() is the oracle, so keep to characters without exotic case folding.
_text = st.text(alphabet=string.printable + "äÅ€", max_size=30)
_subjects = st.one_of(
    st.none(),
    _text,
    st.builds(lambda a, k, b: a + k + b, _text, st.sampled_from(["[secure]", "[SeCuRe]"]), _text),
)


@given(st.lists(_addresses, max_size=8), _subjects, st.sampled_from(["marked", "all"]))
def test_decide_invariants(addresses: list[str], subject: str | None, mode: str) -> None:
    """One ordered decision per recipient, routed by domain; only the keyword upgrades outsiders."""
    settings = MARKED if mode == "marked" else ALL
    recipients = [r(a) for a in addresses]
    policy = decide(recipients, subject, settings.routes, settings.secure)
    found = mode == "all" and subject is not None and "[secure]" in subject.lower()
    assert policy.subject_keyword_found == found
    assert len(policy.decisions) == len(recipients)
    for given_recipient, decision in zip(recipients, policy.decisions, strict=True):
        got = decision.recipient
        assert (got.address, got.phone, got.original) == (
            given_recipient.address,
            given_recipient.phone,
            given_recipient.original,
        )
        assert decision.route == settings.routes.for_domain(got.address.split("@")[1])
        upgrade = (
            found
            and given_recipient.level is Level.PLAIN
            and not settings.routes.is_incoming(given_recipient.domain)
        )
        assert got.level is (Level.LETTER if upgrade else given_recipient.level)
    assert set(policy.secure_recipients) | set(policy.plain_recipients) == set(policy.decisions)
    assert not set(policy.secure_recipients) & set(policy.plain_recipients)


@given(st.text(max_size=40), st.sampled_from(["[secure]", "secure", "#S"]))
def test_stripped_subject_no_longer_matches(subject: str, keyword: str) -> None:
    """After stripping, the keyword is gone, so a second pass changes nothing more."""
    settings = make_settings("all", subject_keyword=keyword)
    stripped = strip_subject_keyword(subject, keyword)
    assert not decide(
        [r("bob@other.example")], stripped, settings.routes, settings.secure
    ).subject_keyword_found
    assert strip_subject_keyword(stripped, keyword) == stripped


def test_message_policy_is_frozen() -> None:
    """Decisions cannot be changed after the fact by a caller."""
    policy = MessagePolicy(decisions=(Decision(r("a@b.example"), MX),), subject_keyword_found=False)
    with pytest.raises(AttributeError):
        policy.subject_keyword_found = True  # type: ignore[misc]
