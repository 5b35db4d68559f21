"""The cells of terminal_proxy/screen.py: a character with its colours and attributes, and
the SGR sequences (Select Graphic Rendition, CSI … m) that set them and that write them back.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["BLANK", "Cell", "apply_sgr", "sgr", "with_"]


class Cell(NamedTuple):
    """One cell: pyte's Char fields plus dim and hidden. Colours: "default", "0".."255"
    (palette index) or "#rrggbb" (truecolor)."""

    data: str
    fg: str = "default"
    bg: str = "default"
    bold: bool = False
    italics: bool = False
    underscore: bool = False
    strikethrough: bool = False
    reverse: bool = False
    blink: bool = False
    dim: bool = False
    hidden: bool = False


BLANK = Cell(" ")


BLANK = Cell(" ")

_SGR_FLAGS: dict[int, tuple[str, bool]] = {
    1: ("bold", True),
    2: ("dim", True),
    3: ("italics", True),
    4: ("underscore", True),
    5: ("blink", True),
    7: ("reverse", True),
    8: ("hidden", True),
    9: ("strikethrough", True),
    21: ("underscore", True),
    22: ("bold", False),
    23: ("italics", False),
    24: ("underscore", False),
    25: ("blink", False),
    27: ("reverse", False),
    28: ("hidden", False),
    29: ("strikethrough", False),
}
_FLAG_SGR = (
    ("bold", 1),
    ("dim", 2),
    ("italics", 3),
    ("underscore", 4),
    ("blink", 5),
    ("reverse", 7),
    ("hidden", 8),
    ("strikethrough", 9),
)


def apply_sgr(attrs: Cell, params: str) -> Cell:
    """The pen after an SGR sequence (CSI <params> m): 16/256/truecolor, `;` or `:` forms."""
    parts = params.split(";") if params else ["0"]
    i = 0
    while i < len(parts):
        part = parts[i]
        i += 1
        sub = part.split(":")
        try:
            code = int(sub[0] or 0)
        except ValueError:
            continue
        if code == 0:
            attrs = BLANK
        elif code in _SGR_FLAGS:
            name, on = _SGR_FLAGS[code]
            if code == 4 and len(sub) > 1 and sub[1] == "0":
                on = False
            attrs = with_(attrs, name, on)
            if code == 22:
                attrs = attrs._replace(dim=False)
        elif 30 <= code <= 37:
            attrs = attrs._replace(fg=str(code - 30))
        elif 40 <= code <= 47:
            attrs = attrs._replace(bg=str(code - 40))
        elif 90 <= code <= 97:
            attrs = attrs._replace(fg=str(code - 90 + 8))
        elif 100 <= code <= 107:
            attrs = attrs._replace(bg=str(code - 100 + 8))
        elif code == 39:
            attrs = attrs._replace(fg="default")
        elif code == 49:
            attrs = attrs._replace(bg="default")
        elif code in (38, 48):
            if len(sub) > 1:
                rest = sub[1:]
            else:
                rest = parts[i : i + 4] if parts[i : i + 1] == ["2"] else parts[i : i + 2]
                i += len(rest)
            colour = _colour(rest)
            if colour is not None:
                attrs = with_(attrs, "fg" if code == 38 else "bg", colour)
    return attrs


def with_(cell: Cell, name: str, value: Any) -> Cell:
    changes: dict[str, Any] = {name: value}
    return cell._replace(**changes)


def _colour(rest: list[str]) -> str | None:
    try:
        if rest and rest[0] == "5" and len(rest) >= 2:
            index = int(rest[1])
            return str(index) if 0 <= index <= 255 else None
        if rest and rest[0] == "2":
            values = [int(v) for v in rest[1:] if v != ""][-3:]
            if len(values) == 3 and all(0 <= v <= 255 for v in values):
                return "#{:02x}{:02x}{:02x}".format(*values)
    except ValueError:
        return None
    return None


def sgr(cell: Cell) -> str:
    """The SGR sequence that sets exactly this cell's colours and attributes."""
    codes = ["0"]
    codes.extend(str(code) for name, code in _FLAG_SGR if getattr(cell, name))
    for colour, base in ((cell.fg, 38), (cell.bg, 48)):
        if colour == "default":
            continue
        if colour.startswith("#"):
            r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
            codes.append(f"{base};2;{r};{g};{b}")
        else:
            index = int(colour)
            if index < 8:
                codes.append(str(base - 8 + index))
            elif index < 16:
                codes.append(str(base + 52 + index - 8))
            else:
                codes.append(f"{base};5;{index}")
    return "\x1b[" + ";".join(codes) + "m"
