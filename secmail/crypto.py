"""
Encryption at rest: a fresh AES-256-GCM key per message, wrapped by the master key.

The master key is a ring (L{MasterKey}): rotation adds a new key that seals from then on,
the older ones still open what they wrapped (each row stores its C{key_id}), and the running
gateway re-wraps message keys under the new one (secmail/rotation.py).

A message is sealed in chunks of L{CHUNK_SIZE} plaintext bytes (the STREAM
construction): chunk C{i} uses the nonce C{i} (11 bytes) followed by a flag byte
that is 1 only on the last chunk, and every chunk authenticates the message id.
Chunks cannot be swapped between messages, reordered, dropped or truncated
without decryption failing, and memory stays at one chunk however large the
message is.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import BinaryIO

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

CHUNK_SIZE = 64 * 1024
KEY_SIZE = 32


class MasterKeyError(Exception):
    """The master key is missing, unreadable or wrong; the message names the file."""


class UnknownKeyError(MasterKeyError):
    """
    A row was sealed under a master key that is not in this node's key ring.

    Not tampering (that is L{IntegrityError}): the row is probably fine and another node,
    or an older copy of the ring, has its key. C{key_id} names the key.
    """

    def __init__(self, key_id: str, what: str) -> None:
        self.key_id = key_id
        super().__init__(
            f"{what} is sealed under master key {key_id}, which is not in this node's key "
            "ring; copy the key ring file from the node that has it (secmail keys status "
            "lists the keys each node holds)"
        )


class IntegrityError(Exception):
    """A stored chunk failed authentication: it was altered, swapped or truncated."""


def key_id_of(key: bytes) -> str:
    return hashlib.sha256(b"secmail-key-id" + key).hexdigest()[:16]


class MasterKey:
    """
    The master key ring: the keys that wrap message keys, kept in a file outside the database.

    The sealing key wraps every new message key; every key of the ring, current or retired,
    opens what it wrapped, found by the key id stored beside the row. C{MasterKey(key)} is a
    ring of one key. Rotation (C{secmail keys rotate}) puts a new key first in the ring file;
    L{replace} swaps the keys in place so that every holder of the ring sees them at once.
    """

    def __init__(self, key: bytes, *retired: bytes) -> None:
        self.path: str | None = None
        # Changed on the reactor thread (rotation) and the database thread (reload on an
        # unknown key id): changes are serialised; readers take the state in one read.
        self._lock = threading.Lock()
        self._state: tuple[dict[str, bytes], str] = ({}, "")
        self.replace([key, *retired])

    def replace(self, keys: Sequence[bytes], sealing: str | None = None) -> None:
        """New keys, newest first; seal with C{sealing} (default: the newest)."""
        ring = {key_id_of(k): k for k in keys}
        if not ring:
            raise MasterKeyError("a key ring needs at least one key")
        with self._lock:
            if sealing not in ring:
                sealing = next(iter(ring))
            # One assignment: a reader on another thread sees the old ring or the new one.
            self._state = (ring, sealing)

    def snapshot(self) -> tuple[dict[str, bytes], str]:
        """The keys by id (newest first) and the sealing key's id, as one consistent pair."""
        return self._state

    def reload(self, keys: Sequence[bytes] | None = None) -> None:
        """
        Take the keys of the ring file (read again unless given): it may hold a key another
        node sealed with. Keys retired from the file stay known until a restart, behind the
        others: a message that was being received when its key left the ring still opens,
        and is re-wrapped. The sealing key stays until the rotation service changes it.
        """
        if keys is None:
            if self.path is None:
                return
            keys = read_ring_file(self.path)
        fresh = {key_id_of(k): k for k in keys}
        with self._lock:
            ring, sealing = self._state
            merged = {**fresh, **{i: k for i, k in ring.items() if i not in fresh}}
            self._state = (merged, sealing if sealing in merged else next(iter(merged)))

    def seal_with(self, key_id: str) -> None:
        """Seal with another key of the ring (one that every node of the cluster holds)."""
        with self._lock:
            ring, _ = self._state
            if key_id not in ring:
                raise UnknownKeyError(key_id, "the sealing key")
            self._state = (ring, key_id)

    @property
    def key(self) -> bytes:
        """The sealing key."""
        ring, sealing = self._state
        return ring[sealing]

    @property
    def key_id(self) -> str:
        return self._state[1]

    @property
    def key_ids(self) -> list[str]:
        """Every key id of the ring, newest first."""
        return list(self._state[0])

    def get(self, key_id: str) -> bytes | None:
        return self._state[0].get(key_id)

    def wrap(self, message_key: bytes, message_id: str) -> bytes:
        return self.wrap_with_id(message_key, message_id)[1]

    def wrap_with_id(self, message_key: bytes, message_id: str) -> tuple[str, bytes]:
        """Wrap with the sealing key; returns its id too (read together: rotation may swap it)."""
        ring, sealing = self._state
        nonce = os.urandom(12)
        return sealing, nonce + AESGCM(ring[sealing]).encrypt(
            nonce, message_key, _wrap_aad(message_id)
        )

    def unwrap(self, wrapped: bytes, message_id: str, key_id: str | None = None) -> bytes:
        """The message key; C{key_id} says which key wrapped it (default: the sealing key)."""
        ring, sealing = self._state
        key = ring.get(key_id if key_id is not None else sealing)
        if key is None:
            raise UnknownKeyError(str(key_id), f"message {message_id}")
        try:
            return AESGCM(key).decrypt(wrapped[:12], wrapped[12:], _wrap_aad(message_id))
        except Exception:
            raise IntegrityError(f"message {message_id}: its key does not unwrap") from None


def _wrap_aad(message_id: str) -> bytes:
    return b"secmail-message-key:" + message_id.encode()


RING_HEADER = (
    "# secmail master key ring. The first key seals; every key opens what it sealed.\n"
    "# Written by secmail keys generate/rotate/retire; keep it identical on every node.\n"
)


def format_ring(keys: Sequence[bytes]) -> str:
    lines = [RING_HEADER]
    for n, key in enumerate(keys):
        role = "current" if n == 0 else "retired"
        lines.append(f"# {role} key {key_id_of(key)}\n{base64.b64encode(key).decode()}\n")
    return "".join(lines)


@contextmanager
def _private_file(path: str, owner_of: str | None) -> Iterator[BinaryIO]:
    """
    A new file at C{path}, mode 0600 from its first byte, owned like C{owner_of} when given
    (a leftover file at C{path} is then removed, never reused with its old mode; without
    C{owner_of} an existing file is an error, never overwritten), so that a ring written by
    root for a gateway running as its own user stays readable by that user. Written,
    flushed and fsynced when the block ends.
    """
    if owner_of is not None:
        with suppress(FileNotFoundError):
            os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, 0o600)
        if owner_of is not None:
            old = os.stat(owner_of)
            if (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
                os.fchown(fd, old.st_uid, old.st_gid)
        yield f
        f.flush()
        os.fsync(f.fileno())


def write_ring_file(path: str, keys: Sequence[bytes], *, replace: bool) -> None:
    """
    Write the ring to C{path} (mode 0600) durably: a new file, fsynced, renamed over the
    old one (C{replace}) or refusing to overwrite one, then the directory fsynced.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    target = path + ".new" if replace else path
    with _private_file(target, owner_of=path if replace else None) as f:
        f.write(format_ring(keys).encode("ascii"))
    if replace:
        os.replace(target, path)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def generate_key_file(path: str) -> MasterKey:
    """Write a new master key to C{path} (mode 0600), refusing to overwrite one."""
    key = os.urandom(KEY_SIZE)
    write_ring_file(path, [key], replace=False)
    master = MasterKey(key)
    master.path = path
    return master


def read_ring_file(path: str) -> list[bytes]:
    """The keys of a ring file, newest first (a file of one base64 line is a ring of one)."""
    try:
        with open(path, encoding="ascii") as f:
            text = f.read()
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise MasterKeyError(f"{path}: master key file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MasterKeyError(f"{path}: cannot read the master key file: {e}") from None
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            key = base64.b64decode(line, validate=True)
        except ValueError:
            key = b""
        if len(key) != KEY_SIZE:
            raise MasterKeyError(
                f"{path}: line {number} is not a master key (expected {KEY_SIZE} bytes in base64)"
            )
        keys.append(key)
    if not keys:
        raise MasterKeyError(f"{path}: not a master key (expected {KEY_SIZE} bytes in base64)")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise MasterKeyError(f"{path}: master key file is readable by others; chmod 600 it")
    return keys


def load_key_file(path: str) -> MasterKey:
    master = MasterKey(*read_ring_file(path))
    master.path = path
    return master


def rotate_key_file(path: str) -> tuple[MasterKey, str]:
    """
    Put a new key first in the ring file; the old keys stay as retired ones. The old file
    is kept as C{PATH.prev} (returned). Returns the new ring.
    """
    keys = read_ring_file(path)
    previous = path + ".prev"
    with open(path, "rb") as old:
        content = old.read()
    with _private_file(previous, owner_of=path) as f:
        f.write(content)
    new = [os.urandom(KEY_SIZE), *keys]
    write_ring_file(path, new, replace=True)
    master = MasterKey(*new)
    master.path = path
    return master, previous


def remove_from_key_file(path: str, key_id: str) -> MasterKey:
    """Write the ring without key C{key_id} (never the newest)."""
    keys = read_ring_file(path)
    if key_id not in {key_id_of(k) for k in keys}:
        raise MasterKeyError(f"{path}: no key {key_id} in the ring (see: secmail keys status)")
    if key_id_of(keys[0]) == key_id:
        raise MasterKeyError(f"{path}: key {key_id} is the current key; rotate first")
    rest = [k for k in keys if key_id_of(k) != key_id]
    write_ring_file(path, rest, replace=True)
    master = MasterKey(*rest)
    master.path = path
    return master


class DerivedKeys:
    """
    The keys for one purpose (SMS texts, code HMACs) derived from every key of a ring:
    new rows use the one from the sealing key, old rows still check with the others.
    Derived when asked, so a rotation of the ring shows at once.

    @param purpose: None when the ring's keys are used as they are (tests, one raw key).
    """

    def __init__(self, master: MasterKey, purpose: str | None) -> None:
        self.master = master
        self.purpose = purpose

    def _derive(self, key: bytes) -> bytes:
        if self.purpose is None:
            return key
        return _hkdf(key, self.purpose)

    def current(self) -> tuple[str, bytes]:
        ring, sealing = self.master.snapshot()
        return sealing, self._derive(ring[sealing])

    def all(self) -> list[tuple[str, bytes]]:
        """Every key, the sealing one first."""
        ring, sealing = self.master.snapshot()
        ids = [sealing, *(key_id for key_id in ring if key_id != sealing)]
        return [(key_id, self._derive(ring[key_id])) for key_id in ids]


def purpose_keys(key: bytes | DerivedKeys) -> DerivedKeys:
    """A store's key: derived keys from the gateway's ring, or one raw key (tests, the CLI)."""
    return key if isinstance(key, DerivedKeys) else DerivedKeys(MasterKey(key), None)


def _nonce(seq: int, final: bool) -> bytes:
    return seq.to_bytes(11, "big") + (b"\x01" if final else b"\x00")


def _chunk_aad(message_id: str) -> bytes:
    return b"secmail-message:" + message_id.encode()


class Sealer:
    """Seals one message's chunks in order with its own fresh key."""

    def __init__(self, master: MasterKey, message_id: str) -> None:
        self.message_id = message_id
        self._key = os.urandom(KEY_SIZE)
        self._aead = AESGCM(self._key)
        self.key_id, self.wrapped_key = master.wrap_with_id(self._key, message_id)

    def seal(self, seq: int, plaintext: bytes, final: bool) -> bytes:
        return self._aead.encrypt(_nonce(seq, final), plaintext, _chunk_aad(self.message_id))


class Opener:
    """Opens one message's chunks; the caller passes C{final} for the last one."""

    def __init__(
        self, master: MasterKey, message_id: str, wrapped_key: bytes, key_id: str | None = None
    ) -> None:
        self.message_id = message_id
        self._aead = AESGCM(master.unwrap(wrapped_key, message_id, key_id))

    def open(self, seq: int, ciphertext: bytes, final: bool) -> bytes:
        try:
            return self._aead.decrypt(_nonce(seq, final), ciphertext, _chunk_aad(self.message_id))
        except Exception:
            raise IntegrityError(
                f"message {self.message_id}: chunk {seq} fails to decrypt"
            ) from None


def derive_key(master: MasterKey, purpose: str) -> bytes:
    """A key for one purpose (portal CSRF tokens) derived from the sealing master key."""
    return _hkdf(master.key, purpose)


def _hkdf(key: bytes, purpose: str) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"secmail:" + purpose.encode()
    ).derive(key)
