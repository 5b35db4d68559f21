"""Property tests of the replay buffer (terminal_proxy/replay.py).

A simulated resumable session: the upstream's output is split into random frames, the
browser drops at random points (having received a random prefix of what was sent), and
every resume replays ``since(received)``. Whatever the splits and drops, the browser
ends with exactly the upstream's bytes, as long as the buffer held them; when it did not,
the answer is a reset at a safe boundary, never a silent gap.
"""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from terminal_proxy.replay import ReplayBudget, ReplayBuffer, safe_boundary


@st.composite
def sessions(draw: st.DrawFn) -> tuple[bytes, list[int], list[tuple[int, int]]]:
    """Output bytes, frame sizes, and drops as (after frame i, browser got n bytes of it)."""
    output = draw(st.binary(min_size=0, max_size=4000))
    sizes: list[int] = []
    left = len(output)
    while left:
        size = draw(st.integers(min_value=1, max_value=min(left, 300)))
        sizes.append(size)
        left -= size
    drops = draw(
        st.lists(
            st.tuples(st.integers(0, max(0, len(sizes) - 1)), st.integers(0, 300)),
            max_size=6,
        )
    )
    return output, sizes, drops


@settings(max_examples=300, deadline=None)
@given(sessions())
def test_random_splits_and_drops_give_the_exact_stream(
    case: tuple[bytes, list[int], list[tuple[int, int]]],
) -> None:
    output, sizes, drops = case
    buffer = ReplayBuffer(limit=len(output) + 1)  # big enough: no loss allowed
    received = bytearray()
    drop_at = dict(drops)
    position = 0
    attached = True
    for index, size in enumerate(sizes):
        frame = output[position : position + size]
        position += size
        buffer.append(frame)
        if attached:
            if index in drop_at:
                # The socket dies mid-frame: the browser got only part of what was sent.
                received.extend(frame[: max(0, size - drop_at[index])])
                attached = False
            else:
                received.extend(frame)
        elif index % 3 == 0:
            replay = buffer.since(len(received))
            assert not replay.reset and replay.offset == len(received)
            received.extend(replay.data)
            attached = True
    if not attached:
        replay = buffer.since(len(received))
        assert not replay.reset
        received.extend(replay.data)
    assert hashlib.sha256(received).digest() == hashlib.sha256(output).digest()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=60),
    st.integers(1, 2000),
    st.data(),
)
def test_overrun_is_a_reset_at_a_safe_boundary(
    frames: list[bytes], limit: int, data: st.DataObject
) -> None:
    """When the browser's offset is older than what is kept, the answer says reset and
    the bytes are exactly the kept tail from a safe boundary."""
    output = b"".join(frames)
    buffer = ReplayBuffer(limit=limit)
    for frame in frames:
        buffer.append(frame)
    assert len(buffer) == min(limit, len(output))
    assert buffer.start == len(output) - len(buffer)
    received = data.draw(st.integers(0, len(output)))
    replay = buffer.since(received)
    if received >= buffer.start:
        assert (replay.offset, replay.data, replay.reset) == (received, output[received:], False)
    else:
        assert replay.reset and replay.offset >= buffer.start
        assert replay.data == output[replay.offset :]
        kept = output[buffer.start :]
        assert replay.offset - buffer.start == safe_boundary(kept)


@given(st.binary(max_size=300))
def test_safe_boundary_is_a_line_start_an_escape_or_a_character_start(data: bytes) -> None:
    cut = safe_boundary(data)
    assert 0 <= cut <= len(data)
    if cut < len(data):
        assert data[cut] & 0xC0 != 0x80 or data[cut - 1 : cut] == b"\n"
        if b"\n" in data or b"\x1b" in data:
            assert data[cut - 1 : cut] == b"\n" or data[cut] == 0x1B
            assert b"\x1b" not in data[:cut] and b"\n" not in data[: max(0, cut - 1)]


def test_safe_boundary_never_splits_a_character() -> None:
    text = "é€😀".encode() * 3
    for start in range(len(text)):
        cut = safe_boundary(text[start:])
        assert text[start + cut :].decode() == text[start + cut :].decode("utf-8", "strict")


def test_acks_release_and_the_budget_caps_all_buffers() -> None:
    budget = ReplayBudget(cap=100)
    first, second = ReplayBuffer(80, budget), ReplayBuffer(80, budget)
    first.append(b"a" * 70)
    second.append(b"b" * 70)  # 140 > 100: the writer drops its oldest
    assert budget.used == 100 and len(first) == 70 and len(second) == 30
    first.release(50)
    assert budget.used == 50 and first.start == 50
    first.clear()
    second.clear()
    assert budget.used == 0
