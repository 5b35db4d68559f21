"""One attached terminal: the relay between a WebSocket and a process on a PTY.

Data flow (``run_terminal``), with the negotiated ``channel.k8s.io`` codec in the SERVER
role::

    client frames --decode--> Stdin     -> PtyProcess.write()
                              Resize    -> PtyProcess.resize()  (TIOCSWINSZ)
                              StdinClosed (v5 [255,0]) -> PtyProcess.send_eof()  (^D)
    PtyProcess.read() --> Output --encode--> stdout frames  (one read per completed send)

Three named tasks (input pump, output pump, exit watcher) race with the server's stop
future. The first event decides the ending:

* the leader exits: the output pump keeps going until the terminal hangs up (every
  holder of the PTY slave gone) or for ``grace`` seconds, after which the process group
  gets SIGKILL; then the caller reaps the process and sends the exit status;
* the client leaves (close frame, dropped connection, or it can no longer receive), sends
  a malformed frame, or the server stops: the caller ends the process group.

``run_terminal`` only decides; ``SessionServer`` does the closing, reaping and logging.
All three tasks are cancelled and awaited before it returns, on every path.
"""

from __future__ import annotations

import asyncio
import enum
import signal
import time
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from ..protocols import Codec, Frame, Opcode, Output, ProtocolError, Resize, Stdin, StdinClosed
from ..tasks import cancel_and_wait, spawn
from .pty import PtyProcess

__all__ = ["Ending", "Outcome", "Phase", "SessionState", "run_terminal", "send_frame"]


class Phase(enum.Enum):
    """Where a session is in its life. Only WAITING sessions accept a terminal."""

    WAITING = "waiting"  # URL handed out, no terminal yet
    ATTACHED = "attached"  # a terminal is connected (or connecting)
    ENDED = "ended"  # URL discarded: every request gets 404


class Outcome(enum.Enum):
    """Why a session ended (``reason=`` in the log)."""

    EXITED = "exited"  # the process ended; its status was sent, then close 1000
    CLIENT_LEFT = "client_left"  # close frame or dropped connection: process group ended
    PROTOCOL_ERROR = "protocol_error"  # malformed frame: close 1002, process group ended
    SHUTDOWN = "shutdown"  # server closing: close 1001, process group ended
    SPAWN_FAILED = "spawn_failed"  # the command could not start: status 126/127, close 1000
    EXPIRED = "expired"  # no terminal attached within claim_timeout
    ERROR = "error"  # a bug or an unexpected OS error: close 1011, process group ended


@dataclass(frozen=True)
class Ending:
    outcome: Outcome
    detail: str = ""


@dataclass(eq=False)
class SessionState:
    """What a test (or a curious caller) can see of one session. Holds no secret."""

    id: str
    command: tuple[str, ...]
    created: float = field(default_factory=time.monotonic)
    phase: Phase = Phase.WAITING
    subprotocol: str | None = None
    pid: int | None = None
    # Every resize applied to the PTY, as (width, height), in order.
    resizes: list[tuple[int, int]] = field(default_factory=list)
    stdin_closed: bool = False
    # 128+N for a death by signal N (also when we ended the process), None if never run.
    exit_code: int | None = None
    outcome: Outcome | None = None
    detail: str = ""
    attached: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    ended: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def label(self) -> str:
        """The id prefix used in logs and task names."""
        return self.id[:8]


async def send_frame(ws: web.WebSocketResponse, frame: Frame) -> None:
    opcode, payload = frame
    if opcode is Opcode.TEXT:
        await ws.send_str(payload.decode("ascii"))
    else:
        await ws.send_bytes(payload)


async def _pump_output(ws: web.WebSocketResponse, codec: Codec, proc: PtyProcess) -> bool:
    """PTY → client until the terminal hangs up (True) or the client cannot receive (False)."""
    try:
        while data := await proc.read():
            for frame in codec.encode(Output(data)):
                await send_frame(ws, frame)
    except ConnectionError:
        return False
    return True


async def _pump_input(
    ws: web.WebSocketResponse, codec: Codec, proc: PtyProcess, state: SessionState
) -> Ending:
    """Client → PTY until the client closes, drops, or breaks the protocol."""
    async for msg in ws:  # ends on CLOSE/CLOSING/CLOSED; pings are answered by aiohttp
        if msg.type is WSMsgType.BINARY:
            opcode, payload = Opcode.BINARY, msg.data
        elif msg.type is WSMsgType.TEXT:
            opcode, payload = Opcode.TEXT, msg.data.encode("utf-8")
        elif msg.type is WSMsgType.ERROR:
            return Ending(Outcome.CLIENT_LEFT, f"connection error: {type(msg.data).__name__}")
        else:
            continue
        try:
            events = codec.decode(opcode, payload)
        except ProtocolError as exc:
            return Ending(Outcome.PROTOCOL_ERROR, str(exc))
        for event in events:
            if isinstance(event, Stdin):
                await proc.write(event.data)
            elif isinstance(event, Resize):
                proc.resize(event.width, event.height)
                state.resizes.append((event.width, event.height))
            elif isinstance(event, StdinClosed):
                state.stdin_closed = True
                await proc.send_eof()
    return Ending(Outcome.CLIENT_LEFT, f"client closed ({ws.close_code})")


async def run_terminal(
    ws: web.WebSocketResponse,
    codec: Codec,
    proc: PtyProcess,
    state: SessionState,
    *,
    stop: asyncio.Future[None],
    grace: float,
) -> Ending:
    """Relay until the process has exited and its output is drained, or until interrupted.

    Returns ``Outcome.EXITED`` when the leader exited (not yet reaped) and the output
    reached the client; otherwise why the relay was interrupted (client gone, protocol
    error, shutdown). Exceptions of the pumps propagate.
    """
    label = state.label
    inputs = spawn(_pump_input(ws, codec, proc, state), name=f"sessionserver-{label}-input")
    output = spawn(_pump_output(ws, codec, proc), name=f"sessionserver-{label}-output")
    exited = spawn(proc.wait_exit(), name=f"sessionserver-{label}-exit")

    def interruption() -> Ending | None:
        if stop.done():
            return Ending(Outcome.SHUTDOWN, "server shutting down")
        if inputs.done():
            return inputs.result()
        if output.done() and not output.result():
            return Ending(Outcome.CLIENT_LEFT, "client stopped receiving")
        return None

    try:
        await asyncio.wait((inputs, output, exited, stop), return_when=asyncio.FIRST_COMPLETED)
        while (ending := interruption()) is None and not exited.done():
            # The terminal hung up but the leader runs on (it closed its fds): wait for it.
            await asyncio.wait((inputs, exited, stop), return_when=asyncio.FIRST_COMPLETED)
        if ending is not None:
            return ending
        # The leader exited. Drain its output until the terminal hangs up. Whatever still
        # holds the terminal after ``grace`` is left over: its process group gets SIGKILL
        # and the rest of its output is not waited for.
        if not output.done():
            await asyncio.wait(
                (inputs, output, stop), timeout=grace, return_when=asyncio.FIRST_COMPLETED
            )
            if (ending := interruption()) is not None:
                return ending
            if not output.done():
                proc.signal_group(signal.SIGKILL)
        return Ending(Outcome.EXITED)
    finally:
        await cancel_and_wait((inputs, output, exited))
