"""Fixtures shared by the end-to-end tests: the two real SMTP servers the gateway talks to."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.harness import SmtpSink


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
