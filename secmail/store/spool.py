"""
A message on its way in: plaintext is sealed chunk by chunk as it arrives.

Only the current chunk (at most L{CHUNK_SIZE} bytes) is held in memory; full
chunks are sealed on a worker thread and appended, already encrypted, to a
spool file under the data directory. The last chunk is sealed inside the commit
transaction, which then moves every sealed chunk into the database. Plaintext
never reaches the disk.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet.defer import Deferred, succeed

from secmail.crypto import CHUNK_SIZE, MasterKey, Sealer

RunInThread = Callable[..., Deferred[Any]]

_LENGTH = struct.Struct(">I")


class SpooledMessage:
    """
    Collects one message's plaintext and seals it.

    @param run_in_thread: C{deferToThread}-like; sealing and file writes run there.
    """

    def __init__(
        self, master: MasterKey, message_id: str, spool_dir: str, run_in_thread: RunInThread
    ) -> None:
        self.message_id = message_id
        self.size = 0
        self._sealer = Sealer(master, message_id)
        self.key_id = self._sealer.key_id
        self.wrapped_key = self._sealer.wrapped_key
        self._path = os.path.join(spool_dir, message_id)
        self._run_in_thread = run_in_thread
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._sealed = 0  # chunks sealed into the spool file
        self._work: Deferred[Any] = succeed(None)
        self._error: BaseException | None = None

    def write(self, data: bytes) -> None:
        self.size += len(data)
        self._buffer.append(data)
        self._buffered += len(data)
        # Seal only when more than a chunk is waiting, so the tail is never empty
        # unless the whole message is: the final chunk is sealed at commit.
        while self._buffered > CHUNK_SIZE:
            joined = b"".join(self._buffer)
            chunk, rest = joined[:CHUNK_SIZE], joined[CHUNK_SIZE:]
            self._buffer, self._buffered = [rest], len(rest)
            seq = self._sealed
            self._sealed += 1
            self._work.addCallback(self._seal_later, seq, chunk)
            self._work.addErrback(self._remember)

    def _seal_later(self, _: object, seq: int, chunk: bytes) -> Deferred[Any]:
        return self._run_in_thread(self._append, seq, chunk)

    def _remember(self, failure: Any) -> None:
        self._error = failure.value

    def _append(self, seq: int, chunk: bytes) -> None:
        sealed = self._sealer.seal(seq, chunk, final=False)
        with open(self._path, "ab") as f:
            f.write(_LENGTH.pack(len(sealed)) + sealed)

    async def finished(self) -> None:
        """Wait until every full chunk is sealed; raise if sealing failed."""
        await self._work
        if self._error is not None:
            raise self._error

    @property
    def chunk_count(self) -> int:
        return self._sealed + 1

    def sealed_chunks(self) -> Iterator[bytes]:
        """On the database thread: every sealed chunk in order, the last one sealed now."""
        if self._sealed:
            with open(self._path, "rb") as f:
                for _ in range(self._sealed):
                    (length,) = _LENGTH.unpack(f.read(_LENGTH.size))
                    yield f.read(length)
        yield self._sealer.seal(self._sealed, b"".join(self._buffer), final=True)

    def small_plaintext(self) -> bytes | None:
        """The whole plaintext, when the message fits in one chunk (nothing sealed yet)."""
        return None if self._sealed else b"".join(self._buffer)

    def discard(self) -> None:
        self._buffer = []
        if self._sealed:
            self._work.addBoth(lambda _: self._run_in_thread(_remove, self._path))


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


class SealedBytes:
    """A small message made by the gateway itself (a notification, a bounce): sealed at commit."""

    def __init__(self, master: MasterKey, message_id: str, content: bytes) -> None:
        self.message_id = message_id
        self.size = len(content)
        self._sealer = Sealer(master, message_id)
        self.key_id = self._sealer.key_id
        self.wrapped_key = self._sealer.wrapped_key
        self._content = content

    @property
    def chunk_count(self) -> int:
        return max(1, -(-self.size // CHUNK_SIZE))

    def sealed_chunks(self) -> Iterator[bytes]:
        count = self.chunk_count
        for seq in range(count):
            piece = self._content[seq * CHUNK_SIZE : (seq + 1) * CHUNK_SIZE]
            yield self._sealer.seal(seq, piece, final=seq == count - 1)

    def small_plaintext(self) -> bytes | None:
        return self._content if self.size <= CHUNK_SIZE else None

    def discard(self) -> None:
        self._content = b""


def clean_spool(spool_dir: str) -> int:
    """Remove what a crash left in the spool (never acknowledged); returns how many files."""
    os.makedirs(spool_dir, mode=0o700, exist_ok=True)
    removed = 0
    for name in os.listdir(spool_dir):
        os.remove(os.path.join(spool_dir, name))
        removed += 1
    return removed
