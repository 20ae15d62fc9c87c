"""Metrics, health answers and the queue's gauges (secmail.monitoring)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from prometheus_client import generate_latest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.test.requesthelper import DummyRequest

from secmail.monitoring import metrics
from secmail.monitoring.gauges import QueueGauges
from secmail.monitoring.health import CHECK_TIMEOUT, Readiness, size_text
from secmail.monitoring.http import JsonAnswer, live_answer, ready_answer
from secmail.store.database import Database, StoreUnavailable
from secmail.store.nodes import write_probe
from secmail.store.queue_rows import QueueFigures
from secmail.store.rows import NewDelivery, NewMessage, new_id
from secmail.store.spool import SealedBytes
from tests.dbs import on_each_engine, open_store

GB = 1_000_000_000


class FakeQueue:
    def __init__(self, last_scan: float | None = 0.0, running: bool = True) -> None:
        self.last_scan = last_scan
        self.running = running

    def poll_interval(self) -> float:
        return 5.0


def statvfs(free: int) -> Any:
    return lambda path: SimpleNamespace(f_bavail=free // 4096, f_frsize=4096)


async def nothing() -> None:
    return None


def readiness(clock: Clock, **kw: Any) -> Readiness:
    values: dict[str, Any] = {
        "db_probe": nothing,
        "data_dir": "/var/lib/secmail",
        "min_free_bytes": 15_360_000,
        "read_key": nothing,
        "queue": FakeQueue(),
        "statvfs": statvfs(10 * GB),
    }
    values.update(kw)
    return Readiness(clock, **values)


def results(d: Deferred[Any]) -> dict[str, tuple[bool, str]]:
    out: list[Any] = []
    d.addCallback(out.append)
    assert out, "the check did not finish"
    return {r.name: (r.ok, r.detail) for r in out[0]}


def answer(r: Readiness) -> tuple[int, dict[str, Any]]:
    out: list[Any] = []
    Deferred.fromCoroutine(ready_answer(r)()).addCallback(out.append)
    return out[0]


class ReadinessTests(TestCase):
    def test_all_checks_pass(self) -> None:
        clock = Clock()
        clock.advance(100)
        r = readiness(clock, queue=FakeQueue(last_scan=98.0))
        code, body = answer(r)
        assert code == 200 and body["status"] == "ready"
        assert list(body["checks"]) == ["database", "disk", "master_key", "queue"]
        assert body["checks"]["disk"] == {
            "ok": True,
            "detail": "10.0 GB free in /var/lib/secmail, needs 15.4 MB",
        }
        assert body["checks"]["queue"]["detail"] == "last scan 2 s ago (limit 30 s)"

    def test_database_that_does_not_answer_is_not_ready_after_the_timeout(self) -> None:
        clock = Clock()
        hanging: Deferred[None] = Deferred()
        d = Deferred.fromCoroutine(readiness(clock, db_probe=lambda: hanging).check())
        assert not d.called
        clock.advance(CHECK_TIMEOUT)
        found = results(d)
        assert found["database"] == (False, "no answer within 2 s")
        assert found["disk"][0] and found["master_key"][0]

    def test_database_error_names_it(self) -> None:
        async def down() -> None:
            raise ConnectionError("connection refused")

        code, body = answer(readiness(Clock(), db_probe=down))
        assert code == 503 and body["status"] == "not ready"
        assert body["checks"]["database"] == {
            "ok": False,
            "detail": "ConnectionError: connection refused",
        }

    def test_low_disk_is_not_ready(self) -> None:
        code, body = answer(readiness(Clock(), statvfs=statvfs(10_000_000)))
        assert code == 503
        assert body["checks"]["disk"]["ok"] is False
        assert "needs 15.4 MB" in body["checks"]["disk"]["detail"]

    def test_unreadable_data_dir_is_not_ready(self) -> None:
        def gone(path: str) -> Any:
            raise FileNotFoundError(2, "No such file or directory")

        code, body = answer(readiness(Clock(), statvfs=gone))
        assert code == 503
        assert body["checks"]["disk"]["detail"].startswith("cannot read /var/lib/secmail")

    def test_unreadable_master_key_is_not_ready(self) -> None:
        async def unreadable() -> None:
            raise PermissionError(13, "Permission denied")

        code, body = answer(readiness(Clock(), read_key=unreadable))
        assert code == 503
        assert body["checks"]["master_key"]["ok"] is False
        assert "Permission denied" in body["checks"]["master_key"]["detail"]

    def test_queue_not_scanned_lately_is_not_ready(self) -> None:
        clock = Clock()
        clock.advance(1000)
        for queue, detail in [
            (FakeQueue(last_scan=900.0), "last scan 100 s ago (limit 30 s)"),
            (FakeQueue(last_scan=None), "no scan has finished yet"),
            (FakeQueue(running=False), "the queue is not running"),
        ]:
            code, body = answer(readiness(clock, queue=queue))
            assert code == 503
            assert body["checks"]["queue"] == {"ok": False, "detail": detail}


class AnswerTests(TestCase):
    def test_json_answer_sets_status_and_type(self) -> None:
        clock = Clock()
        clock.advance(50)
        resource = JsonAnswer(live_answer(clock, 20.0))
        request = DummyRequest([b""])
        resource.render_GET(request)  # type: ignore[arg-type]
        assert request.responseCode == 200
        assert request.responseHeaders.getRawHeaders(b"content-type") == [b"application/json"]
        body = json.loads(b"".join(request.written))
        assert body["status"] == "live" and body["uptime_seconds"] == 30


class GoneCallerTests(TestCase):
    def test_a_caller_that_left_gets_no_answer_and_no_error(self) -> None:
        pending: Deferred[tuple[int, dict[str, Any]]] = Deferred()

        async def slow() -> tuple[int, dict[str, Any]]:
            return await pending

        request = DummyRequest([b""])
        JsonAnswer(slow).render_GET(request)  # type: ignore[arg-type]
        request.processingFailed(Failure(ConnectionDone()))  # the probe hung up
        pending.callback((200, {"status": "live"}))
        assert request.written == []
        assert self.flushLoggedErrors() == []


def test_size_text() -> None:
    assert size_text(512) == "512 bytes"
    assert size_text(15_360_000) == "15.4 MB"
    assert size_text(3_500_000_000_000) == "3500.0 GB"


def test_exposition_names() -> None:
    """Every secmail metric is named secmail_*, counters end in _total, no _created series."""
    text = generate_latest(metrics.REGISTRY).decode()
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}
    ours = {n for n in names if n.startswith("secmail_")}
    assert "secmail_build_info" in ours
    assert 'secmail_smtp_messages_total{kind="letter"}' in text
    assert not [n for n in names if n.endswith("_created")]
    assert {n for n in names if not n.startswith(("secmail_", "process_", "python_"))} == set()


class QueueGaugeTests(TestCase):
    def test_sets_the_gauges(self) -> None:
        clock = Clock()
        clock.advance(1000)
        figures = QueueFigures(waiting=3, leased=2, quarantined=1, oldest_created=940)
        QueueGauges(lambda now: succeed(figures), clock).run()  # type: ignore[arg-type,return-value]
        assert metrics.QUEUE_ROWS.labels("waiting")._value.get() == 3
        assert metrics.QUEUE_ROWS.labels("leased")._value.get() == 2
        assert metrics.QUEUE_ROWS.labels("quarantined")._value.get() == 1
        assert metrics.QUEUE_OLDEST._value.get() == 60

    def test_a_failing_query_is_logged_once_and_never_fails_the_timer(self) -> None:
        failing = [True]

        def figures(now: int) -> Deferred[QueueFigures]:
            if failing[0]:
                raise ConnectionError("database gone")
            return succeed(QueueFigures(0, 0, 0, None))

        gauges = QueueGauges(figures, Clock())  # type: ignore[arg-type]
        with capturedLogs() as events:
            runs = [gauges.run(), gauges.run()]
            failing[0] = False
            runs.append(gauges.run())
            failing[0] = True
            runs.append(gauges.run())
        assert all(d.called for d in runs)
        warned = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
        assert warned == ["Cannot read the queue's figures for metrics: database gone"] * 2


@on_each_engine
class MonitoringStoreTestsMixin:
    engine_name = "sqlite"

    def setUp(self) -> None:
        _, self.db, self.master, self.store = open_store(self.engine_name, self.addCleanup)  # type: ignore[attr-defined]

    async def test_write_probe_writes_this_nodes_row(self) -> None:
        await write_probe(self.db, "gw/a", "0.1.0", 100)
        await write_probe(self.db, "gw/a", "0.2.0", 200)
        await write_probe(self.db, "gw/b", "0.1.0", 150)
        rows = await self.db.run(
            lambda txn: txn.execute(
                "SELECT name, seen, version FROM nodes ORDER BY name"
            ).fetchall()
        )
        assert [tuple(r) for r in rows] == [("gw/a", 200, "0.2.0"), ("gw/b", 150, "0.1.0")]

    async def test_queue_figures(self) -> None:
        assert await self.store.queue_figures(1000) == QueueFigures(0, 0, 0, None)
        for created in (500, 700, 900):
            delivery = NewDelivery(
                "relay", "a@corp.example", ("b@partner.example",), "mx", "partner.example", ""
            )
            message = NewMessage(
                content=SealedBytes(self.master, new_id(), b"Subject: x\r\n\r\nx\r\n"),
                kind="relay",
                sender="a@corp.example",
                deliveries=[delivery],
            )
            await self.store.commit([message], created)
        (claimed,) = await self.store.claim_due("gw/a", 1000, 60, 1)
        assert claimed.created == 500
        figures = await self.store.queue_figures(1000)
        assert (figures.waiting, figures.leased, figures.quarantined) == (2, 1, 0)
        assert figures.oldest_created == 500
        await self.store.quarantine(claimed, claimed.recipients, "damaged", None, 1000)
        figures = await self.store.queue_figures(1000)
        assert (figures.waiting, figures.leased, figures.quarantined) == (2, 0, 1)
        assert figures.oldest_created == 700
        # A lease that has run out counts as waiting again.
        await self.store.claim_due("gw/a", 1000, 60, 1)
        assert (await self.store.queue_figures(1061)).leased == 0

    async def test_database_batches_are_timed(self) -> None:
        count = "secmail_db_commit_seconds_count"
        before = metrics.REGISTRY.get_sample_value(count) or 0
        await self.db.run(lambda txn: txn.execute("SELECT 1").fetchone())
        assert (metrics.REGISTRY.get_sample_value(count) or 0) >= before + 1


class UnreachableEngine:
    begin = "BEGIN"

    def connect(self) -> Any:
        raise ConnectionError("connection refused")

    def describe(self) -> str:
        return "postgresql://db.example/secmail"


class DatabaseErrorTests(TestCase):
    async def test_a_batch_that_cannot_reach_the_database_is_counted(self) -> None:
        from twisted.internet import reactor

        before = metrics.REGISTRY.get_sample_value("secmail_db_errors_total") or 0
        db = Database(UnreachableEngine(), reactor)  # type: ignore[arg-type]
        db.start()
        self.addCleanup(db.stop)
        with self.assertRaises(StoreUnavailable):
            await db.run(lambda txn: None)
        assert metrics.REGISTRY.get_sample_value("secmail_db_errors_total") == before + 1
