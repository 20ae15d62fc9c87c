"""
Recipient addresses and the user's marking convention.

A sender asks for secure delivery by appending the configured extension to the
recipient's domain: C{bob@partner.example.s} is a secure letter,
C{bob@partner.example.0401234567.s} a registered letter whose PIN goes by SMS
to that number. Everything here is pure so the SMTP intake can call it on every
C{RCPT TO} and answer at once, before any mail is accepted (no backscatter).

What is refused, and why:
  - syntax errors (no or several C{@}, empty parts, bad characters, over-long
    parts) get C{501};
  - well-formed addresses we will not take get C{553}: quoted local parts (they
    would need quoting in every header and log line we write, and mail systems
    that need them are vanishingly rare), non-ASCII addresses (we do not offer
    SMTPUTF8), address literals such as C{[192.0.2.1]}, domains that are not
    fully qualified or end in a number, and phone numbers that cannot be valid.
"""

from __future__ import annotations

import enum
import re
import string
from collections.abc import Callable
from dataclasses import dataclass

import phonenumbers

MAX_LOCAL_OCTETS = 64
MAX_DOMAIN_OCTETS = 255
MAX_LABEL_OCTETS = 63
MIN_PHONE_DIGITS = 5
MAX_PHONE_DIGITS = 15
MAX_ADDRESS_OCTETS = 254
"""Longest address: RFC 5321's 256-octet path less its angle brackets (RFC 3696 erratum 1690)."""

POSTMASTER = "postmaster"
"""The one mailbox RFC 5321 section 4.5.1 lets a client name without a domain, in any case."""

# RFC 5322 atext: what a dot-atom local part may hold besides dots.
_ATEXT = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~")
_LABEL_CHARS = frozenset(string.ascii_lowercase + string.digits + "-")


class Level(enum.Enum):
    """How a recipient gets the message: in the clear, or kept in the portal."""

    PLAIN = "plain"
    LETTER = "letter"
    REGISTERED = "registered"


@dataclass(frozen=True)
class Recipient:
    """One C{RCPT TO} address, understood: where it really goes and how securely."""

    address: str
    level: Level
    phone: str | None
    original: str

    @property
    def domain(self) -> str:
        """The real domain, which decides the route; empty for the bare C{postmaster}."""
        local, at, domain = self.address.rpartition("@")
        return domain if at else ""


class AddressError(ValueError):
    """An address we refuse; C{code} and C{text} are the SMTP reply to give."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text


def split_address(address: str) -> tuple[str, str]:
    """
    Check the syntax of C{address} and return C{(local, domain)}.

    The domain comes back lower-cased and without a trailing dot; the local part
    keeps its case, as only the receiving system may interpret it.
    """
    if not address or not address.strip():
        raise AddressError(501, "5.1.3 Recipient address is empty")
    if address.startswith('"'):
        raise AddressError(
            553, '5.1.3 Quoted local parts ("..."@domain) are not accepted; use a plain address'
        )
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in address):
        raise AddressError(
            501, "5.1.3 Recipient address must not contain spaces or control characters"
        )
    if not address.isascii():
        raise AddressError(
            553,
            "5.6.7 Non-ASCII addresses are not supported here; use the ASCII form of the address",
        )
    if len(address) > MAX_ADDRESS_OCTETS:
        raise AddressError(
            501, f"5.1.3 Recipient address is longer than {MAX_ADDRESS_OCTETS} characters"
        )
    if address.count("@") != 1:
        raise AddressError(501, f"5.1.3 Recipient address {address} must contain exactly one @")
    local, _, domain = address.partition("@")
    _check_local(address, local)
    return local, _check_domain(address, domain)


def parse_recipient(address: str, extension: str, default_country_code: str) -> Recipient:
    """
    Read the marking in C{address} and return the real recipient and its level.

    C{extension} is the configured marker label such as C{".s"} (case and the
    leading dot do not matter); C{default_country_code} (such as C{"358"}) is
    given to phone numbers written in national form, with a leading 0.
    """
    marker = _marker_labels(extension)
    suffix = "." + ".".join(marker)
    local, domain = split_address(address)
    labels = domain.split(".")
    level = Level.PLAIN
    phone = None
    if len(labels) > len(marker) and labels[-len(marker) :] == marker:
        labels = labels[: -len(marker)]
        if labels[-1].isdigit():
            phone = normalise_phone(labels.pop(), default_country_code)
            level = Level.REGISTERED
        else:
            level = Level.LETTER
    elif labels == marker:
        labels = []
    real_domain = ".".join(labels)
    if len(labels) < 2:
        shown = f"Domain {real_domain}" if real_domain else "The domain"
        raise AddressError(
            553,
            f"5.1.3 {shown} in {address} is not a full domain; "
            f"write it as name@domain.example{suffix}",
        )
    if labels[-1].isdigit():
        hint = ""
        if level is Level.PLAIN:
            marked = f"{local}@{real_domain}{suffix}"
            hint = f"; to send a registered letter, write {marked}"
        raise AddressError(553, f"5.1.3 Domain {real_domain} in {address} ends in a number{hint}")
    return Recipient(address=f"{local}@{real_domain}", level=level, phone=phone, original=address)


def postmaster_recipient(address: str) -> Recipient | None:
    """
    The bare C{postmaster} (any case, no domain) as a plain recipient, or None for any other.

    RFC 5321 section 4.5.1 requires every SMTP server to accept it; it means the postmaster
    of the organisation, so it is never marked and goes to the internal mail server.
    """
    if address.lower() != POSTMASTER:
        return None
    return Recipient(address=POSTMASTER, level=Level.PLAIN, phone=None, original=address)


def check_sender(path: str) -> None:
    """
    Refuse a C{MAIL FROM} path that bounces and replies could not reach.

    C{path} is the address as the client wrote it, without angle brackets; the null
    sender (empty) is fine. Without a domain (C{<alice>}) the server would have to
    guess one, and a longer address than RFC 5321 allows breaks other servers.
    """
    if not path:
        return
    if len(path) > MAX_ADDRESS_OCTETS:
        raise AddressError(
            553, f"5.1.7 Sender address is longer than {MAX_ADDRESS_OCTETS} characters"
        )
    local, at, domain = path.rpartition("@")
    if not at or not local or not domain:
        shown = "".join(c if " " < c <= "~" else "?" for c in path)
        raise AddressError(
            553,
            f"5.1.7 Sender address <{shown}> needs a domain; write it as name@domain.example",
        )


def normalise_phone(number: str, default_country_code: str) -> str:
    """
    Turn the digits from an address into E.164 (C{+358401234567}).

    A domain label cannot hold C{+}, so a leading 0 marks the national form and
    anything else is taken to start with a country code.
    """
    country = default_country_code.strip().lstrip("+")
    if not (country.isdigit() and 1 <= len(country) <= 3):
        raise ValueError(f"default country code {default_country_code!r} is not like 358")
    if not (
        number.isascii()
        and number.isdigit()
        and MIN_PHONE_DIGITS <= len(number) <= MAX_PHONE_DIGITS
    ):
        raise _bad_phone(number, country)
    region: str | None = None
    if number.startswith("0"):
        region = phonenumbers.region_code_for_country_code(int(country))
        if region in (phonenumbers.UNKNOWN_REGION, "001"):
            # Non-geographic codes have no national form to parse: drop the trunk 0.
            text, region = f"+{country}{number[1:]}", None
        else:
            text = number
    else:
        text = "+" + number
    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        raise _bad_phone(number, country) from None
    if not phonenumbers.is_valid_number(parsed):
        raise _bad_phone(number, country)
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def parse_phone(text: str, default_country_code: str) -> str:
    """
    A number as a person writes it (C{+358 40 123 4567}, C{00358401234567},
    C{040-123 4567}) in E.164; L{AddressError} names what is wrong.
    """
    compact = re.sub(r"[\s().-]", "", text)
    if compact.startswith("+"):
        digits = compact[1:]
    elif compact.startswith("00"):
        digits = compact[2:]
    elif compact.startswith("0"):
        digits = compact
    else:
        raise AddressError(
            501,
            f"{text!r}: write the number with its country code (+358 40 1234567) "
            "or in national form with its leading 0 (040 1234567)",
        )
    if digits.startswith("0") and not compact.startswith("0"):
        raise AddressError(501, f"{text!r}: a country code does not start with 0")
    try:
        return normalise_phone(digits, default_country_code)
    except AddressError:
        raise AddressError(501, f"{text!r} is not a valid phone number") from None


def directory_address(text: str) -> str:
    """
    An address for the phone directory (C{secmail phones}, the admin console), lower-cased;
    L{AddressError} whose C{text} names what is wrong, without an SMTP status code.
    """
    try:
        local, domain = split_address(text.strip())
    except AddressError as e:
        raise AddressError(e.code, re.sub(r"^\d\.\d\.\d+ ", "", e.text)) from None
    return f"{local}@{domain}".lower()


def _bad_phone(number: str, country: str) -> AddressError:
    if not (number.isascii() and number.isdigit() and len(number) <= 2 * MAX_PHONE_DIGITS):
        number = "(not digits only)"
    return AddressError(
        553,
        f"5.1.3 Phone number {number} in the address is not a valid number; "
        f"write it with its leading 0 (national) or starting with the country code "
        f"such as {country} (international), digits only",
    )


def _marker_labels(extension: str) -> list[str]:
    labels = extension.strip().lower().strip(".").split(".")
    if not all(labels) or any(not set(label) <= _LABEL_CHARS for label in labels):
        raise ValueError(f"marking extension {extension!r} is not a domain label such as .s")
    return labels


def _check_local(address: str, local: str) -> None:
    if not local:
        raise AddressError(501, f"5.1.3 Recipient address {address} has nothing before the @")
    if len(local) > MAX_LOCAL_OCTETS:
        raise AddressError(
            501,
            f"5.1.3 The part before @ in {address} is longer than {MAX_LOCAL_OCTETS} characters",
        )
    atoms = local.split(".")
    if not all(atoms):
        raise AddressError(
            501,
            f"5.1.3 The part before @ in {address} must not start or end with a dot "
            "or have two dots in a row",
        )
    if any(not set(atom) <= _ATEXT for atom in atoms):
        raise AddressError(
            501, f"5.1.3 The part before @ in {address} contains characters not allowed there"
        )


def _check_domain(address: str, domain: str) -> str:
    if domain.startswith("["):
        raise AddressError(
            553, "5.1.3 Address literals such as [192.0.2.1] are not accepted; use a domain name"
        )
    domain = domain.lower()
    if domain.endswith("."):
        domain = domain[:-1]
    if not domain:
        raise AddressError(501, f"5.1.3 Recipient address {address} has no domain after the @")
    if len(domain) > MAX_DOMAIN_OCTETS:
        raise AddressError(
            501, f"5.1.3 The domain in {address} is longer than {MAX_DOMAIN_OCTETS} characters"
        )
    for label in domain.split("."):
        if not label:
            raise AddressError(501, f"5.1.3 The domain in {address} has an empty label (..)")
        if (
            len(label) > MAX_LABEL_OCTETS
            or not set(label) <= _LABEL_CHARS
            or label.startswith("-")
            or label.endswith("-")
        ):
            raise AddressError(
                501,
                f"5.1.3 The domain in {address} has an invalid part {label[:MAX_LABEL_OCTETS]}; "
                f"parts hold letters, digits and inner hyphens, at most {MAX_LABEL_OCTETS} each",
            )
    return domain


# --- portal destinations ------------------------------------------------------------------
#
# What the portal sends into the organisation (a forward, a reply all, a D-Compose message)
# goes to the internal mail server, which may still honour old source-route forms: the
# "percent hack" (boss%evil.example@example.com is relayed to boss@evil.example), bang
# paths (evil.example!boss@example.com), RFC 821 routes (@a,@b:boss@example.com) and
# quoted local parts that hide any of these. A portal destination must name exactly one
# mailbox on that server, so only the plainest form is taken: local@domain, a dot-atom
# local part without routing characters, a domain name (no address literal) in one of
# the organisation's domains.

#: Local-part characters that some mail servers read as a route to another host.
_ROUTE_CHARS = frozenset("%!")
_PLAIN_LOCAL = _ATEXT - _ROUTE_CHARS
MAX_ADDRESS_OCTETS = 254


class DestinationError(ValueError):
    """
    An address the portal will not send to; the text names the address and says why.
    C{outside}: it is well-formed but not in the organisation's domains.
    """

    def __init__(self, text: str, outside: bool = False) -> None:
        super().__init__(text)
        self.outside = outside


def portal_destination(address: str, is_incoming: Callable[[str], bool] | None) -> str:
    """
    C{address} as C{local@domain} (domain lower-cased) when it is a plain mailbox the
    portal may send to: in a domain for which C{is_incoming} is true (None: any domain,
    for outsiders who get a secure letter instead). Pure; L{DestinationError} otherwise.
    """
    text = address.strip()
    shown = "".join(c if c.isprintable() else "?" for c in text[:100]) or "(empty)"
    if not text:
        raise DestinationError("Type an e-mail address such as name@example.com.")
    if len(text) > MAX_ADDRESS_OCTETS:
        raise DestinationError(f"{shown}… is longer than {MAX_ADDRESS_OCTETS} characters.")
    if any(c.isspace() or not c.isprintable() for c in text) or not text.isascii():
        raise DestinationError(
            f"{shown} contains spaces or characters not allowed in an address; "
            "write it as name@example.com."
        )
    if '"' in text or "(" in text or ")" in text or "\\" in text:
        raise DestinationError(
            f"{shown}: quoted names and comments are not accepted; "
            "write the address as name@example.com."
        )
    if text.startswith("@") or ":" in text or "," in text or text.count("@") != 1:
        raise DestinationError(
            f"{shown} is not a single plain address (route forms such as @host: and "
            "more than one @ are not accepted); write it as name@example.com."
        )
    local, _, domain = text.partition("@")
    if set(local) & _ROUTE_CHARS:
        raise DestinationError(
            f"{shown}: the characters % and ! are not accepted before the @, because mail "
            "servers may read them as a route to another server; write the address as "
            "name@example.com."
        )
    atoms = local.split(".")
    if (
        not local
        or len(local) > MAX_LOCAL_OCTETS
        or not all(atoms)
        or any(not set(atom) <= _PLAIN_LOCAL for atom in atoms)
    ):
        raise DestinationError(
            f"{shown}: the part before the @ is not a plain name (letters, digits and "
            ". _ - + and the like; no dot at either end, no two dots in a row)."
        )
    if domain.startswith("["):
        raise DestinationError(
            f"{shown}: addresses with an IP address after the @ are not accepted; "
            "use the domain name."
        )
    domain = domain.lower()
    labels = domain.split(".")
    if (
        len(domain) > MAX_DOMAIN_OCTETS
        or len(labels) < 2
        or any(
            not label
            or len(label) > MAX_LABEL_OCTETS
            or not set(label) <= _LABEL_CHARS
            or label.startswith("-")
            or label.endswith("-")
            for label in labels
        )
        or labels[-1].isdigit()
    ):
        raise DestinationError(
            f"{shown}: {domain or '(nothing)'} after the @ is not a domain name "
            "such as example.com."
        )
    plain = f"{local}@{domain}"
    if is_incoming is not None and not is_incoming(domain):
        raise DestinationError(f"{plain} is outside the organisation.", outside=True)
    return plain


def mailbox_key(address: str) -> str:
    """
    The mailbox an address reaches, for counting: lower-cased, and without a C{+tag} in
    the local part (C{Olga+x@Outside.example} is C{olga@outside.example}), so that the
    spellings of one mailbox share one limit. Pure; C{address} is already checked.
    """
    local, _, domain = address.strip().lower().rpartition("@")
    return f"{local.split('+', 1)[0] or local}@{domain}"
