"""The output a resumable session keeps for replay, and the gateway-wide memory budget.

Pure bookkeeping, no I/O. A ``ReplayBuffer`` numbers every output byte the upstream
produced (offset 0 is the session's first byte) and keeps the most recent ones: at most
``limit`` bytes, fewer when the browser acknowledged them or when the gateway's
``ReplayBudget`` (``session.resume_memory_cap``) is spent. Chunks are kept as they came
(a deque of bytes objects), so appending and trimming never copy the whole buffer.

``since(offset)`` answers a resume: exactly the bytes after ``offset`` when they are all
kept; otherwise a *reset*: the kept bytes from the first safe boundary (see
``safe_boundary``), so the browser never gets half a UTF-8 character or the tail of an
escape sequence.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["Replay", "ReplayBudget", "ReplayBuffer", "safe_boundary"]

_ESC = 0x1B
_LF = 0x0A


class ReplayBudget:
    """Bytes held by every replay buffer of one gateway, against one cap (0: no cap)."""

    __slots__ = ("cap", "used")

    def __init__(self, cap: int = 0) -> None:
        self.cap = cap
        self.used = 0

    def excess(self) -> int:
        return self.used - self.cap if self.cap and self.used > self.cap else 0


@dataclass(frozen=True, slots=True)
class Replay:
    """What to send a resuming browser: ``data`` starts at output offset ``offset``;
    ``reset`` when that is later than the browser's own offset (bytes were lost)."""

    offset: int
    data: bytes
    reset: bool


class ReplayBuffer:
    """The last output bytes of one session, numbered by offset."""

    __slots__ = ("_budget", "_chunks", "_head", "_size", "end", "limit", "start")

    def __init__(self, limit: int, budget: ReplayBudget | None = None) -> None:
        self.limit = limit
        self._budget = budget if budget is not None else ReplayBudget()
        self._chunks: deque[bytes] = deque()
        # Bytes of the first chunk already dropped.
        self._head = 0
        # Bytes kept.
        self._size = 0
        # Offset of the first kept byte, and one past the last byte ever appended.
        self.start = 0
        self.end = 0

    def __len__(self) -> int:
        return self._size

    def append(self, data: bytes) -> None:
        """Record output bytes (the next ``len(data)`` offsets)."""
        if not data:
            return
        self._chunks.append(data)
        self._size += len(data)
        self.end += len(data)
        self._budget.used += len(data)
        over = max(self._size - self.limit, self._budget.excess())
        if over > 0:
            self._drop(min(over, self._size))

    def release(self, offset: int) -> None:
        """The browser has everything before ``offset``: keep nothing older."""
        if offset > self.start:
            self._drop(min(offset, self.end) - self.start)

    def clear(self) -> None:
        """Give every kept byte back to the budget (the session ended)."""
        self._drop(self._size)

    def since(self, offset: int) -> Replay:
        """The bytes from ``offset`` on (0 ≤ offset ≤ end), or a reset when some are lost."""
        if not 0 <= offset <= self.end:
            raise ValueError(f"offset {offset} is outside 0..{self.end}")
        if offset >= self.start:
            return Replay(offset, self._tail(offset - self.start), reset=False)
        kept = self._tail(0)
        cut = safe_boundary(kept)
        return Replay(self.start + cut, kept[cut:], reset=True)

    def _tail(self, skip: int) -> bytes:
        """Kept bytes after the first ``skip`` ones."""
        skip += self._head
        parts: list[bytes] = []
        for chunk in self._chunks:
            if skip >= len(chunk):
                skip -= len(chunk)
                continue
            parts.append(chunk[skip:] if skip else chunk)
            skip = 0
        return b"".join(parts)

    def _drop(self, count: int) -> None:
        if count <= 0:
            return
        self._size -= count
        self.start += count
        self._budget.used -= count
        chunks = self._chunks
        count += self._head
        while chunks and count >= len(chunks[0]):
            count -= len(chunks.popleft())
        self._head = count


def safe_boundary(data: bytes) -> int:
    """The first index of ``data`` where a fresh terminal can start reading.

    That is the first ESC (which starts a new sequence and cancels any unfinished one in
    every VT parser) or the first byte after a line feed, whichever comes first; when
    there is neither, the first byte that is not a UTF-8 continuation byte; ``len(data)``
    when there is none at all.
    """
    esc = data.find(_ESC)
    lf = data.find(_LF)
    candidates = [i for i in (esc, lf + 1 if lf >= 0 else -1) if i >= 0]
    if candidates:
        return min(candidates)
    for index, byte in enumerate(data):
        if byte & 0xC0 != 0x80:
            return index
    return len(data)
