"""
Master key rotation: the key ring file, re-wrapping message keys in batches while mail
arrives, SMS texts and codes across a rotation, and when a retired key may go.

Storage tests run on SQLite and, when SECMAIL_TEST_POSTGRES is set, on PostgreSQL.
"""

from __future__ import annotations

import os
import stat
import tempfile

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from secmail.crypto import (
    DerivedKeys,
    IntegrityError,
    MasterKey,
    MasterKeyError,
    UnknownKeyError,
    generate_key_file,
    key_id_of,
    load_key_file,
    remove_from_key_file,
    rotate_key_file,
)
from secmail.rotation import KeyRotation
from secmail.store.compose import ComposeStore
from secmail.store.keys import (
    NODE_LIVE,
    KeyStore,
    NodeKeys,
    live_nodes_blocking,
    retire_problems,
    sealing_key,
)
from secmail.store.messages import MessageStore, NewEnvelope, NewMessage, hash_token, new_id
from secmail.store.portal import CodeState, PinOrder, PinState, PortalStore
from secmail.store.sms import SmsStore
from secmail.store.spool import SealedBytes
from tests.dbs import on_each_engine, open_store

T0 = 1_700_000_000
NUMBER = "+358401234567"


class RingFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = os.path.join(tempfile.mkdtemp(prefix="secmail-ring-"), "master.key")

    def test_rotate_puts_new_key_first(self) -> None:
        """rotate: a new current key, the old one kept as retired, mode 600, old file kept."""
        first = generate_key_file(self.path)
        with open(self.path, "rb") as f:
            before = f.read()
        ring, previous = rotate_key_file(self.path)
        self.assertEqual(ring.key_ids[1:], [first.key_id])
        self.assertNotEqual(ring.key_id, first.key_id)
        self.assertEqual(load_key_file(self.path).key_ids, ring.key_ids)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        with open(previous, "rb") as f:
            self.assertEqual(f.read(), before)
        self.assertEqual(stat.S_IMODE(os.stat(previous).st_mode), 0o600)
        self.assertFalse(os.path.exists(self.path + ".new"))

    def test_one_line_file_is_a_ring_of_one(self) -> None:
        """A key file written before rings (one base64 line) still loads."""
        import base64

        key = os.urandom(32)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(base64.b64encode(key).decode() + "\n")
        self.assertEqual(load_key_file(self.path).key_ids, [key_id_of(key)])

    def test_bad_line_named(self) -> None:
        """A damaged line of the ring is named by its number."""
        generate_key_file(self.path)
        with open(self.path, "a") as f:
            f.write("not-a-key\n")
        with self.assertRaises(MasterKeyError) as raised:
            load_key_file(self.path)
        self.assertIn("line", str(raised.exception))

    def test_remove_refuses_current_key(self) -> None:
        """The current key never leaves the ring; a retired one does."""
        first = generate_key_file(self.path)
        ring, _ = rotate_key_file(self.path)
        with self.assertRaises(MasterKeyError):
            remove_from_key_file(self.path, ring.key_id)
        self.assertEqual(remove_from_key_file(self.path, first.key_id).key_ids, [ring.key_id])
        self.assertEqual(load_key_file(self.path).key_ids, [ring.key_id])

    def test_unwrap_by_key_id(self) -> None:
        """Any key of the ring opens what it wrapped; an unknown id is UnknownKeyError."""
        old, new = os.urandom(32), os.urandom(32)
        key_id, wrapped = MasterKey(old).wrap_with_id(b"k" * 32, "m1")
        ring = MasterKey(new, old)
        self.assertEqual(ring.unwrap(wrapped, "m1", key_id), b"k" * 32)
        with self.assertRaises(UnknownKeyError) as raised:
            MasterKey(new).unwrap(wrapped, "m1", key_id)
        self.assertEqual(raised.exception.key_id, key_id)
        with self.assertRaises(IntegrityError):
            ring.unwrap(wrapped[:-1] + bytes([wrapped[-1] ^ 1]), "m1", key_id)

    def test_rotate_keeps_owner_and_never_reuses_a_loose_mode(self) -> None:
        """
        rotate run by root for a gateway's own user: the new ring and .prev keep the old
        file's owner; leftover world-readable .new/.prev files are not reused with their mode.
        """
        generate_key_file(self.path)
        for leftover in (self.path + ".new", self.path + ".prev"):
            with open(leftover, "w") as f:
                f.write("stale")
            os.chmod(leftover, 0o644)
        if os.geteuid() == 0:
            os.chown(self.path, 1, 1)
        _, previous = rotate_key_file(self.path)
        for path in (self.path, previous):
            info = os.stat(path)
            self.assertEqual(stat.S_IMODE(info.st_mode), 0o600, path)
            if os.geteuid() == 0:
                self.assertEqual((info.st_uid, info.st_gid), (1, 1), path)
        self.assertFalse(os.path.exists(self.path + ".new"))

    def test_generate_never_overwrites(self) -> None:
        """keys generate refuses an existing file: a master key is never overwritten."""
        generate_key_file(self.path)
        with open(self.path, "rb") as f:
            before = f.read()
        with self.assertRaises(FileExistsError):
            generate_key_file(self.path)
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), before)

    def test_sealing_key(self) -> None:
        """Seal with the newest key every live node holds; the newest when none is shared."""
        now = T0
        both = [NodeKeys("a", ("new", "old"), "old", now), NodeKeys("b", ("old",), "old", now)]
        self.assertEqual(sealing_key(["new", "old"], both), "old")
        self.assertEqual(sealing_key(["new", "old"], both[:1]), "new")
        self.assertEqual(sealing_key(["x"], both), "x")


@on_each_engine
class RotationMixin:
    engine_name = "sqlite"

    def setUp(self) -> None:
        opened = open_store(self.engine_name, self.addCleanup)  # type: ignore[attr-defined]
        self.engine, self.db, _, _ = opened
        self.old = os.urandom(32)
        self.new = os.urandom(32)
        self.master = MasterKey(self.old)
        self.store = MessageStore(self.db, self.master)
        self.keys = KeyStore(self.db)
        self.clock = Clock()
        self.clock.advance(T0)

    def rotate(self) -> None:
        """What the gateway does when it reads a rotated ring file."""
        self.master.replace([self.new, self.old], sealing=self.master.key_id)

    async def commit(self, n: int, body: bytes = b"Subject: s\r\n\r\nbody %d\r\n") -> list[str]:
        messages = [
            NewMessage(SealedBytes(self.master, new_id(), body % i), "mail", "a@corp.example")
            for i in range(n)
        ]
        await self.store.commit(messages, now=T0)
        return [m.content.message_id for m in messages]

    async def key_ids(self) -> dict[str, str]:
        rows = await self.db.run(
            lambda txn: txn.execute("SELECT id, key_id FROM messages").fetchall()
        )
        return {r[0]: r[1] for r in rows}

    def rotation(self, node: str = "a", batch: int = 500) -> KeyRotation:
        return KeyRotation(self.master, self.keys, self.clock, node, batch=batch)

    async def test_read_before_and_after_rotation(self) -> None:
        """After a rotation, messages sealed before and after it are readable; new ones use it."""
        before = await self.commit(3)
        self.rotate()
        await self.rotation().run_once()
        after = await self.commit(2)
        ids = await self.key_ids()
        self.assertEqual({ids[m] for m in after}, {key_id_of(self.new)})
        for n, message_id in enumerate(before):
            self.assertIn(b"body %d" % n, await self.store.read_all(message_id))
        for n, message_id in enumerate(after):
            self.assertIn(b"body %d" % n, await self.store.read_all(message_id))

    async def test_rewrap_in_batches_while_mail_arrives(self) -> None:
        """Re-wrapping goes batch by batch; rows written under the old key meanwhile follow."""
        old_id, new_id_ = key_id_of(self.old), key_id_of(self.new)
        first = await self.commit(7)
        self.master.replace([self.new, self.old])  # seals with the new key
        after = None
        batches = 0
        late: list[str] = []
        while True:
            result = await self.keys.rewrap(self.master, [old_id], after, 3)
            batches += 1
            self.assertLessEqual(result.rewrapped, 3)
            # Between batches: another node, still sealing with the old key, writes mail.
            other = MessageStore(self.db, MasterKey(self.old))
            message = NewMessage(SealedBytes(other.master, new_id(), b"late"), "mail", "x@y")
            await other.commit([message], now=T0)
            late.append(message.content.message_id)
            if result.last is None:
                break
            after = result.last
        self.assertGreaterEqual(batches, 3)
        # The next run picks up whatever this pass did not reach.
        await self.rotation(batch=3).run_once()
        ids = await self.key_ids()
        self.assertEqual(set(ids.values()), {new_id_})
        for message_id in first:
            self.assertIn(b"body", await self.store.read_all(message_id))
        for message_id in late:
            self.assertEqual(await self.store.read_all(message_id), b"late")
        self.assertNotIn(old_id, await self.keys.usage(T0))

    async def test_seals_only_with_a_key_every_node_holds(self) -> None:
        """A node keeps sealing with the old key until every live node holds the new one."""
        old_id, new_id_ = key_id_of(self.old), key_id_of(self.new)
        await self.commit(2)
        await self.keys.announce(NodeKeys("b", (old_id,), old_id, T0))
        self.rotate()
        rotation = self.rotation()
        self.assertEqual(await rotation.run_once(), 0)
        self.assertEqual(self.master.key_id, old_id)
        self.assertEqual(set((await self.key_ids()).values()), {old_id})
        # Node b gets the ring file:
        await self.keys.announce(NodeKeys("b", (new_id_, old_id), old_id, T0))
        self.assertEqual(await rotation.run_once(), 2)
        self.assertEqual(self.master.key_id, new_id_)
        self.assertEqual(set((await self.key_ids()).values()), {new_id_})

    async def test_node_gone_quiet_does_not_hold_back(self) -> None:
        """A node not heard from for NODE_LIVE seconds does not keep the old key sealing."""
        old_id = key_id_of(self.old)
        await self.keys.announce(NodeKeys("b", (old_id,), old_id, T0 - NODE_LIVE - 1))
        self.rotate()
        await self.rotation().run_once()
        self.assertEqual(self.master.key_id, key_id_of(self.new))

    async def test_gateway_picks_up_rotated_file(self) -> None:
        """A running gateway reads the rotated ring file, seals with its key, re-wraps."""
        path = os.path.join(tempfile.mkdtemp(prefix="secmail-ring-"), "master.key")
        master = generate_key_file(path)
        store = MessageStore(self.db, master)
        message = NewMessage(SealedBytes(master, new_id(), b"before"), "mail", "a@b")
        await store.commit([message], now=T0)
        rotation = KeyRotation(master, self.keys, self.clock, "a")
        await rotation.run_once()
        rotated, _ = rotate_key_file(path)
        self.assertEqual(await rotation.run_once(), 1)
        self.assertEqual(master.key_id, rotated.key_id)
        self.assertEqual(await store.read_all(message.content.message_id), b"before")

    async def test_unknown_key_reloads_ring_file(self) -> None:
        """A row sealed by a node that rotated first opens once the ring file here has its key."""
        path = os.path.join(tempfile.mkdtemp(prefix="secmail-ring-"), "master.key")
        here = generate_key_file(path)
        store = MessageStore(self.db, here)
        rotated, _ = rotate_key_file(path)  # the file is copied here; this process still old
        message = NewMessage(SealedBytes(rotated, new_id(), b"from b"), "mail", "a@b")
        await store.commit([message], now=T0)
        self.assertEqual(await store.read_all(message.content.message_id), b"from b")

    async def test_retired_key_known_until_restart(self) -> None:
        """A key retired from the file stays known to a running gateway: a late row re-wraps."""
        path = os.path.join(tempfile.mkdtemp(prefix="secmail-ring-"), "master.key")
        first = generate_key_file(path)
        master = load_key_file(path)
        rotation = KeyRotation(master, self.keys, self.clock, "a")
        rotate_key_file(path)
        await rotation.run_once()
        # A message whose receiving began before the switch is committed under the old key...
        late = NewMessage(SealedBytes(MasterKey(first.key), new_id(), b"late"), "mail", "a@b")
        # ...after the old key left the file.
        remove_from_key_file(path, first.key_id)
        self.clock.advance(1)
        await MessageStore(self.db, master).commit([late], now=T0)
        self.assertEqual(await rotation.run_once(), 1)
        self.assertEqual(await self.store_for(master).read_all(late.content.message_id), b"late")
        self.assertEqual(master.key_ids[-1], first.key_id)

    def store_for(self, master: MasterKey) -> MessageStore:
        return MessageStore(self.db, master)

    async def test_start_up_seals_with_a_shared_key(self) -> None:
        """At start-up a node reads which keys the others hold before it seals anything."""
        old_id = key_id_of(self.old)
        await self.keys.announce(NodeKeys("b", (old_id,), old_id, T0))
        await self.keys.announce(NodeKeys("gone", ("x",), "x", T0 - NODE_LIVE - 1))
        nodes = live_nodes_blocking(self.engine, T0)
        self.assertEqual([n.node for n in nodes], ["b"])
        self.assertEqual(sealing_key([key_id_of(self.new), old_id], nodes), old_id)

    async def test_unknown_key_is_its_own_error(self) -> None:
        """A row under a key no ring here holds: UnknownKeyError naming it, not IntegrityError."""
        stranger = MasterKey(os.urandom(32))
        message = NewMessage(SealedBytes(stranger, new_id(), b"x"), "mail", "a@b")
        await self.store.commit([message], now=T0)
        with self.assertRaises(UnknownKeyError) as raised:
            await self.store.read_all(message.content.message_id)
        self.assertIn(stranger.key_id, str(raised.exception))

    async def letter(self) -> str:
        env = NewEnvelope(
            "bob@p.example", "bob@p.example.s", "registered", NUMBER, hash_token(new_id())
        )
        message = NewMessage(
            SealedBytes(self.master, new_id(), b"x"), "mail", "a@b", envelopes=[env]
        )
        await self.store.commit([message], now=T0)
        return env.id

    async def test_sms_text_and_pin_across_rotation(self) -> None:
        """An SMS queued and a PIN made before a rotation still open and verify after it."""
        sms = SmsStore(self.db, DerivedKeys(self.master, "sms-outbox"))
        portal = PortalStore(self.db, DerivedKeys(self.master, "portal-codes"))
        envelope_id = await self.letter()
        pins: list[str] = []

        def text_for(pin: str) -> str:
            pins.append(pin)
            return f"PIN {pin}"

        self.assertEqual(
            await portal.new_pin(envelope_id, NUMBER, text_for, sms.sealer, T0), PinOrder.SENT
        )
        self.master.replace([self.new, self.old])
        [item] = await sms.claim("a", T0, 300, 10)
        self.assertEqual(
            sms.sealer.open(item.message_id, item.number, item.sealed), f"PIN {pins[0]}"
        )
        usage = await self.keys.usage(T0)
        self.assertEqual(usage[key_id_of(self.old)].rows["SMS texts"], 1)
        self.assertEqual(usage[key_id_of(self.old)].rows["portal codes and PINs"], 1)
        self.assertEqual(await portal.check_pin(envelope_id, pins[0], T0 + 5, None), PinState.OK)
        # New ones use the new key, and still verify.
        self.assertEqual(
            await portal.new_pin(envelope_id, NUMBER, text_for, sms.sealer, T0 + 100),
            PinOrder.SENT,
        )
        usage = await self.keys.usage(T0 + 100)
        self.assertEqual(usage[key_id_of(self.new)].rows["SMS texts"], 1)
        self.assertEqual(await portal.check_pin(envelope_id, pins[1], T0 + 105, None), PinState.OK)

    async def test_codes_across_rotation(self) -> None:
        """E-mail codes (portal and D-Compose) made before a rotation still verify after it."""
        portal = PortalStore(self.db, DerivedKeys(self.master, "portal-codes"))
        compose = ComposeStore(self.db, DerivedKeys(self.master, "compose-codes"))
        envelope_id = await self.letter()
        code = await portal.new_code(envelope_id, T0)
        outsider = await compose.new_code("eve@outside.example", T0)
        assert code is not None and outsider is not None
        self.master.replace([self.new, self.old])
        self.assertEqual(await portal.check_code(envelope_id, code, T0 + 5), CodeState.OK)
        self.assertEqual(
            await compose.check_code("eve@outside.example", outsider, T0 + 5), CodeState.OK
        )

    async def test_retire_only_when_unused(self) -> None:
        """A retired key goes only when no row uses it and no node seals with it."""
        old_id = key_id_of(self.old)
        await self.commit(2)
        sms = SmsStore(self.db, DerivedKeys(self.master, "sms-outbox"))
        portal = PortalStore(self.db, DerivedKeys(self.master, "portal-codes"))
        envelope_id = await self.letter()
        await portal.new_pin(envelope_id, NUMBER, lambda pin: pin, sms.sealer, T0)
        self.rotate()
        rotation = self.rotation()
        await rotation.run_once()

        async def problems(now: int) -> list[str]:
            return retire_problems(old_id, await self.keys.usage(now), await self.keys.nodes(), now)

        # Messages re-wrapped; the SMS and the PIN still use the old key until they expire.
        [problem] = await problems(T0)
        self.assertIn("1 SMS texts", problem)
        self.assertIn("1 portal codes and PINs", problem)
        self.assertEqual(await problems(T0 + 601), [])
        # A node still sealing with it holds it back.
        await self.keys.announce(NodeKeys("b", (old_id,), old_id, T0 + 601))
        [problem] = await problems(T0 + 601)
        self.assertIn("node b still seals", problem)
