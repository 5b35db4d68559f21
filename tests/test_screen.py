"""terminal_proxy/screen.py: the screen model of shared terminals.

Table tests pin what the model shows after given output; the key property: for output S,
feeding snapshot() of a model fed S into a fresh model gives the same screen, cursor and modes
(hypothesis-generated streams, and streams recorded from real vi and top, tests/data/screen/).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from terminal_proxy.screen import Cell, ScreenModel

DATA = Path(__file__).parent / "data" / "screen"
RECORDED = sorted(DATA.glob("*.bin"))


def fed(data: bytes, cols: int = 20, rows: int = 5) -> ScreenModel:
    model = ScreenModel(cols, rows)
    model.feed(data)
    return model


def replayed(model: ScreenModel) -> ScreenModel:
    fresh = ScreenModel(model.cols, model.rows)
    fresh.feed(model.snapshot().encode())
    return fresh


def cell(model: ScreenModel, x: int, y: int) -> Cell:
    return model._cells(model._s.buffer)[y][x]


@pytest.mark.parametrize(
    ("data", "lines", "cursor"),
    [
        (b"hello", ["hello     ", "          "], (5, 0, True)),
        (b"hello\r\nworld", ["hello     ", "world     "], (5, 1, True)),
        # the 10th character leaves the cursor pending in the last column; the 11th wraps
        (b"0123456789", ["0123456789", "          "], (10, 0, True)),
        (b"0123456789a", ["0123456789", "a         "], (1, 1, True)),
        (b"a\r\nb\r\nc", ["b         ", "c         "], (1, 1, True)),  # scrolled
        (b"\xe4\xb8\xad\xe6\x96\x87!", ["中文!     ", "          "], (5, 0, True)),
        (b"123456789\xe4\xb8\xad", ["123456789 ", "中        "], (2, 1, True)),  # wide wraps whole
        (b"e\xcc\x81", ["é         ", "          "], (1, 0, True)),  # combining mark
        (b"abc\x1b[2Dx\x1b[Ky", ["axy       ", "          "], (3, 0, True)),
        (b"\x1b[2;4Hz\x1b[?25l", ["          ", "   z      "], (4, 1, False)),
        (b"abcdef\x1b[1;3H\x1b[2P", ["abef      ", "          "], (2, 0, True)),
        (b"abc\x1b[1;2H\x1b[4hX", ["aXbc      ", "          "], (2, 0, True)),
        (b"ab\x1b[3b", ["abbbb     ", "          "], (5, 0, True)),  # REP (ncurses)
        (b"\x1b[>4;2mplain\x1b[!pX", ["plainX    ", "          "], (6, 0, True)),
        (b"\x1b(0lqk\x1b(Bq", ["┌─┐q      ", "          "], (4, 0, True)),
    ],
)
def test_plain_text_wraps_and_edits(data, lines, cursor):
    model = fed(data, cols=10, rows=2)
    assert model.display() == lines
    assert model.cursor == cursor
    assert replayed(model).state() == model.state()


def test_utf8_split_across_feeds():
    data = "é中😀 ok".encode()
    whole = fed(data)
    for split in range(1, len(data)):
        model = ScreenModel(20, 5)
        model.feed(data[:split])
        model.feed(data[split:])
        assert model.state() == whole.state(), split


def test_escape_sequence_split_across_feeds():
    data = b"a\x1b[1;38;2;10;20;30mb\x1b]0;title\x07c\x1b[?1049hd"
    whole = fed(data)
    one_by_one = ScreenModel(20, 5)
    for i in range(len(data)):
        one_by_one.feed(data[i : i + 1])
    assert one_by_one.state() == whole.state()
    assert whole.display()[0].startswith("   d")  # the cursor carries into the alternate screen


@pytest.mark.parametrize(
    ("sgr", "expected"),
    [
        (b"\x1b[1;4;31;42m", {"bold": True, "underscore": True, "fg": "1", "bg": "2"}),
        (
            b"\x1b[2;3;5;7;8;9m",
            {
                "dim": True,
                "italics": True,
                "blink": True,
                "reverse": True,
                "hidden": True,
                "strikethrough": True,
            },
        ),
        (b"\x1b[91;104m", {"fg": "9", "bg": "12"}),
        (b"\x1b[38;5;130;48;5;17m", {"fg": "130", "bg": "17"}),
        (b"\x1b[38;2;1;2;3;48;2;250;128;0m", {"fg": "#010203", "bg": "#fa8000"}),
        (b"\x1b[38:2::1:2:3m", {"fg": "#010203"}),
        (b"\x1b[38:5:200m", {"fg": "200"}),
        (b"\x1b[1;31m\x1b[22;39m", {"bold": False, "fg": "default"}),
        (b"\x1b[1;31m\x1b[m", {"bold": False, "fg": "default"}),
    ],
)
def test_colours_and_attributes(sgr, expected):
    model = fed(sgr + b"X")
    x = cell(model, 0, 0)
    assert x.data == "X"
    for name, value in expected.items():
        assert getattr(x, name) == value, name
    assert cell(replayed(model), 0, 0) == x


def test_erase_takes_the_background_only():
    model = fed(b"\x1b[1;4;44mab\x1b[K")
    assert cell(model, 5, 0) == Cell(" ", bg="4")
    assert replayed(model).state() == model.state()


def test_alternate_screen_restores_the_main_screen_and_cursor():
    model = fed(b"main text\r\nline 2\x1b[1;3H")
    model.feed(b"\x1b[?1049h\x1b[H\x1b[2Jfull screen\x1b[3;5H")
    assert model.alternate
    assert model.display()[0].startswith("full screen")
    copy = replayed(model)
    assert copy.state() == model.state()
    for m in (model, copy):
        m.feed(b"\x1b[?1049l")
        assert not m.alternate
        assert m.display()[:2] == ["main text           ", "line 2              "]
        assert m.cursor == (2, 0, True)


@pytest.mark.parametrize("mode", [47, 1047])
def test_alternate_screen_47_and_1047(mode):
    model = fed(b"keep\x1b[?%dhalt" % mode)
    assert model.mode(mode)
    assert replayed(model).state() == model.state()
    model.feed(b"\x1b[?%dl" % mode)
    assert model.display()[0].startswith("keep")


@pytest.mark.parametrize(
    ("data", "mode"),
    [
        (b"\x1b[?1h", 1),  # application cursor keys
        (b"\x1b=", 66),  # application keypad
        (b"\x1b[?2004h", 2004),  # bracketed paste
        (b"\x1b[?1000h\x1b[?1006h", 1006),
        (b"\x1b[?1002h", 1002),
        (b"\x1b[?1004h", 1004),
    ],
)
def test_modes_survive_the_snapshot(data, mode):
    model = fed(data)
    assert model.mode(mode)
    copy = replayed(model)
    assert copy.mode(mode)
    assert copy.state() == model.state()
    off = fed(data + b"\x1b[?%dl" % mode + b"\x1b>")
    assert not off.mode(mode)


def test_autowrap_off_and_pending_wrap():
    model = fed(b"\x1b[?7l0123456789abcdefghijXYZ")
    assert model.display()[0] == "0123456789abcdefghiZ"
    assert not model.mode(7)
    assert replayed(model).state() == model.state()
    pending = fed(b"0123456789abcdefghij")
    assert pending.cursor == (20, 0, True)
    copy = replayed(pending)
    assert copy.state() == pending.state()
    copy.feed(b"k")
    assert copy.display()[1].startswith("k")


def test_scroll_region():
    model = fed(b"\x1b[H1\r\n2\r\n3\r\n4\r\n5\x1b[2;4r\x1b[4;1Hx\r\ny\x1b[S", rows=5)
    assert model.display() == [
        "1" + " " * 19,
        "x" + " " * 19,
        "y" + " " * 19,
        " " * 20,
        "5" + " " * 19,
    ]
    copy = replayed(model)
    assert copy.state() == model.state()
    for m in (model, copy):  # the region is still in force after the snapshot
        m.feed(b"\x1b[4;1H\n\n")
    assert copy.state() == model.state()


def test_origin_mode_and_saved_cursor():
    model = fed(b"\x1b[2;4r\x1b[?6h\x1b[2;3H\x1b[1;33m\x1b7\x1b[mab\x1b[?2004h")
    copy = replayed(model)
    assert copy.state() == model.state()
    for m in (model, copy):
        m.feed(b"\x1b8c")
    assert copy.state() == model.state()


def test_resize():
    model = fed(b"1\r\n2\r\n3\r\n4\r\n5abcdefghij", rows=5)
    model.resize(8, 3)
    assert (model.cols, model.rows) == (8, 3)
    assert model.display() == ["3       ", "4       ", "5abcdefg"]
    assert model.cursor[1] == 2
    assert replayed(model).state() == model.state()
    model.resize(30, 6)
    assert model.display()[2] == "5abcdefg" + " " * 22
    assert replayed(model).state() == model.state()
    with pytest.raises(ValueError, match="at least one"):
        model.resize(0, 5)


def test_resize_in_the_alternate_screen():
    model = fed(b"main\x1b[?1049h\x1b[Halt")
    model.resize(10, 3)
    assert replayed(model).state() == model.state()
    model.feed(b"\x1b[?1049l")
    assert model.display()[0] == "main      "


def test_full_reset():
    model = fed(b"\x1b[?1049h\x1b[?1h\x1b[31mx\x1bcy")
    assert not model.alternate
    assert not model.mode(1)
    assert model.display()[0].startswith("y")
    assert cell(model, 0, 0) == Cell("y")


@pytest.mark.parametrize("path", RECORDED, ids=[p.stem for p in RECORDED])
def test_recorded_programs(path):
    """Output of real vi and top (captured in an 80x24 pty): the snapshot reproduces it."""
    data = path.read_bytes()
    model = fed(data, cols=80, rows=24)
    assert model.alternate if "vi" in path.stem else True
    assert any(line.strip() for line in model.display())
    assert replayed(model).state() == model.state()
    # fed in odd-sized pieces: the same screen
    pieces = ScreenModel(80, 24)
    for i in range(0, len(data), 7):
        pieces.feed(data[i : i + 7])
    assert pieces.state() == model.state()
    # and a snapshot taken at every few hundred bytes reproduces that moment
    partial = ScreenModel(80, 24)
    for i in range(0, len(data), 509):
        partial.feed(data[i : i + 509])
        assert replayed(partial).state() == partial.state(), i


def test_recorded_vi_shows_the_edit():
    model = fed((DATA / "vi-80x24.bin").read_bytes(), cols=80, rows=24)
    lines = model.display()
    assert lines[22].startswith(" 48         raise asyncio.CancelledError$")  # :set list, G
    assert model.cursor == (12, 22, True)
    assert model.mode(1) and model.mode(2004)
    model.feed(b"\x1b[?1049l")
    assert not model.alternate


# -- the property --------------------------------------------------------------------

_TOKENS = [
    b"a", b"hello ", b"\xc3\xa9", b"\xe4\xb8\xad", b"\xf0\x9f\x98\x80", b"e\xcc\x81", b"\t",
    b"\r", b"\n", b"\x08", b"\x07", b"\x1b[H", b"\x1b[2J", b"\x1b[J", b"\x1b[1J", b"\x1b[K",
    b"\x1b[1K", b"\x1b[2K", b"\x1b[3;5H", b"\x1b[5;20H", b"\x1b[2A", b"\x1b[3B", b"\x1b[4C",
    b"\x1b[2D", b"\x1b[10G", b"\x1b[2d", b"\x1b[2L", b"\x1b[M", b"\x1b[3@", b"\x1b[2P",
    b"\x1b[3X", b"\x1b[2S", b"\x1b[T", b"\x1b[2;4r", b"\x1b[r", b"\x1b[1;31m", b"\x1b[0m",
    b"\x1b[m", b"\x1b[4;7m", b"\x1b[38;5;130m", b"\x1b[48;2;1;2;3m", b"\x1b[92m", b"\x1b[2;8m",
    b"\x1b[22;24;27m", b"\x1b[?1049h", b"\x1b[?1049l", b"\x1b[?47h", b"\x1b[?47l",
    b"\x1b[?1047h", b"\x1b[?1047l", b"\x1b[?1h", b"\x1b[?1l", b"\x1b=", b"\x1b>",
    b"\x1b[?2004h", b"\x1b[?2004l", b"\x1b[?25l", b"\x1b[?25h", b"\x1b[?7l", b"\x1b[?7h",
    b"\x1b[?1000h", b"\x1b[?1006h", b"\x1b[?1000l", b"\x1b[4h", b"\x1b[4l", b"\x1b7",
    b"\x1b8", b"\x1b[s", b"\x1b[u", b"\x1bM", b"\x1bD", b"\x1bE", b"\x1bH", b"\x1b[3g",
    b"\x1b(0", b"\x1b(B", b"lqk", b"\x1b[?6h", b"\x1b[?6l", b"\x1b[3b", b"\x1b]0;t\x07",
    b"\x1b[>4;2m", b"\x1b[ q", b"\x1b[!p", b"\x1bc", b"\x1b[6n",
]  # fmt: skip


@st.composite
def streams(draw: st.DrawFn) -> tuple[int, int, bytes, list[int]]:
    cols = draw(st.integers(1, 24))
    rows = draw(st.integers(1, 8))
    tokens = draw(st.lists(st.sampled_from(_TOKENS), max_size=60))
    data = b"".join(tokens)
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=4))
    return cols, rows, data, sorted(cuts)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.one_of(st.none(), st.tuples(st.integers(1, 24), st.integers(1, 8))))
def test_snapshot_reproduces_the_screen(stream, resize):
    cols, rows, data, cuts = stream
    model = ScreenModel(cols, rows)
    start = 0
    for cut in [*cuts, len(data)]:
        model.feed(data[start:cut])
        start = cut
    if resize is not None:
        model.resize(*resize)
    assert replayed(model).state() == model.state()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 30), st.integers(1, 8))
def test_snapshot_of_arbitrary_bytes(data, cols, rows):
    model = fed(data, cols=cols, rows=rows)
    assert replayed(model).state() == model.state()


def test_size_is_checked():
    with pytest.raises(ValueError, match="at least one"):
        ScreenModel(0, 24)
