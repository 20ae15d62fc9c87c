# -*- test-case-name: tests.test_smtp_mx -*-
"""
MX lookup for outbound mail: the hosts to try for a domain, best first (RFC 5321 §5).
"""

from __future__ import annotations

import random
from typing import cast

from twisted.internet.interfaces import IResolver
from twisted.names import dns
from twisted.names.error import DNSNameError

from secmail.smtp.outgoing import PermanentDeliveryError, TemporaryDeliveryError

DNS_TIMEOUTS = (1, 3, 11, 45)
"""Retry schedule for the MX query, as in twisted.names.client. About a minute in all."""


async def resolve_mx(
    resolver: IResolver, domain: str, *, rng: random.Random | None = None
) -> list[tuple[str, int]]:
    """The hosts to try for C{domain}, best first, each with port 25.

    MX records are sorted by preference. Equal preferences come in random order, drawn
    from C{rng} when it is given (for repeatable tests). With no MX records the domain
    itself is used (RFC 5321 §5.1). A null MX (RFC 7505) and NXDOMAIN are permanent
    failures. Any other DNS failure is temporary.
    """
    domain = domain.rstrip(".")
    try:
        answers, _authority, _additional = await resolver.lookupMailExchange(domain, DNS_TIMEOUTS)
    except DNSNameError:
        raise PermanentDeliveryError(f"domain {domain} does not exist (DNS NXDOMAIN)") from None
    except Exception as e:
        raise TemporaryDeliveryError(
            f"MX lookup for {domain} failed: {type(e).__name__} {e}".rstrip()
        ) from None
    records: list[tuple[int, str]] = []
    for rr in cast(list[dns.RRHeader], answers):
        if rr.type == dns.MX:
            payload = cast(dns.Record_MX, rr.payload)
            name = payload.name.name.decode("ascii", "replace").rstrip(".")
            records.append((payload.preference, name))
    if not records:
        return [(domain, 25)]
    usable = [record for record in records if record[1]]
    if not usable:
        raise PermanentDeliveryError("domain does not accept mail (null MX)")
    draw = rng.random if rng is not None else random.random
    hosts: list[tuple[str, int]] = []
    for _preference, name in sorted(usable, key=lambda record: (record[0], draw())):
        if (name, 25) not in hosts:
            hosts.append((name, 25))
    return hosts
