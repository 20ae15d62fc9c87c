"""
C{secmail sms test NUMBER} as an admin runs it: each configured backend on its own, real
peers on loopback (a pty playing the GSM modem, a local HTTP server playing the gateway).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.fake_modem import FakeModem
from tests.e2e.fake_sms import FakeSmsGateway

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def gateway() -> Iterator[FakeSmsGateway]:
    with FakeSmsGateway() as server:
        yield server


@pytest.fixture
def modem(tmp_path: Path) -> Iterator[FakeModem]:
    with FakeModem(tmp_path, sim_pin="4321") as fake:
        yield fake


def sms_test(tmp_path: Path, modem: FakeModem, gateway: FakeSmsGateway, *args: str):
    config = tmp_path / "secmail.toml"
    config.write_text(
        f'[gateway]\ndata_dir = "{tmp_path / "data"}"\n'
        '[secure]\ndefault_country_code = "358"\n'
        '[sms]\norder = ["modem", "http"]\n'
        f'[sms.modem]\ndevice = "{modem.path}"\nsim_pin = "4321"\n'
        f'[sms.http]\nurl = "{gateway.url("/send?to={to}&text={text}")}"\n',
        encoding="utf-8",
    )
    return subprocess.run(
        [sys.executable, "-m", "secmail.cli", "sms", "--config", str(config), "test", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_each_backend_is_tried_and_reported(
    tmp_path: Path, modem: FakeModem, gateway: FakeSmsGateway
) -> None:
    done = sms_test(tmp_path, modem, gateway, "040 123 4567", "--text", "Testi: äöå ÄÖÅ")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "modem: sending to +358 40 *** **67 ..." in lines
    assert any(line.startswith("modem: OK (") for line in lines), lines
    assert "http: OK (0: Accepted for delivery)" in lines
    assert modem.wait_for_sms(1, timeout=5) == [("+358401234567", "Testi: äöå ÄÖÅ")]
    assert [(r.to, r.text) for r in gateway.requests()] == [("+358401234567", "Testi: äöå ÄÖÅ")]


def test_failures_are_reported_per_backend(
    tmp_path: Path, modem: FakeModem, gateway: FakeSmsGateway
) -> None:
    modem.fail_next(1, "+CMS ERROR: 38")
    gateway.set_default(503)
    done = sms_test(tmp_path, modem, gateway, "+358401234567")
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("modem: FAILED (") and "+CMS ERROR 38" in line for line in lines), (
        lines
    )
    assert "http: FAILED (temporary): gateway busy or failing (HTTP 503: Try later)" in lines
    assert "Test message" not in done.stdout + done.stderr  # the text is never printed


def test_a_bad_number_is_named(tmp_path: Path, modem: FakeModem, gateway: FakeSmsGateway) -> None:
    done = sms_test(tmp_path, modem, gateway, "12345")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("secmail: '12345': write the number with its country code")
    assert modem.commands == [] or all("CMGS" not in c for c in modem.commands)
    assert gateway.requests() == []
