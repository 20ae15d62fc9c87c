"""
Fixtures shared by the end-to-end tests: the two real SMTP servers the gateway talks to,
and an HTTP SMS gateway with a gateway process sending PINs through it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.fake_sms import FakeSmsGateway, http_sms_settings
from tests.e2e.harness import Gateway, SmtpSink, running


# Module scope: every test module gets its own pair, started once and stopped at its end.
@pytest.fixture(scope="module")
def internet() -> Iterator[SmtpSink]:
    sink = SmtpSink("internet sink")
    try:
        yield sink.start()
    finally:
        sink.stop()


@pytest.fixture(scope="module")
def internal() -> Iterator[SmtpSink]:
    sink = SmtpSink("internal sink")
    try:
        yield sink.start()
    finally:
        sink.stop()


@pytest.fixture(scope="module")
def http_sms() -> Iterator[FakeSmsGateway]:
    """A local HTTP server playing the SMS gateway: PINs are read from what it got."""
    with FakeSmsGateway() as server:
        yield server


@pytest.fixture(scope="module")
def http_gateway(
    tmp_path_factory: pytest.TempPathFactory,
    internet: SmtpSink,
    internal: SmtpSink,
    http_sms: FakeSmsGateway,
) -> Iterator[Gateway]:
    """The gateway with [sms] order = ["http"], sending through L{http_sms}."""
    gw = Gateway(
        tmp_path_factory.mktemp("http-gateway"),
        internet,
        internal,
        {"sms": {"order": ["http"]}, "sms.http": http_sms_settings(http_sms)},
    )
    with running(gw) as started:
        yield started
