"""secmail snmp-pass: the pass_persist protocol, the table, the MIB (secmail.monitoring.snmp)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from secmail.monitoring import snmp

MIB = Path(__file__).resolve().parent.parent / "etc" / "snmp" / "SECMAIL-MIB.txt"
BASE = ".1.3.6.1.4.1.8072.9999.9999.25.1"

METRICS = """\
# HELP secmail_build_info Always 1.
# TYPE secmail_build_info gauge
secmail_build_info{python="3.11.7",version="0.1.0"} 1.0
# TYPE secmail_queue_rows gauge
secmail_queue_rows{state="waiting"} 3.0
secmail_queue_rows{state="leased"} 2.0
secmail_queue_rows{state="quarantined"} 1.0
# TYPE secmail_queue_oldest_age_seconds gauge
secmail_queue_oldest_age_seconds 42.0
# TYPE secmail_smtp_messages_total counter
secmail_smtp_messages_total{kind="relay"} 7.0
secmail_smtp_messages_total{kind="letter"} 5.0
secmail_smtp_messages_total{kind="registered"} 1.0
# TYPE secmail_bounces_total counter
secmail_bounces_total 2.0
# TYPE secmail_db_errors_total counter
secmail_db_errors_total 0.0
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1.0
"""


class FakeFigures(snmp.Figures):
    def __init__(self, metrics: str | None, ready: bool | None = True) -> None:
        super().__init__("http://127.0.0.1:9464", clock=lambda: 0.0)
        self.metrics = metrics
        self.ready = ready
        self.fetches = 0

    def fetch(self, path: str, timeout: float = snmp.FETCH_TIMEOUT) -> bytes:
        self.fetches += 1
        if self.metrics is None:
            raise ConnectionRefusedError(111, "Connection refused")
        if path == "/readyz" and self.ready is None:
            raise TimeoutError("timed out")
        if path == "/metrics":
            return self.metrics.encode()
        return b'{"status": "ready"}' if self.ready else b'{"status": "not ready"}'


def talk(figures: snmp.Figures, *lines: str) -> list[str]:
    out = io.StringIO()
    assert snmp.serve(figures, io.StringIO("".join(f"{line}\n" for line in lines)), out) == 0
    return out.getvalue().splitlines()


def test_ping_get_getnext_set() -> None:
    figures = FakeFigures(METRICS)
    assert talk(figures, "PING") == ["PONG"]
    assert talk(figures, "get", f"{BASE}.4.0") == [f"{BASE}.4.0", "gauge", "5"]
    assert talk(figures, "get", f"{BASE}.1.0") == [f"{BASE}.1.0", "string", "0.1.0"]
    assert talk(figures, "get", f"{BASE}.8.0") == [f"{BASE}.8.0", "counter64", "5"]
    assert talk(figures, "get", f"{BASE}.4") == ["NONE"]
    assert talk(figures, "getnext", BASE) == [f"{BASE}.1.0", "string", "0.1.0"]
    assert talk(figures, "getnext", f"{BASE}.3.0") == [f"{BASE}.4.0", "gauge", "5"]
    assert talk(figures, "getnext", f"{BASE}.12.0") == ["NONE"]
    assert talk(figures, "set", f"{BASE}.4.0", "gauge 1") == ["not-writable"]
    assert talk(figures, "get", "not an oid") == ["NONE"]


def test_a_walk_reads_the_gateway_once() -> None:
    figures = FakeFigures(METRICS)
    oid = BASE
    seen = []
    for _ in range(20):
        answer = talk(figures, "getnext", oid)
        if answer == ["NONE"]:
            break
        oid = answer[0]
        seen.append(oid)
    assert seen == [f"{BASE}.{n}.0" for n in range(1, 13)]
    assert figures.fetches == 2  # /metrics and /readyz, cached for the walk


def test_readiness_and_availability() -> None:
    assert talk(FakeFigures(METRICS, ready=False), "get", f"{BASE}.3.0")[2] == "2"
    assert talk(FakeFigures(METRICS, ready=True), "get", f"{BASE}.3.0")[2] == "1"
    slow = FakeFigures(METRICS, ready=None)  # /readyz did not answer in time
    assert talk(slow, "get", f"{BASE}.2.0")[2] == "1"  # available
    assert talk(slow, "get", f"{BASE}.3.0")[2] == "2"  # not ready
    assert talk(slow, "get", f"{BASE}.4.0")[2] == "5"  # and the figures are still there
    down = FakeFigures(None)
    assert talk(down, "get", f"{BASE}.2.0") == [f"{BASE}.2.0", "integer", "2"]
    assert talk(down, "get", f"{BASE}.4.0") == ["NONE"]
    assert talk(down, "getnext", f"{BASE}.2.0") == ["NONE"]


@pytest.mark.parametrize(
    ("listen", "url"),
    [
        (("tcp:9464:interface=127.0.0.1",), "http://127.0.0.1:9464"),
        (("tcp:9464",), "http://127.0.0.1:9464"),
        (("tcp:9464:interface=0.0.0.0",), "http://127.0.0.1:9464"),
        (("tcp:9464:interface=\\:\\:1",), "http://[::1]:9464"),
        (("unix:/run/x", "tcp:9000:interface=192.0.2.1"), "http://192.0.2.1:9000"),
    ],
)
def test_metrics_url(listen: tuple[str, ...], url: str) -> None:
    assert snmp.metrics_url(listen) == url


def test_metrics_url_without_tcp() -> None:
    with pytest.raises(ValueError, match="give --url"):
        snmp.metrics_url(())


def test_the_mib_names_what_the_handler_serves() -> None:
    """Every OBJECT-TYPE of SECMAIL-MIB.txt is served at its number, and nothing else."""
    text = MIB.read_text(encoding="ascii")
    declared = {
        int(number): name
        for name, number in re.findall(
            r"^(\w+) OBJECT-TYPE\n.*?::= \{ secmailObjects (\d+) \}", text, re.M | re.S
        )
    }
    assert declared == {obj.number: obj.name for obj in snmp.OBJECTS}
    assert "::= { netSnmpPlaypen 25 }" in text
    assert snmp.BASE == (1, 3, 6, 1, 4, 1, 8072, 9999, 9999, 25, 1)
