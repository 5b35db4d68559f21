"""Terminal subprotocols: the codec registry and pure negotiation helpers.

Every supported subprotocol has a codec per role (``codec_for``). Browser↔upstream
translation is decoding with one side's codec and encoding with the other's: the
session's pump does it event by event (with the ``plain_output`` shortcut for output),
``translate`` does it for one frame (codec tables, tools).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from .base import Codec, Frame, Opcode, ProtocolError, Role
from .events import (
    STDERR,
    STDOUT,
    Ack,
    Event,
    Exit,
    ExpiryWarning,
    ExtensionAnswer,
    ExtensionRequest,
    Hello,
    JoinToken,
    Output,
    Resize,
    Resume,
    ShareRequest,
    SharingNotice,
    Stdin,
    StdinClosed,
)
from .gitlab import BASE64_TERMINAL, GITLAB_PROTOCOLS, TERMINAL, gitlab_codec
from .kubernetes import (
    BASE64_V1,
    BASE64_V4,
    KUBERNETES_PROTOCOLS,
    V1,
    V4,
    V5,
    exit_message,
    kubernetes_codec,
    parse_status,
    status_json,
)
from .terminal_proxy import TERMINAL_PROXY, terminal_proxy_codec

__all__ = [
    "BROWSER_SUBPROTOCOLS",
    "STDERR",
    "STDOUT",
    "TERMINAL_PROXY",
    "UPSTREAM_SUBPROTOCOLS",
    "Ack",
    "Codec",
    "Event",
    "Exit",
    "ExpiryWarning",
    "ExtensionAnswer",
    "ExtensionRequest",
    "Frame",
    "Hello",
    "JoinToken",
    "Opcode",
    "Output",
    "ProtocolError",
    "Resize",
    "Resume",
    "Role",
    "ShareRequest",
    "SharingNotice",
    "Stdin",
    "StdinClosed",
    "codec_for",
    "exit_message",
    "negotiate",
    "parse_status",
    "status_json",
    "translate",
    "upstream_offer",
]

# What we accept from a browser, in our order of preference (the client's order decides;
# see ``negotiate``).
BROWSER_SUBPROTOCOLS: Final[tuple[str, ...]] = (
    TERMINAL,
    BASE64_TERMINAL,
    V5,
    V4,
    BASE64_V4,
    V1,
    BASE64_V1,
    TERMINAL_PROXY,
)
# What we can speak to an upstream: the same set but our own (browser-only) protocol.
UPSTREAM_SUBPROTOCOLS: Final[tuple[str, ...]] = BROWSER_SUBPROTOCOLS[:-1]

_FACTORIES: Final[dict[str, Callable[[str, Role], Codec]]] = {
    **dict.fromkeys(GITLAB_PROTOCOLS, gitlab_codec),
    **dict.fromkeys(KUBERNETES_PROTOCOLS, kubernetes_codec),
    TERMINAL_PROXY: terminal_proxy_codec,
}


def codec_for(name: str, role: Role) -> Codec:
    """A new codec for subprotocol ``name`` seen from ``role``.

    KeyError for a name not in ``BROWSER_SUBPROTOCOLS`` (including ``""``: no subprotocol
    is not a protocol we translate); ValueError for something that is not a Role.
    """
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise KeyError(f"unsupported subprotocol {name!r}") from None
    if not isinstance(role, Role):
        raise ValueError(f"not a role: {role!r}")
    return factory(name, role)


def negotiate(offered: Sequence[str], supported: Sequence[str]) -> str | None:
    """The first of the client's ``offered`` subprotocols that we support, else None.

    The client's order decides, as in kube-apiserver (golang.org/x/net/websocket). Names
    compare exactly (subprotocol tokens are case-sensitive).
    """
    accepted = frozenset(supported)
    for name in offered:
        if name in accepted:
            return name
    return None


def upstream_offer(subprotocols: Sequence[str], *, offer_v5: bool) -> list[str]:
    """The ``Sec-WebSocket-Protocol`` list we offer upstream for the named subprotocols.

    With ``offer_v5``, ``channel.k8s.io`` becomes ``v5.channel.k8s.io, v4.channel.k8s.io,
    channel.k8s.io`` and ``base64.channel.k8s.io`` becomes ``v4.base64.channel.k8s.io,
    base64.channel.k8s.io``: a kube-apiserver ≥ 1.30 answers v5 (it handles any request
    offering v5 itself), an older one proxies to the kubelet, which walks our list and
    takes v4 or the name given. Everything else keeps its order; a name appears once, at
    its first position.
    """
    offer: list[str] = []
    seen: set[str] = set()
    for name in subprotocols:
        if offer_v5 and name == V1:
            expanded: tuple[str, ...] = (V5, V4, V1)
        elif offer_v5 and name == BASE64_V1:
            expanded = (BASE64_V4, BASE64_V1)
        else:
            expanded = (name,)
        for item in expanded:
            if item not in seen:
                seen.add(item)
                offer.append(item)
    return offer


def translate(src: Codec, dst: Codec, opcode: Opcode, payload: bytes) -> list[Frame]:
    """Decode one frame with ``src`` and encode each resulting event with ``dst``."""
    frames: list[Frame] = []
    for event in src.decode(opcode, payload):
        frames.extend(dst.encode(event))
    return frames
