# -*- test-case-name: tests.test_snmp -*-
"""
SNMP for sites that monitor by SNMP: C{secmail snmp-pass}, a net-snmp C{pass_persist} handler
serving the gateway's figures under L{BASE} (see C{etc/snmp/SECMAIL-MIB.txt} and
C{etc/snmp/snmpd.conf.secmail}).

snmpd starts the handler once and talks to it over its standard input and output: C{PING} is
answered C{PONG}; C{get} and C{getnext}, each followed by an OID line, are answered with the
OID, its type and its value (three lines) or C{NONE}; C{set} with C{not-writable}. The figures
are the gateway's own C{/metrics} and C{/readyz} answers, read from its [metrics] listener
(at most once every L{CACHE_SECONDS}, as a walk asks many times in a row), so SNMP and
Prometheus always show the same numbers. When the gateway does not answer, only
C{secmailAvailable} (no) is served.

The subtree is under NET-SNMP's playpen (C{netSnmpPlaypen}, .1.3.6.1.4.1.8072.9999.9999), as
the project has no private enterprise number of its own yet.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from prometheus_client.parser import text_string_to_metric_families

#: secmailObjects in SECMAIL-MIB: netSnmpPlaypen.25.1
BASE = (1, 3, 6, 1, 4, 1, 8072, 9999, 9999, 25, 1)
#: Seconds a reading of the gateway's figures is used for.
CACHE_SECONDS = 5.0
#: Seconds to wait for the gateway's answer; for /readyz longer than its checks may take (2 s).
FETCH_TIMEOUT = 2.0
READY_TIMEOUT = 4.0

COUNTER_MAX = 2**64 - 1
GAUGE_MAX = 2**32 - 1


@dataclass(frozen=True)
class SnmpObject:
    number: int
    name: str
    type: str  # pass_persist's word: string, integer, gauge, counter64
    #: The value from the figures (None: not served).
    value: Callable[[dict[str, float], dict[str, object]], object]


def _sample(name: str, **labels: str) -> Callable[[dict[str, float], dict[str, object]], object]:
    key = name + "".join(f"|{k}={v}" for k, v in sorted(labels.items()))
    return lambda figures, ready: figures.get(key)


def _queue_depth(figures: dict[str, float], ready: dict[str, object]) -> object:
    waiting = figures.get("secmail_queue_rows|state=waiting")
    leased = figures.get("secmail_queue_rows|state=leased")
    return None if waiting is None or leased is None else waiting + leased


def _uptime(figures: dict[str, float], ready: dict[str, object]) -> object:
    started = figures.get("process_start_time_seconds")
    return None if started is None else max(time.time() - started, 0)


#: The scalars of SECMAIL-MIB, in OID order (each served as NUMBER.0).
OBJECTS = (
    SnmpObject(1, "secmailVersion", "string", lambda f, r: r.get("version")),
    SnmpObject(2, "secmailAvailable", "integer", lambda f, r: 1 if f else 2),
    SnmpObject(3, "secmailReady", "integer", lambda f, r: 1 if r.get("ready") else 2),
    SnmpObject(4, "secmailQueueDepth", "gauge", _queue_depth),
    SnmpObject(
        5, "secmailQueueQuarantined", "gauge", _sample("secmail_queue_rows", state="quarantined")
    ),
    SnmpObject(6, "secmailQueueOldestAge", "gauge", _sample("secmail_queue_oldest_age_seconds")),
    SnmpObject(
        7, "secmailMessagesRelay", "counter64", _sample("secmail_smtp_messages_total", kind="relay")
    ),
    SnmpObject(
        8,
        "secmailMessagesLetter",
        "counter64",
        _sample("secmail_smtp_messages_total", kind="letter"),
    ),
    SnmpObject(
        9,
        "secmailMessagesRegistered",
        "counter64",
        _sample("secmail_smtp_messages_total", kind="registered"),
    ),
    SnmpObject(10, "secmailBounces", "counter64", _sample("secmail_bounces_total")),
    SnmpObject(11, "secmailDatabaseErrors", "counter64", _sample("secmail_db_errors_total")),
    SnmpObject(12, "secmailUptime", "gauge", _uptime),
)


def oid_text(oid: tuple[int, ...]) -> str:
    return "." + ".".join(str(n) for n in oid)


def parse_oid(text: str) -> tuple[int, ...] | None:
    parts = text.strip().strip(".").split(".")
    try:
        return tuple(int(p) for p in parts) if parts != [""] else ()
    except ValueError:
        return None


def parse_metrics(text: str) -> dict[str, float]:
    """Samples by C{name|label=value|...} (labels sorted), from the Prometheus text format."""
    figures: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = s.name + "".join(f"|{k}={v}" for k, v in sorted(s.labels.items()))
            figures[key] = float(s.value)
    return figures


class Figures:
    """The gateway's figures, read over HTTP and kept for L{CACHE_SECONDS}."""

    def __init__(self, url: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url.rstrip("/")
        self.clock = clock
        self._read_at: float | None = None
        self._metrics: dict[str, float] = {}
        self._ready: dict[str, object] = {}

    def fetch(self, path: str, timeout: float = FETCH_TIMEOUT) -> bytes:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as answer:  # noqa: S310 - our own listener
                return bytes(answer.read())
        except urllib.error.HTTPError as e:  # /readyz answers 503 with its JSON
            return bytes(e.read())

    def current(self) -> tuple[dict[str, float], dict[str, object]]:
        now = self.clock()
        if self._read_at is None or now - self._read_at >= CACHE_SECONDS:
            self._read_at = now
            try:
                self._metrics = parse_metrics(self.fetch("/metrics").decode("utf-8"))
            except (OSError, ValueError):
                self._metrics, self._ready = {}, {}
                return self._metrics, self._ready
            try:  # a slow or failing readiness answer means not ready, not unavailable
                ready = json.loads(self.fetch("/readyz", READY_TIMEOUT)).get("status") == "ready"
            except (OSError, ValueError, AttributeError):
                ready = False
            self._ready = {"ready": ready, "version": self._version()}
        return self._metrics, self._ready

    def _version(self) -> str | None:
        for key in self._metrics:
            if key.startswith("secmail_build_info|"):
                labels = dict(part.split("=", 1) for part in key.split("|")[1:])
                return labels.get("version")
        return None


def table(
    metrics: dict[str, float], ready: dict[str, object]
) -> list[tuple[tuple[int, ...], str, str]]:
    """(OID, type, value) of every object served now, in OID order."""
    rows: list[tuple[tuple[int, ...], str, str]] = []
    for obj in OBJECTS:
        value = obj.value(metrics, ready)
        if value is None or (not metrics and obj.name != "secmailAvailable"):
            continue
        if obj.type == "string":
            text = str(value)
        else:
            limit = COUNTER_MAX if obj.type == "counter64" else GAUGE_MAX
            text = str(min(int(value), limit))  # type: ignore[call-overload]
        rows.append(((*BASE, obj.number, 0), obj.type, text))
    return rows


def answer(command: str, oid_line: str, figures: Figures) -> list[str]:
    """The lines that answer one get or getnext."""
    oid = parse_oid(oid_line)
    if oid is None:
        return ["NONE"]
    rows = table(*figures.current())
    found: list[tuple[tuple[int, ...], str, str]]
    if command == "get":
        found = [r for r in rows if r[0] == oid]
    else:
        found = [r for r in rows if r[0] > oid][:1]
    if not found:
        return ["NONE"]
    found_oid, kind, value = found[0]
    return [oid_text(found_oid), kind, value]


def serve(figures: Figures, stdin: IO[str], stdout: IO[str]) -> int:
    """The pass_persist loop, until snmpd closes our standard input."""
    while True:
        line = stdin.readline()
        if not line:
            return 0
        command = line.strip().lower()
        if command == "ping":
            out = ["PONG"]
        elif command in ("get", "getnext"):
            out = answer(command, stdin.readline(), figures)
        elif command == "set":
            stdin.readline()  # the OID
            stdin.readline()  # the type and value
            out = ["not-writable"]
        elif command == "":
            continue
        else:
            out = ["NONE"]
        stdout.write("\n".join(out) + "\n")
        stdout.flush()


def metrics_url(listen: tuple[str, ...]) -> str:
    """The URL of the first [metrics] listener, from its endpoint string."""
    for description in listen:
        parts = [p.replace("\\:", ":") for p in re.split(r"(?<!\\):", description)]
        if parts[0] != "tcp" or len(parts) < 2:
            continue
        options = dict(p.split("=", 1) for p in parts[2:] if "=" in p)
        host = options.get("interface", "127.0.0.1")
        if host in ("0.0.0.0", "::", ""):  # noqa: S104 - any address: ask on loopback
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{parts[1]}"
    raise ValueError(
        "metrics.listen has no tcp: endpoint for snmp-pass to read; give --url http://HOST:PORT"
    )
