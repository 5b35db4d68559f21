"""The request target's path, checked before anything else looks at it.

The path goes to the authorization API exactly as the browser sent it, appended to the
backend's path prefix (``/gitlab`` + path + ``/authorize``). A path that a URL library,
a proxy or the web app would normalize to somewhere else must therefore never get that
far: dot-segments (``..``, ``.``, also as ``%2e``), encoded slashes and backslashes
(``%2f``, ``%5c``), empty segments (``//``), backslashes, fragments, control characters,
raw non-ASCII bytes and malformed escapes are refused with 400, each segment decoded as
often as a chain of servers might decode it (``%252e`` is a dot too).
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from .errors import PathRejected

__all__ = ["check_request_path"]

# Visible ASCII except '#' (a fragment never belongs in a request) and '\' (some servers
# treat it as '/'); '%' must start an escape of two hex digits.
_PATH = re.compile(r"(?:[!$&'()*+,\-./0-9:;=@A-Z\[\]^_`a-z{|}~\"<>]|%[0-9A-Fa-f]{2})*")
# A chain of servers decodes a path a few times at most; more rounds find nothing new.
_DECODE_ROUNDS = 3


def check_request_path(target: str) -> None:
    """Raise PathRejected unless ``target``'s path (before ``?``) is a plain path."""
    path = target.split("?", 1)[0]
    if not path.startswith("/"):
        raise PathRejected("the request target must be a path starting with '/'")
    if not _PATH.fullmatch(path):
        raise PathRejected(
            "the request path holds a character that is not allowed (control, space, "
            "non-ASCII, '#', '\\' or a malformed %-escape)"
        )
    segments = path[1:].split("/")
    if "%" not in path:
        # Nothing to decode (the common path): the character class already refused
        # backslashes and control characters, so only the segments themselves remain.
        if "" in segments[:-1]:
            raise PathRejected("the request path has an empty segment ('//')")
        if "." in segments or ".." in segments:
            raise PathRejected("the request path has a '.' or '..' segment (also as %2e)")
        return
    for index, segment in enumerate(segments):
        decoded = _decoded(segment)
        if not decoded and index < len(segments) - 1:
            raise PathRejected("the request path has an empty segment ('//')")
        if decoded in (".", ".."):
            raise PathRejected("the request path has a '.' or '..' segment (also as %2e)")
        if "/" in decoded or "\\" in decoded:
            raise PathRejected("the request path has an encoded '/' or '\\' (%2f, %5c)")
        if any(ord(char) < 0x20 or ord(char) == 0x7F for char in decoded):
            raise PathRejected("the request path has an encoded control character")


def _decoded(segment: str) -> str:
    for _ in range(_DECODE_ROUNDS):
        decoded = unquote(segment, errors="replace")
        if decoded == segment:
            break
        segment = decoded
    return segment
