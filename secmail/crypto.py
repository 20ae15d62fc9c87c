"""
Encryption at rest: a fresh AES-256-GCM key per message, wrapped by the master key.

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
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

CHUNK_SIZE = 64 * 1024
KEY_SIZE = 32


class MasterKeyError(Exception):
    """The master key is missing, unreadable or wrong; the message names the file."""


class IntegrityError(Exception):
    """A stored chunk failed authentication: it was altered, swapped or truncated."""


@dataclass(frozen=True)
class MasterKey:
    """The key that wraps every message key; kept in a file outside the database."""

    key: bytes

    @property
    def key_id(self) -> str:
        return hashlib.sha256(b"secmail-key-id" + self.key).hexdigest()[:16]

    def wrap(self, message_key: bytes, message_id: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + AESGCM(self.key).encrypt(nonce, message_key, _wrap_aad(message_id))

    def unwrap(self, wrapped: bytes, message_id: str) -> bytes:
        try:
            return AESGCM(self.key).decrypt(wrapped[:12], wrapped[12:], _wrap_aad(message_id))
        except Exception:
            raise IntegrityError(f"message {message_id}: its key does not unwrap") from None


def _wrap_aad(message_id: str) -> bytes:
    return b"secmail-message-key:" + message_id.encode()


def generate_key_file(path: str) -> MasterKey:
    """Write a new master key to C{path} (mode 0600), refusing to overwrite one."""
    key = os.urandom(KEY_SIZE)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(key).decode() + "\n")
        f.flush()
        os.fsync(f.fileno())
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return MasterKey(key)


def load_key_file(path: str) -> MasterKey:
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise MasterKeyError(f"{path}: master key file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MasterKeyError(f"{path}: cannot read the master key file: {e}") from None
    try:
        key = base64.b64decode(text, validate=True)
    except ValueError:
        key = b""
    if len(key) != KEY_SIZE:
        raise MasterKeyError(f"{path}: not a master key (expected {KEY_SIZE} bytes in base64)")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise MasterKeyError(f"{path}: master key file is readable by others; chmod 600 it")
    return MasterKey(key)


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
        self.key_id = master.key_id
        self.wrapped_key = master.wrap(self._key, message_id)

    def seal(self, seq: int, plaintext: bytes, final: bool) -> bytes:
        return self._aead.encrypt(_nonce(seq, final), plaintext, _chunk_aad(self.message_id))


class Opener:
    """Opens one message's chunks; the caller passes C{final} for the last one."""

    def __init__(self, master: MasterKey, message_id: str, wrapped_key: bytes) -> None:
        self.message_id = message_id
        self._aead = AESGCM(master.unwrap(wrapped_key, message_id))

    def open(self, seq: int, ciphertext: bytes, final: bool) -> bytes:
        try:
            return self._aead.decrypt(_nonce(seq, final), ciphertext, _chunk_aad(self.message_id))
        except Exception:
            raise IntegrityError(
                f"message {self.message_id}: chunk {seq} fails to decrypt"
            ) from None


def derive_key(master: MasterKey, purpose: str) -> bytes:
    """A key for one purpose (portal CSRF tokens, code hashes) derived from the master key."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"secmail:" + purpose.encode()
    ).derive(master.key)
