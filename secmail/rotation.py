# -*- test-case-name: tests.test_keys -*-
"""
Master key rotation in the running gateway, run by a TimerService.

Each run reads the key ring file again if it changed (so C{secmail keys rotate} needs no
restart), tells the database which keys this node holds, seals with the newest key every
live node holds (a node that lacks it could not open what this one seals), and re-wraps
the message keys of older keys under it, one batch per transaction, so that mail and the
portal go on between batches. Rows another node or an older ring sealed meanwhile are
picked up by the next run.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from secmail.crypto import MasterKey, MasterKeyError, read_ring_file
from secmail.store.keys import REWRAP_BATCH, KeyStore, NodeKeys, sealing_key

log = Logger()

#: Seconds between runs: how soon a rotated ring file is picked up.
ROTATION_INTERVAL = 60


class KeyRotation:
    def __init__(
        self,
        master: MasterKey,
        store: KeyStore,
        clock: Any,
        node: str,
        batch: int = REWRAP_BATCH,
    ) -> None:
        self.master = master
        self.store = store
        self.clock = clock
        self.node = node
        self.batch = batch
        # None: the first run reads the file again (it may have changed since start-up).
        self._stamp: tuple[int, int, int] | None = None

    def run(self) -> Deferred[int | None]:
        return Deferred.fromCoroutine(self.run_once()).addErrback(
            lambda f: log.failure("Master key rotation run failed; will try again", f)
        )

    def _file_stamp(self) -> tuple[int, int, int] | None:
        if self.master.path is None:
            return None
        try:
            st = os.stat(self.master.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def reload_if_changed(self) -> None:
        """Read the ring file again when it changed; a bad file leaves the ring as it was."""
        stamp = self._file_stamp()
        if self.master.path is None or (stamp is not None and stamp == self._stamp):
            return
        try:
            keys = read_ring_file(self.master.path)
        except MasterKeyError as e:
            log.error("Master key ring not reloaded, still using the old one: {error}", error=e)
            return
        self._stamp = stamp
        before = self.master.key_ids
        self.master.reload(keys)
        if self.master.key_ids == before:
            return
        log.info(
            "Master key ring reloaded from {path}: keys {ids} (new: {new})",
            path=self.master.path,
            ids=", ".join(self.master.key_ids),
            new=", ".join(k for k in self.master.key_ids if k not in before) or "none",
        )

    async def _announce(self) -> list[NodeKeys]:
        now = int(self.clock.seconds())
        return await self.store.announce(
            NodeKeys(self.node, tuple(self.master.key_ids), self.master.key_id, now)
        )

    async def run_once(self) -> int:
        """One run; returns how many message keys were re-wrapped."""
        self.reload_if_changed()
        nodes = await self._announce()
        ring = self.master.key_ids
        sealing = sealing_key(ring, nodes)
        if sealing != self.master.key_id:
            self.master.seal_with(sealing)
            log.info("Sealing with master key {key_id} from now on", key_id=sealing)
            await self._announce()
        missing = [n.node for n in nodes if ring[0] not in n.key_ids]
        if missing:
            log.warn(
                "Master key {key_id} is not yet in the key ring of {nodes}: copy the key ring "
                "file there; until then new rows are sealed with {sealing}",
                key_id=ring[0],
                nodes=", ".join(missing),
                sealing=sealing,
            )
        older = ring[ring.index(sealing) + 1 :]
        total = 0
        after: str | None = None
        while older:
            result = await self.store.rewrap(self.master, older, after, self.batch)
            total += result.rewrapped
            for message_id in result.damaged:
                log.error(
                    "Message {message_id}: its wrapped key fails authentication; not re-wrapped",
                    message_id=message_id,
                )
            if result.last is None:
                break
            after = result.last
        if total:
            log.info(
                "Re-wrapped {n} message key(s) under master key {key_id}", n=total, key_id=sealing
            )
        return total
