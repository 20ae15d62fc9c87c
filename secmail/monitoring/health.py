# -*- test-case-name: tests.test_monitoring -*-
"""
Whether this node lives and whether it can take mail now: the answers of C{GET /livez} and
C{GET /readyz}, for a load balancer, keepalived or a person.

Ready means every check passes, each within L{CHECK_TIMEOUT} seconds:
 - database: a write (this node's row in C{nodes}) is committed;
 - disk: the data directory has more free space than the intake needs (1.5 x
   C{smtp.max_message_size}, below which new mail is refused with 452);
 - master_key: the master key file can be read and holds a key;
 - queue: the outbound queue has finished a scan lately (within three poll intervals, and
   at least L{QUEUE_STALE_FLOOR} seconds).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime

#: Seconds each check may take before it counts as failed.
CHECK_TIMEOUT = 2.0
#: The queue counts as scanned when its last scan ended at most this long ago, or three poll
#: intervals when that is longer.
QUEUE_STALE_FLOOR = 30.0


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


class Scanned(Protocol):
    """What the queue check reads of L{secmail.scanning.ScanningService}."""

    running: bool | int
    last_scan: float | None

    def poll_interval(self) -> float: ...


def size_text(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


class Readiness:
    def __init__(
        self,
        clock: IReactorTime,
        *,
        db_probe: Callable[[], Awaitable[None]],
        data_dir: str,
        min_free_bytes: float,
        read_key: Callable[[], Awaitable[Any]],
        queue: Scanned,
        statvfs: Callable[[str], Any] = os.statvfs,
    ) -> None:
        self.clock = clock
        self.db_probe = db_probe
        self.data_dir = data_dir
        self.min_free_bytes = min_free_bytes
        self.read_key = read_key
        self.queue = queue
        self.statvfs = statvfs

    async def check(self) -> list[CheckResult]:
        """Every check's result, the slow ones run at the same time."""
        database = Deferred.fromCoroutine(self._bounded("database", self._database()))
        key = Deferred.fromCoroutine(self._bounded("master_key", self._master_key()))
        disk, queue = self._disk(), self._queue()
        return [await database, disk, await key, queue]

    async def _bounded(self, name: str, work: Awaitable[str]) -> CheckResult:
        async def run() -> str:
            return await work

        attempt = Deferred.fromCoroutine(run())
        attempt.addTimeout(CHECK_TIMEOUT, self.clock)
        try:
            return CheckResult(name, True, await attempt)
        except TimeoutError:
            return CheckResult(name, False, f"no answer within {CHECK_TIMEOUT:g} s")
        except Exception as e:  # the check's own failure is its answer
            text = " ".join(str(e).split())[:200]
            return CheckResult(
                name, False, f"{type(e).__name__}: {text}" if text else type(e).__name__
            )

    async def _database(self) -> str:
        started = self.clock.seconds()
        await self.db_probe()
        return f"write committed in {(self.clock.seconds() - started) * 1000:.0f} ms"

    async def _master_key(self) -> str:
        await self.read_key()
        return "readable"

    def _disk(self) -> CheckResult:
        try:
            st = self.statvfs(self.data_dir)
        except OSError as e:
            return CheckResult("disk", False, f"cannot read {self.data_dir}: {e.strerror}")
        free = st.f_bavail * st.f_frsize
        detail = (
            f"{size_text(free)} free in {self.data_dir}, needs {size_text(self.min_free_bytes)}"
        )
        return CheckResult("disk", free >= self.min_free_bytes, detail)

    def _queue(self) -> CheckResult:
        if not self.queue.running:
            return CheckResult("queue", False, "the queue is not running")
        last = self.queue.last_scan
        if last is None:
            return CheckResult("queue", False, "no scan has finished yet")
        age = self.clock.seconds() - last
        limit = max(3 * self.queue.poll_interval(), QUEUE_STALE_FLOOR)
        return CheckResult("queue", age <= limit, f"last scan {age:.0f} s ago (limit {limit:g} s)")
