"""The admins' audit trail (secmail.store.audit), on each engine."""

from __future__ import annotations

from secmail.store.audit import AuditRow, AuditTrail, audit_txn
from tests.dbs import on_each_engine, open_store


@on_each_engine
class AuditTrailTestsMixin:
    engine_name = "sqlite"

    def setUp(self) -> None:
        _, self.db, _, self.store = open_store(self.engine_name, self.addCleanup)  # type: ignore[attr-defined]
        self.trail = AuditTrail(self.db)

    async def test_rows_come_back_in_order_from_a_time(self) -> None:
        await self.trail.record(AuditRow(100, "alice", "192.0.2.1", "sign-in"))
        await self.trail.record(
            AuditRow(200, "alice", "192.0.2.1", "setting changed", "portal.title", "a", "b")
        )
        await self.trail.record(AuditRow(150, "bob", "local", "sign-in failed"))
        rows = await self.trail.since(120)
        assert [(r.at, r.admin, r.action) for r in rows] == [
            (150, "bob", "sign-in failed"),
            (200, "alice", "setting changed"),
        ]
        assert rows[1] == AuditRow(
            200, "alice", "192.0.2.1", "setting changed", "portal.title", "a", "b"
        )
        assert rows[0].setting is None and rows[0].before is None

    async def test_a_failed_change_leaves_no_row(self) -> None:
        def change(txn: object) -> None:
            audit_txn(txn, AuditRow(100, "alice", "local", "setting changed"))  # type: ignore[arg-type]
            raise ValueError("refused")

        with self.assertRaises(ValueError):  # type: ignore[attr-defined]
            await self.db.run(change)
        assert await self.trail.since(0) == []

    async def test_retention_prunes_only_older_rows(self) -> None:
        await self.trail.record(AuditRow(100, "a", "local", "x"))
        await self.trail.record(AuditRow(300, "a", "local", "y"))
        assert await self.store.delete_old_events(200) == 1
        assert [r.action for r in await self.trail.since(0)] == ["y"]

    async def test_newest_first_keeps_the_newest_when_cut(self) -> None:
        for at in (100, 200, 300):
            await self.trail.record(AuditRow(at, "a", "local", f"x{at}"))
        rows = await self.trail.newest(150, limit=1)
        assert [r.action for r in rows] == ["x300"]
        assert [r.action for r in await self.trail.newest(0)] == ["x300", "x200", "x100"]
