# -*- test-case-name: tests.test_keys -*-
"""
Master key rotation in the database: what each key still protects, re-wrapping message
keys under the sealing key in batches, and which keys each running node holds.

A message's own key never changes: re-wrapping decrypts the wrapped copy with the old
master key and wraps it with the new one, so the chunks are not touched and a reader
that already opened the message reads on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from secmail.crypto import IntegrityError, MasterKey
from secmail.store.database import Database, Txn
from secmail.store.engines import Engine

#: Message keys re-wrapped per transaction.
REWRAP_BATCH = 500

#: A node that has not said which keys it holds for this long is taken to be down.
NODE_LIVE = 10 * 60

#: The tables whose rows name the key they were sealed or HMACed under, with their
#: lifetime column (None: kept until deleted).
_KEYED = (
    ("messages", "message keys", None),
    ("sms_outbox", "SMS texts", "expires"),
    ("access_codes", "portal codes and PINs", "expires"),
    ("compose_codes", "D-Compose codes", "expires"),
    # Not re-sealed by a rotation: `secmail admin add NAME` again seals under the newest key.
    ("admins", "admin second factors", None),
)


@dataclass(frozen=True)
class NodeKeys:
    """What one node said about its key ring at C{seen}."""

    node: str
    key_ids: tuple[str, ...]
    sealing: str
    seen: int


@dataclass
class KeyUsage:
    """How many rows one key still protects, by kind (live rows only)."""

    key_id: str
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.rows.values())


@dataclass(frozen=True)
class RewrapResult:
    rewrapped: int
    #: Rows whose wrapped key failed authentication (left as they are, logged by the caller).
    damaged: tuple[str, ...]
    #: The last message id looked at: the next batch starts after it.
    last: str | None


class KeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def usage(self, now: int) -> dict[str, KeyUsage]:
        """Rows per key id; the key C{""} counts live rows from before key ids were stored."""
        return await self.db.run(lambda txn: usage_txn(txn, now))

    async def rewrap(
        self, master: MasterKey, older: Sequence[str], after: str | None, limit: int
    ) -> RewrapResult:
        """
        Re-wrap up to C{limit} message keys wrapped by a key of C{older} under the ring's
        sealing key, in message id order after C{after}.
        """
        target = master.key_id
        return await self.db.run(lambda txn: rewrap_txn(txn, master, target, older, after, limit))

    async def announce(self, node: NodeKeys) -> list[NodeKeys]:
        """Record which keys this node holds; returns every node seen in the last NODE_LIVE."""
        return await self.db.run(lambda txn: announce_txn(txn, node))

    async def nodes(self) -> list[NodeKeys]:
        return await self.db.run(nodes_txn)


def usage_txn(txn: Txn, now: int) -> dict[str, KeyUsage]:
    found: dict[str, KeyUsage] = {}
    for table, kind, expires in _KEYED:
        live = f" WHERE {expires} >= ?" if expires else ""
        rows = txn.execute(
            f"SELECT key_id, COUNT(*) FROM {table}{live} GROUP BY key_id",
            (now,) if expires else (),
        ).fetchall()
        for key_id, count in rows:
            usage = found.setdefault(key_id or "", KeyUsage(key_id or ""))
            usage.rows[kind] = int(count)
    return found


def rewrap_txn(
    txn: Txn,
    master: MasterKey,
    target: str,
    older: Sequence[str],
    after: str | None,
    limit: int,
) -> RewrapResult:
    older = [key_id for key_id in older if key_id != target and master.get(key_id) is not None]
    if not older:
        return RewrapResult(0, (), None)
    marks = ", ".join("?" for _ in older)
    rows = txn.execute(
        f"SELECT id, key_id, wrapped_key FROM messages WHERE key_id IN ({marks}) AND id > ? "
        "ORDER BY id LIMIT ?" + txn.skip_locked,
        (*older, after or "", limit),
    ).fetchall()
    updates = []
    damaged = []
    for message_id, key_id, wrapped in rows:
        try:
            message_key = master.unwrap(bytes(wrapped), message_id, key_id)
        except IntegrityError:
            damaged.append(message_id)
            continue
        rewrapped = master.wrap_with_id(message_key, message_id)
        if rewrapped[0] != target:  # the ring was swapped meanwhile: next time
            continue
        updates.append((target, rewrapped[1], message_id, key_id))
    if updates:
        txn.executemany(
            "UPDATE messages SET key_id = ?, wrapped_key = ? WHERE id = ? AND key_id = ?",
            updates,
        )
    last = rows[-1][0] if len(rows) == limit else None
    return RewrapResult(len(updates), tuple(damaged), last)


def announce_txn(txn: Txn, node: NodeKeys) -> list[NodeKeys]:
    txn.execute(
        "UPDATE key_ring_nodes SET key_ids = ?, sealing = ?, seen = ? WHERE node = ?",
        (",".join(node.key_ids), node.sealing, node.seen, node.node),
    )
    if txn.rowcount == 0:
        txn.execute(
            "INSERT INTO key_ring_nodes (node, key_ids, sealing, seen) VALUES (?, ?, ?, ?)",
            (node.node, ",".join(node.key_ids), node.sealing, node.seen),
        )
    return [n for n in nodes_txn(txn) if n.seen >= node.seen - NODE_LIVE]


def nodes_txn(txn: Txn) -> list[NodeKeys]:
    return [
        NodeKeys(r[0], tuple(filter(None, r[1].split(","))), r[2], int(r[3]))
        for r in txn.execute(
            "SELECT node, key_ids, sealing, seen FROM key_ring_nodes ORDER BY node"
        ).fetchall()
    ]


def live_nodes_blocking(engine: Engine, now: int) -> list[NodeKeys]:
    """The nodes seen in the last NODE_LIVE, read before the reactor runs (at start-up)."""
    conn = engine.connect()
    try:
        cursor = conn.cursor()
        cursor.execute(engine.begin)
        nodes = nodes_txn(Txn(engine, cursor))
        cursor.execute("COMMIT")
    finally:
        conn.close()
    return [n for n in nodes if n.seen >= now - NODE_LIVE]


def sealing_key(ring: Sequence[str], nodes: Sequence[NodeKeys]) -> str:
    """
    The newest key of C{ring} that every live node holds, so that any node can open what
    this one seals; the newest if none is shared (a lone node, or rings that differ).
    """
    for key_id in ring:
        if all(key_id in n.key_ids for n in nodes):
            return key_id
    return ring[0]


def retire_problems(
    key_id: str, usage: dict[str, KeyUsage], nodes: Sequence[NodeKeys], now: int
) -> list[str]:
    """Why key C{key_id} cannot leave the ring yet (nothing: it can), one line each."""
    problems = []
    used = usage.get(key_id)
    if used is not None and used.total:
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(used.rows.items()) if n)
        problems.append(
            f"key {key_id} still protects {counts}; a running gateway re-wraps message keys "
            "within minutes and SMS texts and codes expire within 10 minutes "
            "(see: secmail keys status)"
            + (
                "; admin second factors move to the newest key when each admin is added again "
                "(secmail admin add NAME --role ROLE)"
                if used.rows.get("admin second factors")
                else ""
            )
        )
    unlabelled = usage.get("")
    if unlabelled is not None and unlabelled.total:
        problems.append(
            f"{unlabelled.total} SMS texts or codes from before key ids were recorded may use "
            f"key {key_id}; they expire within 10 minutes"
        )
    for node in nodes:
        if node.seen >= now - NODE_LIVE and node.sealing == key_id:
            problems.append(
                f"node {node.node} still seals with key {key_id}: copy the key ring file to it"
            )
    return problems
