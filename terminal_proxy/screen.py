"""A terminal screen model for shared sessions: feed it output bytes, ask it for a snapshot.

The model exists only while a session is shared (docs/sharing.md). A joiner mid-session gets
`snapshot()`: ANSI text that, written into a freshly reset xterm.js of cols x rows, reproduces
what the owner sees (text, colours and attributes, cursor position and visibility, the alternate
screen with the main screen kept behind it, and the input-affecting modes), instead of a replay
of bytes that may start in the middle of an escape sequence.

Screen operations (cursor moves, erases, line and character insertion, scrolling, tab stops)
are pyte's (pyte.Screen). The byte parser, SGR, character drawing, modes, the alternate
screen, save/restore cursor and resize are ours: pyte's own parser is char-by-char and
misreads sequences current programs send (`CSI > 4;2 m` from vim becomes an SGR, `CSI ! p`
leaves a stray `p`, ESC ( 0 is ignored in UTF-8 mode), and pyte has no alternate screen.
Behaviour follows xterm.js where terminals differ (the alternate screen is cleared on every
entry, the saved cursor is one slot per screen, DECCOLM and DECSCNM are ignored).

Pure: no I/O, no tasks. Not thread-safe (one session's output pump feeds it).
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, cast

import pyte
from pyte import charsets as cs
from pyte import modes as mo
from pyte.screens import Margins, Savepoint
from wcwidth import wcwidth

from terminal_proxy.screen_cells import BLANK, Cell, apply_sgr, sgr

__all__ = ["Cell", "ScreenModel"]

# Private modes (xterm numbers) kept and reproduced by snapshot(), besides 6, 7 and 25.
_FLAG_MODES = (1, 66, 1000, 1002, 1003, 1004, 1005, 1006, 1015, 1016, 2004)
_ALT_MODES = (47, 1047, 1049)
# One token of output. Text is everything but C0/C1 controls; escape sequences are matched
# whole (an incomplete one at the end of a feed() waits for the next).
_TOKEN = re.compile(
    r"(?P<text>[^\x00-\x1f\x7f-\x9f]+)"
    r"|\x1b\[(?P<prefix>[<=>?]?)(?P<params>[0-9;:]*)(?P<inter>[ -/]*)(?P<final>[@-~])"
    r"|\x1b\](?P<osc>[^\x07\x1b]*)(?:\x07|\x1b\\)"
    r"|\x1b[P_^X][^\x1b]*\x1b\\"  # DCS, APC, PM, SOS strings: skipped
    r"|\x1b(?P<einter>[ -/]*)(?P<efinal>[0-OQ-WYZ\\`a-~])"  # not [ ] P X ^ _
    r"|(?P<ctl>[\x00-\x1a\x1c-\x1f\x7f-\x9f])",
)
_INCOMPLETE = re.compile(
    r"\x1b(?:\[[<=>?]?[0-9;:]*[ -/]*|\][^\x07\x1b]*\x1b?|[P_^X][^\x1b]*\x1b?|[ -/]*)?\Z"
)
# An escape sequence that never ends (a broken program) is dropped past this many characters.
_MAX_PENDING = 4096


@dataclass
class _Screen:
    """What one screen (main or alternate) keeps on its own."""

    buffer: Any
    margins: Margins | None = None
    saved: Savepoint | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class _CellCache(dict[str, Cell]):
    """The cells of one pen, by character."""

    def __init__(self, attrs: Cell) -> None:
        super().__init__()
        self.attrs = attrs

    def __missing__(self, char: str) -> Cell:
        cell = self[char] = self.attrs._replace(data=char)
        return cell


class _PyteScreen(pyte.Screen):
    @property
    def default_char(self) -> Cell:  # type: ignore[override]
        return BLANK


class ScreenModel:
    """The screen a terminal of cols x rows shows after the bytes fed so far."""

    def __init__(self, cols: int, rows: int) -> None:
        if cols < 1 or rows < 1:
            raise ValueError(f"a screen needs at least one column and row, not {cols}x{rows}")
        # pyte's annotations name its Char; our cells are Cells with two more fields.
        screen: Any = _PyteScreen(cols, rows)
        self._s = screen
        self._s.reset()
        self._s.cursor.attrs = BLANK
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._pending = ""
        self._flags: set[int] = set()
        self._keypad = False
        self._alt_mode = 0  # 0: main screen active; else the mode that entered the alternate one
        self._main: _Screen | None = None  # the main screen while the alternate one is shown
        self._saved: Savepoint | None = None  # the active screen's DECSC slot
        self._last = ""  # the last drawn character, for REP
        self._cell_cache = _CellCache(BLANK)  # the current pen's
        self._cell_caches: dict[Cell, _CellCache] = {}  # recent pens'

    # -- the seam ----------------------------------------------------------------------

    @property
    def cols(self) -> int:
        return int(self._s.columns)

    @property
    def rows(self) -> int:
        return int(self._s.lines)

    def feed(self, data: bytes) -> None:
        """Raw output bytes; a UTF-8 character or an escape sequence may be split across calls."""
        text = self._pending + self._decoder.decode(data)
        self._pending = ""
        pos, end = 0, len(text)
        match = _TOKEN.match
        while pos < end:
            m = match(text, pos)
            if m is None:  # an ESC that starts nothing we know, or an incomplete sequence
                if _INCOMPLETE.match(text, pos) and end - pos < _MAX_PENDING:
                    self._pending = text[pos:]
                    return
                pos += 1
                continue
            pos = m.end()
            kind = m.lastgroup
            if kind == "text":
                self._draw(m.group("text"))
            elif kind in ("final", "params", "prefix", "inter"):
                self._csi(m.group("prefix"), m.group("params"), m.group("inter"), m.group("final"))
            elif kind == "ctl":
                self._control(m.group("ctl"))
            elif kind in ("efinal", "einter"):
                self._escape(m.group("einter"), m.group("efinal"))
            # OSC (titles, colours, hyperlinks) and DCS strings change nothing we reproduce.

    def resize(self, cols: int, rows: int) -> None:
        """The terminal's new size. Rows leave from below the cursor first, then from the top
        (as xterm.js does); columns are cut or added (no reflow); the scroll region resets."""
        if cols < 1 or rows < 1:
            raise ValueError(f"a screen needs at least one column and row, not {cols}x{rows}")
        s = self._s
        if self._main is not None:
            saved = self._main.saved
            self._resize_buffer(self._main.buffer, cols, rows, saved.cursor if saved else None)
            self._main.margins = None
            if self._main.saved is not None:
                self._main.saved = self._clamp_saved(self._main.saved, cols, rows)
        self._resize_buffer(s.buffer, cols, rows, s.cursor)
        s.lines, s.columns = rows, cols
        s.margins = None
        s.tabstops = {x for x in s.tabstops if x < cols} | set(range(8, cols, 8))
        s.cursor.x = min(s.cursor.x, cols - 1)
        s.cursor.y = min(s.cursor.y, rows - 1)
        if self._saved is not None:
            self._saved = self._clamp_saved(self._saved, cols, rows)

    def snapshot(self) -> str:
        """ANSI text that recreates this screen in a freshly reset terminal of cols x rows."""
        s = self._s
        out: list[str] = []
        if s.tabstops != set(range(8, s.columns, 8)):
            out.append("\x1b[3g")
            out.extend(f"\x1b[1;{x + 1}H\x1bH" for x in sorted(s.tabstops))
        if self._main is not None:
            main = self._main
            self._render(main.buffer, out)
            if main.margins is not None:
                out.append(f"\x1b[{main.margins.top + 1};{main.margins.bottom + 1}r")
            if self._alt_mode == 1049 and main.saved is not None:
                # 1049 saves the cursor on entry: the main screen's saved cursor.
                self._emit_saved(main.saved, main.buffer, main.margins, out, "\x1b[?1049h")
            else:
                if main.saved is not None:
                    self._emit_saved(main.saved, main.buffer, main.margins, out)
                out.append(f"\x1b[?{self._alt_mode}h")
            out.append("\x1b[0m\x1b[2J")  # entering filled it with the pen's background
        self._render(s.buffer, out)
        if s.margins is not None:
            out.append(f"\x1b[{s.margins.top + 1};{s.margins.bottom + 1}r")
        if self._saved is not None:
            self._emit_saved(self._saved, s.buffer, s.margins, out)
        out.extend(f"\x1b[?{mode}h" for mode in _FLAG_MODES if mode in self._flags)
        if self._keypad:
            out.append("\x1b=")
        cursor = s.cursor
        top = 0
        if mo.DECOM in s.mode:
            top = s.margins.top if s.margins else 0
            out.append("\x1b[?6h")
        self._place(s.buffer, cursor.x, cursor.y, top, out)
        out.append(sgr(cursor.attrs))
        if mo.IRM in s.mode:
            out.append("\x1b[4h")
        if mo.LNM in s.mode:
            out.append("\x1b[20h")
        if mo.DECAWM not in s.mode:
            out.append("\x1b[?7l")
        if s.g0_charset is cs.VT100_MAP:
            out.append("\x1b(0")
        if s.g1_charset is not cs.VT100_MAP:
            out.append("\x1b)B")
        if s.charset == 1:
            out.append("\x0e")
        if cursor.hidden:
            out.append("\x1b[?25l")
        return "".join(out)

    def state(self) -> tuple[Any, ...]:
        """Everything snapshot() reproduces, comparable with ==; for tests and debugging."""
        s = self._s
        screens = [self._cells(s.buffer)]
        main = None
        if self._main is not None:
            m = self._main
            main = (self._cells(m.buffer), m.margins, _saved_state(m.saved))
        return (
            s.columns,
            s.lines,
            self._alt_mode,
            screens,
            main,
            s.margins,
            (s.cursor.x, s.cursor.y, s.cursor.hidden, s.cursor.attrs),
            _saved_state(self._saved),
            frozenset(self._flags),
            self._keypad,
            frozenset(s.mode & {mo.DECOM, mo.DECAWM, mo.IRM, mo.LNM}),
            (s.g0_charset is cs.VT100_MAP, s.g1_charset is cs.VT100_MAP, s.charset),
            frozenset(s.tabstops),
        )

    def display(self) -> list[str]:
        """The visible lines as text (wide characters once, trailing blanks kept)."""
        return ["".join(c[0] for c in row if c[0] != "") for row in self._cells(self._s.buffer)]

    @property
    def alternate(self) -> bool:
        """Whether the alternate screen is shown."""
        return self._main is not None

    @property
    def cursor(self) -> tuple[int, int, bool]:
        """(x, y, visible), 0-based; x == cols while a wrap is pending."""
        c = self._s.cursor
        return c.x, c.y, not c.hidden

    def mode(self, private: int) -> bool:
        """Whether a DEC private mode (1, 7, 25, 66, 1000, 2004, …) is set."""
        if private == 25:
            return not self._s.cursor.hidden
        if private in (6, 7):
            return (private << 5) in self._s.mode
        if private in _ALT_MODES:
            return self._alt_mode == private
        return private in self._flags or (private == 66 and self._keypad)

    # -- parsing -----------------------------------------------------------------------

    def _control(self, char: str) -> None:
        s = self._s
        if char == "\n" or char == "\x0b" or char == "\x0c":
            s.linefeed()
        elif char == "\r":
            s.carriage_return()
        elif char == "\x08":
            if s.cursor.x >= s.columns:
                s.cursor.x = s.columns - 1
            s.cursor_back()
        elif char == "\t":
            if s.cursor.x >= s.columns:
                s.cursor.x = s.columns - 1
            s.tab()
        elif char == "\x0e":
            s.charset = 1
        elif char == "\x0f":
            s.charset = 0
        # BEL and everything else: nothing on screen

    def _escape(self, inter: str, final: str) -> None:
        s = self._s
        if inter in ("(", ")"):
            table = cs.VT100_MAP if final == "0" else cs.LAT1_MAP
            if inter == "(":
                s.g0_charset = table
            else:
                s.g1_charset = table
        elif inter == "#":
            if final == "8":
                s.alignment_display()
        elif inter:
            return
        elif final == "7":
            self._save_cursor()
        elif final == "8":
            self._restore_cursor()
        elif final == "D":
            self._clamp_x()
            s.index()
        elif final == "E":
            self._clamp_x()
            s.index()
            s.carriage_return()
        elif final == "M":
            self._clamp_x()
            s.reverse_index()
        elif final == "H":
            s.tabstops.add(min(s.cursor.x, s.columns - 1))
        elif final == "c":
            self._full_reset()
        elif final == "=":
            self._keypad = True
        elif final == ">":
            self._keypad = False

    def _csi(self, prefix: str, params: str, inter: str, final: str) -> None:
        if prefix and prefix != "?":
            return  # CSI > … (modifyOtherKeys, secondary DA) and the like: no screen effect
        if inter:
            if inter == "!" and final == "p":
                self._soft_reset()
            return  # DECSCUSR (CSI Ps SP q) and others: no screen effect
        s = self._s
        if final == "m":
            if not prefix:
                self._sgr(params)
            return
        args = [int(p.split(":")[0] or 0) for p in params.split(";")] if params else []
        n = max(args[0], 1) if args else 1
        if final in "hl":
            self._modes(args, prefix == "?", final == "h")
            return
        if prefix:
            if final in "JK":
                self._erase(final, args[0] if args else 0)
            return
        if final not in "bJKX":  # (erases at a pending wrap differ: _erase)
            self._clamp_x()
        if final == "H" or final == "f":
            s.cursor_position(args[0] if args else None, args[1] if len(args) > 1 else None)
        elif final == "A":
            s.cursor_up(n)
        elif final == "B" or final == "e":
            s.cursor_down(n)
        elif final == "C" or final == "a":
            s.cursor_forward(n)
        elif final == "D":
            s.cursor_back(n)
        elif final == "E":
            s.cursor_down1(n)
        elif final == "F":
            s.cursor_up1(n)
        elif final == "G" or final == "`":
            s.cursor_to_column(n)
        elif final == "d":
            # (pyte's cursor_to_line fails in origin mode without margins)
            s.cursor_position(n, s.cursor.x + 1)
        elif final in "JK":
            self._erase(final, args[0] if args else 0)
        elif final == "X":
            if s.cursor.x < s.columns:
                self._with_erase_pen(s.erase_characters, n)
        elif final == "@":
            s.insert_characters(n)
        elif final == "P":
            s.delete_characters(n)
        elif final == "L":
            s.insert_lines(n)
        elif final == "M":
            s.delete_lines(n)
        elif final == "S":
            self._scroll(n, up=True)
        elif final == "T" and len(args) <= 1:
            self._scroll(n, up=False)
        elif final == "r":
            top = args[0] if args else 0
            bottom = args[1] if len(args) > 1 and args[1] else s.lines
            if (top or 1) < bottom <= s.lines:
                whole = top <= 1 and bottom == s.lines
                s.margins = None if whole else Margins(max(top - 1, 0), bottom - 1)
                s.cursor_position()
        elif final == "g":
            if not args or args[0] == 0:
                s.tabstops.discard(s.cursor.x)
            elif args[0] == 3:
                s.tabstops.clear()
        elif final == "b":
            if self._last:
                self._draw(self._last * min(n, s.columns * s.lines))
        elif final == "s" and not args:
            self._save_cursor()
        elif final == "u" and not args:
            self._restore_cursor()
        elif final == "I":
            for _ in range(n):
                s.tab()
        elif final == "Z":
            stops = sorted(x for x in s.tabstops if x < s.cursor.x)
            for _ in range(n):
                s.cursor.x = stops.pop() if stops else 0

    def _sgr(self, params: str) -> None:
        self._s.cursor.attrs = apply_sgr(self._s.cursor.attrs, params)

    def _modes(self, args: list[int], private: bool, on: bool) -> None:
        s = self._s
        for mode in args:
            if not private:
                if mode in (4, 20):
                    (s.mode.add if on else s.mode.discard)(mo.IRM if mode == 4 else mo.LNM)
            elif mode in _ALT_MODES:
                if on:
                    self._enter_alternate(mode)
                else:
                    self._leave_alternate(mode)
            elif mode == 25:
                s.cursor.hidden = not on
            elif mode == 7:
                (s.mode.add if on else s.mode.discard)(mo.DECAWM)
                if not on:
                    self._clamp_x()
            elif mode == 6:
                (s.mode.add if on else s.mode.discard)(mo.DECOM)
                s.cursor_position()
            elif mode == 66:
                self._keypad = on
            elif mode in _FLAG_MODES:
                if on and mode in (1000, 1002, 1003):
                    self._flags -= {1000, 1002, 1003}  # one mouse tracking mode at a time
                if on and mode in (1005, 1006, 1015, 1016):
                    self._flags -= {1005, 1006, 1015, 1016}  # and one encoding
                (self._flags.add if on else self._flags.discard)(mode)

    # -- screen operations -------------------------------------------------------------

    def _draw(self, text: str) -> None:
        s = self._s
        table = s.g1_charset if s.charset else s.g0_charset
        if table is cs.VT100_MAP:
            text = text.translate(table)
        cursor = s.cursor
        columns = s.columns
        autowrap = mo.DECAWM in s.mode
        insert = mo.IRM in s.mode
        buffer = s.buffer
        if autowrap and not insert and text.isascii():
            self._draw_ascii(text)
            return
        line = buffer[cursor.y]
        for char in text:
            width = wcwidth(char) if char >= "\u0300" else 1
            if width <= 0:
                if width == 0 and unicodedata.combining(char) and cursor.x > 0:
                    x = cursor.x - 1
                    if line[x].data == "" and x > 0:
                        x -= 1
                    last = line[x]
                    line[x] = last._replace(data=unicodedata.normalize("NFC", last.data + char))
                continue
            if width > columns:
                continue  # a wide character in a one-column terminal is not shown (xterm.js)
            if cursor.x + width > columns:
                if autowrap:
                    if cursor.x < columns:  # a wide character that does not fit: blank the rest
                        line[cursor.x] = cursor.attrs._replace(data=" ")
                    cursor.x = 0
                    s.index()
                    line = buffer[cursor.y]
                else:
                    cursor.x = columns - width
            x = cursor.x
            if insert:
                s.insert_characters(width)
            if x > 0 and (line[x].data == "" or _width(line[x - 1].data or " ") == 2):
                # overwriting the right half of a wide character: its left half goes too
                line[x - 1] = line[x - 1]._replace(data=" ")
            attrs = cursor.attrs
            line[x] = attrs._replace(data=char)
            if width == 2:
                if x + 1 < columns:
                    line[x + 1] = attrs._replace(data="")
                if x + 2 < columns and line[x + 2].data == "":
                    line[x + 2] = line[x + 2]._replace(data=" ")
            elif x + 1 < columns and line[x + 1].data == "":
                line[x + 1] = line[x + 1]._replace(data=" ")
            cursor.x = x + width
            self._last = char
        if not autowrap and cursor.x >= columns:
            cursor.x = columns - 1

    def _draw_ascii(self, text: str) -> None:
        """The common case (ASCII, autowrap, no insert mode): a line's worth of cells at once."""
        s = self._s
        cursor = s.cursor
        columns = s.columns
        cells = self._cell_cache
        if cells.attrs is not cursor.attrs:
            known = self._cell_caches.get(cursor.attrs)
            if known is None:
                if len(self._cell_caches) >= 256:
                    self._cell_caches.clear()
                known = self._cell_caches[cursor.attrs] = _CellCache(cursor.attrs)
            cells = self._cell_cache = known
        pos, n = 0, len(text)
        while pos < n:
            if cursor.x >= columns:
                cursor.x = 0
                s.index()
            line = s.buffer[cursor.y]
            x = cursor.x
            end = min(columns, x + n - pos)
            if x > 0 and (line[x].data == "" or _width(line[x - 1].data or " ") == 2):
                line[x - 1] = line[x - 1]._replace(data=" ")  # a wide character loses its half
            if end < columns and line[end].data == "":
                line[end] = line[end]._replace(data=" ")
            run = text[pos : pos + end - x]
            line.update(zip(range(x, end), map(cells.__getitem__, run), strict=True))
            pos += end - x
            cursor.x = end
        self._last = text[-1]

    def _fill_line(self, line: Any) -> None:
        bg = self._s.cursor.attrs.bg
        if bg != "default":
            blank = BLANK._replace(bg=bg)
            for x in range(self._s.columns):
                line[x] = blank

    def _clamp_x(self) -> None:
        if self._s.cursor.x >= self._s.columns:
            self._s.cursor.x = self._s.columns - 1

    def _with_erase_pen(self, operation: Any, *args: Any) -> None:
        # Erased cells take the pen's background only (xterm.js), not its other attributes.
        cursor = self._s.cursor
        pen = cursor.attrs
        cursor.attrs = BLANK._replace(bg=pen.bg)
        try:
            operation(*args)
        finally:
            cursor.attrs = pen

    def _erase(self, final: str, how: int) -> None:
        s = self._s
        if how == 0 and s.cursor.x >= s.columns:
            # A pending wrap erases nothing on its line (xterm.js), only the lines below.
            if final == "J":
                for y in range(s.cursor.y + 1, s.lines):
                    s.buffer[y].clear()
                    self._fill_line(s.buffer[y])
            return
        self._clamp_x()
        if final == "K":
            if how in (0, 1, 2):
                self._with_erase_pen(s.erase_in_line, how)
        elif how in (0, 1, 2):
            # (pyte's erase_in_display rewrites only the cells a line already has)
            lines = range(s.cursor.y + 1, s.lines) if how == 0 else range(s.cursor.y)
            for y in range(s.lines) if how == 2 else lines:
                s.buffer[y].clear()
                self._fill_line(s.buffer[y])
            if how != 2:
                self._with_erase_pen(s.erase_in_line, how)
        elif how == 3:
            pass  # scrollback only

    def _scroll(self, n: int, up: bool) -> None:
        s = self._s
        top, bottom = s.margins or Margins(0, s.lines - 1)
        n = min(n, bottom - top + 1)
        saved_y = s.cursor.y
        s.cursor.y = bottom if up else top
        for _ in range(n):
            if up:
                s.index()
            else:
                s.reverse_index()
        s.cursor.y = saved_y

    def _save_cursor(self) -> None:
        s = self._s
        cursor = pyte.screens.Cursor(s.cursor.x, s.cursor.y, s.cursor.attrs)
        self._saved = Savepoint(
            cursor, s.g0_charset, s.g1_charset, s.charset, mo.DECOM in s.mode, mo.DECAWM in s.mode
        )

    def _restore_cursor(self) -> None:
        s = self._s
        saved = self._saved
        if saved is None:
            s.mode.discard(mo.DECOM)
            s.cursor.x = s.cursor.y = 0
            s.cursor.attrs = BLANK
            return
        s.g0_charset, s.g1_charset, s.charset = saved.g0_charset, saved.g1_charset, saved.charset
        (s.mode.add if saved.origin else s.mode.discard)(mo.DECOM)
        s.cursor.x = min(saved.cursor.x, s.columns - 1)
        s.cursor.y = min(saved.cursor.y, s.lines - 1)
        s.cursor.attrs = saved.cursor.attrs

    def _enter_alternate(self, mode: int) -> None:
        if self._main is not None:
            return
        s = self._s
        if mode == 1049:
            self._save_cursor()
        self._main = _Screen(buffer=s.buffer, margins=s.margins, saved=self._saved)
        s.buffer = type(s.buffer)(s.buffer.default_factory)
        s.margins = None
        self._saved = None
        self._alt_mode = mode
        if mode == 1049:  # the alternate screen starts blank in the pen's background
            pen = s.cursor.attrs
            if pen.bg != "default":
                blank = BLANK._replace(bg=pen.bg)
                for y in range(s.lines):
                    line = s.buffer[y]
                    for x in range(s.columns):
                        line[x] = blank

    def _leave_alternate(self, mode: int) -> None:
        main = self._main
        if main is None:
            return
        s = self._s
        s.buffer, s.margins, self._saved = main.buffer, main.margins, main.saved
        self._main = None
        self._alt_mode = 0
        if mode == 1049:
            self._restore_cursor()

    def _soft_reset(self) -> None:
        s = self._s
        s.mode.discard(mo.DECOM)
        s.mode.discard(mo.IRM)
        s.mode.add(mo.DECAWM)
        s.margins = None
        s.cursor.hidden = False
        s.cursor.attrs = BLANK
        s.charset, s.g0_charset, s.g1_charset = 0, cs.LAT1_MAP, cs.VT100_MAP
        self._flags.discard(1)
        self._keypad = False
        self._saved = None

    def _full_reset(self) -> None:
        s = self._s
        if self._main is not None:
            s.buffer = self._main.buffer
            self._main = None
            self._alt_mode = 0
        s.reset()
        s.cursor.attrs = BLANK
        self._flags.clear()
        self._keypad = False
        self._saved = None
        self._last = ""

    def _resize_buffer(self, buffer: Any, cols: int, rows: int, cursor: Any) -> None:
        old_rows = self._s.lines
        if rows < old_rows:
            trim = old_rows - rows
            cursor_y = cursor.y if cursor is not None else old_rows - 1
            below = min(trim, old_rows - 1 - cursor_y)
            top = trim - below
            for y in range(rows + top, old_rows):
                buffer.pop(y, None)
            if top:
                moved = {y - top: buffer[y] for y in range(top, rows + top) if y in buffer}
                buffer.clear()
                buffer.update(moved)
                if cursor is not None:
                    cursor.y -= top
        if cols < self._s.columns:
            for line in buffer.values():
                for x in [x for x in line if x >= cols]:
                    del line[x]
                if cols - 1 in line and _width(line[cols - 1].data or " ") == 2:
                    line[cols - 1] = line[cols - 1]._replace(data=" ")  # its right half is cut

    def _clamp_saved(self, saved: Savepoint, cols: int, rows: int) -> Savepoint:
        c = saved.cursor
        return saved._replace(
            cursor=pyte.screens.Cursor(min(c.x, cols - 1), min(c.y, rows - 1), c.attrs)
        )

    def _cells(self, buffer: Any) -> list[list[Cell]]:
        rows: list[list[Cell]] = []
        cols = self._s.columns
        for y in range(self._s.lines):
            line = buffer.get(y)
            row: list[Cell] = []
            wide = False
            for x in range(cols):
                cell = line[x] if line is not None and x in line else BLANK
                if cell.data == "" and not wide:
                    cell = cell._replace(data=" ")  # an orphaned right half shows as a blank
                wide = cell.data != "" and _width(cell.data) == 2
                if wide and (x + 1 >= cols or line is None or line[x + 1].data != ""):
                    cell = cell._replace(data=" ")  # a left half without its right one too
                    wide = False
                row.append(cell)
            rows.append(row)
        return rows

    def _render(self, buffer: Any, out: list[str]) -> None:
        """Write the cells of one screen: a cursor move per line, SGR only where it changes."""
        pen = BLANK
        cols = self._s.columns
        for y, row in enumerate(self._cells(buffer)):
            last = cols - 1
            while last >= 0 and row[last] == BLANK:
                last -= 1
            if last < 0:
                continue
            out.append(f"\x1b[{y + 1}H")
            x = 0
            while x <= last:
                cell = row[x]
                if cell != pen and cell._replace(data="") != pen._replace(data=""):
                    out.append(sgr(cell))
                    pen = cell
                if cell.data == "":
                    x += 1
                    continue
                out.append(cell.data)
                x += 2 if _width(cell.data) == 2 else 1
        if pen != BLANK:
            out.append("\x1b[0m")

    def _place(self, buffer: Any, x: int, y: int, top: int, out: list[str]) -> None:
        """Move the cursor to (x, y); x == cols is a pending wrap: write the last cell again."""
        cols = self._s.columns
        out.append(f"\x1b[{y - top + 1};{min(x, cols - 1) + 1}H")
        if x < cols:
            return
        line = buffer[y]
        last = cols - 1
        if line[last].data == "" and last > 0 and _width(line[last - 1].data) == 2:
            out.append(f"\x1b[{y - top + 1};{last}H")
            last -= 1
        cell = line[last]
        out.append(sgr(cell) + (cell.data or " "))

    def _emit_saved(
        self,
        saved: Savepoint,
        buffer: Any,
        margins: Margins | None,
        out: list[str],
        save: str = "\x1b7",
    ) -> None:
        # DECSC keeps the position, the pen, the charsets and origin mode: set them, save, undo.
        c = saved.cursor
        top = 0
        if saved.origin:
            top = margins.top if margins else 0
            out.append("\x1b[?6h")
        self._place(buffer, c.x, c.y, top, out)
        out.append(sgr(cast(Cell, c.attrs)))
        graphics = saved.g0_charset is cs.VT100_MAP
        out.append(("\x1b(0" if graphics else "") + ("\x0e" if saved.charset else "") + save)
        out.append(("\x1b(B" if graphics else "") + ("\x0f" if saved.charset else "") + "\x1b[0m")
        if saved.origin:
            out.append("\x1b[?6l")


def _width(char: str) -> int:
    return 1 if char < "\u0300" else max(wcwidth(char[0]), 1)


def _saved_state(saved: Savepoint | None) -> Any:
    if saved is None:
        return None
    c = saved.cursor
    return (c.x, c.y, c.attrs, saved.g0_charset is cs.VT100_MAP, saved.charset, saved.origin)
