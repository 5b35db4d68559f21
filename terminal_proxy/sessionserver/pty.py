"""One command on a real pseudo-terminal, driven by the event loop without blocking it.

Data flow::

    PtyProcess.spawn(argv)  os.openpty(); child: slave as fd 0/1/2, setsid + TIOCSCTTY
        read()   <- master (non-blocking; waits for readability; b"" once nobody holds
                    the slave any more: EIO/EOF after the last output was read)
        write()  -> master (partial writes and EAGAIN handled by waiting for writability)
        resize() -> TIOCSWINSZ on the master (the child's foreground group gets SIGWINCH)
        send_eof() -> the terminal's VEOF character (^D): a PTY cannot be half-closed
    wait_exit()  the leader exited (a pidfd becomes readable; the zombie is NOT reaped)
    terminate()  SIGHUP (+SIGCONT) to the process group, SIGKILL after ``grace``, reap
    reap()       collect the exit status (instant once wait_exit() returned)
    close()      close the master fd (the parent closed its slave fd right after spawn)

The leader stays an unreaped zombie until ``reap()``, so its pid, which is also its
process group id, cannot be reused while we may still signal the group: ``killpg`` never
hits a stranger. On systems without ``pidfd_open`` (not Linux), exit is awaited in a
worker thread that also reaps, and group signals stop once the leader is reaped.

Reading happens only when the caller asks for more (``read()``), so a slow WebSocket
pauses the PTY and, through the kernel's buffer, the process: nothing is buffered here.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import signal
import struct
import subprocess
import termios
from collections.abc import Mapping, Sequence
from typing import Final

__all__ = ["DEFAULT_SIZE", "READ_SIZE", "PtyProcess", "exit_status"]

READ_SIZE: Final = 64 * 1024
# (columns, rows) until the first resize, like a classic terminal.
DEFAULT_SIZE: Final = (80, 24)
TERM: Final = "xterm-256color"
_EOT: Final = b"\x04"


def _set_size(fd: int, width: int, height: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


def _become_controlling_terminal() -> None:  # pragma: no cover - runs in the child
    """In the child, after setsid(): make fd 0 (the PTY slave) the controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def exit_status(returncode: int) -> tuple[int, str]:
    """``Popen.returncode`` → (exit code, message) as a terminal reports them.

    A normal exit N gives (N, ""). Death by signal N gives (128 + N, a message naming the
    signal and containing ``exit code 128+N``), the shell's convention.
    """
    if returncode >= 0:
        return returncode, ""
    number = -returncode
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    code = 128 + number
    return code, f"command terminated by {name}: exit code {code}"


class PtyProcess:
    """A process on a PTY whose master this object owns. Create with ``spawn``."""

    def __init__(self, process: subprocess.Popen[bytes], master: int) -> None:
        self._process: Final = process
        self._master: int | None = master
        self._loop: Final = asyncio.get_running_loop()
        # Set once the leader has exited (pidfd readable, or the fallback thread's wait).
        self._exited: Final = asyncio.Event()
        self._pidfd: int | None = None
        self._watch_exit()

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def exited(self) -> bool:
        """True once the leader has exited (it may not be reaped yet)."""
        return self._exited.is_set()

    @property
    def returncode(self) -> int | None:
        """``Popen.returncode``: None until reaped, negative -N for a death by signal N."""
        return self._process.returncode

    @classmethod
    def spawn(
        cls,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        size: tuple[int, int] = DEFAULT_SIZE,
    ) -> PtyProcess:
        """Start ``argv`` as a session leader with a new PTY as its controlling terminal.

        ``env`` None inherits our environment with ``TERM=xterm-256color``; an explicit
        ``env`` is used as given, with that TERM only if it names none. OSError (e.g.
        FileNotFoundError for an unknown command) propagates with no fd left open.
        """
        if not argv:
            raise ValueError("empty command")
        environment = dict(os.environ if env is None else env)
        if env is None:
            environment["TERM"] = TERM
        else:
            environment.setdefault("TERM", TERM)
        master, slave = os.openpty()  # both non-inheritable; Popen dup2s the slave to 0/1/2
        try:
            _set_size(slave, *size)
            process = subprocess.Popen(  # noqa: S603 - argv comes from the server's owner
                list(argv),
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=environment,
                cwd=cwd,
                start_new_session=True,  # setsid() before preexec_fn runs
                preexec_fn=_become_controlling_terminal,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            # The child has its own copies; keeping ours would stop EIO on the master.
            os.close(slave)
        os.set_blocking(master, False)
        return cls(process, master)

    # --- exit ---------------------------------------------------------------------------

    def _watch_exit(self) -> None:
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            # No pidfds: wait (and reap) in a thread. The child always ends eventually,
            # since every path through the server ends it.
            future = self._loop.run_in_executor(None, self._process.wait)
            future.add_done_callback(lambda _: self._exited.set())
            return
        self._loop.add_reader(self._pidfd, self._on_pidfd)

    def _on_pidfd(self) -> None:
        self._close_pidfd()
        self._exited.set()

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    async def wait_exit(self) -> None:
        """Return once the leader has exited (without reaping it)."""
        await self._exited.wait()

    def signal_group(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the process group, unless the leader was already reaped."""
        if self._process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def reap(self) -> int:
        """Wait for the leader (instant once exited) and return ``Popen.returncode``."""
        return self._process.wait()

    async def terminate(self, grace: float) -> int:
        """End the session's processes and reap the leader; returns ``Popen.returncode``.

        SIGHUP (and SIGCONT, for stopped processes) goes to the process group, as a
        terminal hangup would. If within ``grace`` seconds the leader has not exited or
        someone still holds the terminal (output read here is discarded), the group gets
        SIGKILL. Call after the output reader has stopped.
        """
        if self._process.returncode is None:
            self.signal_group(signal.SIGHUP)
            self.signal_group(signal.SIGCONT)
            try:
                async with asyncio.timeout(grace):
                    await self.wait_exit()
                    while await self.read():
                        pass
            except TimeoutError:
                self.signal_group(signal.SIGKILL)
                await self.wait_exit()
        return self.reap()

    def kill_now(self) -> None:
        """Last resort when we cannot await (a second cancellation): SIGKILL and reap.

        Blocks for as long as the kernel takes to end a SIGKILLed process (milliseconds).
        """
        if self._process.returncode is None:
            # The leader is a session leader, so it is always in its own process group.
            self.signal_group(signal.SIGKILL)
            self.reap()
        self._exited.set()

    # --- terminal I/O -------------------------------------------------------------------

    def _fd(self) -> int:
        if self._master is None:
            raise ValueError("PTY is closed")
        return self._master

    async def _wait_io(self, fd: int, *, write: bool) -> None:
        """Wait until ``fd`` is readable (or writable), without keeping a registration."""
        ready = self._loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        if write:
            self._loop.add_writer(fd, wake)
        else:
            self._loop.add_reader(fd, wake)
        try:
            await ready
        finally:
            if write:
                self._loop.remove_writer(fd)
            else:
                self._loop.remove_reader(fd)

    async def read(self) -> bytes:
        """The next chunk of terminal output; b"" once nobody holds the terminal."""
        fd = self._fd()
        while True:
            try:
                return os.read(fd, READ_SIZE)
            except BlockingIOError:
                await self._wait_io(fd, write=False)
            except OSError as exc:
                # Linux reports a hung-up PTY master as EIO (other systems: b"").
                if exc.errno == errno.EIO:
                    return b""
                raise

    async def write(self, data: bytes) -> None:
        """Write all of ``data`` to the terminal (the process's input).

        Waits while the terminal's input queue is full. Data for a terminal nobody holds
        any more (EIO) is dropped: the process is gone and its status is on the way.
        """
        fd = self._fd()
        view = memoryview(data)
        while view:
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                await self._wait_io(fd, write=True)
                continue
            except OSError as exc:
                if exc.errno == errno.EIO:
                    return
                raise
            view = view[written:]

    async def send_eof(self) -> None:
        """Type the terminal's end-of-file character (VEOF, normally ^D = 0x04)."""
        eof = _EOT
        with contextlib.suppress(OSError, IndexError):
            char = termios.tcgetattr(self._fd())[6][termios.VEOF]
            if isinstance(char, bytes) and len(char) == 1 and char != b"\x00":
                eof = char
        await self.write(eof)

    def resize(self, width: int, height: int) -> None:
        """Set the terminal size in cells; the foreground process group gets SIGWINCH."""
        _set_size(self._fd(), width, height)

    def close(self) -> None:
        """Close the master (a hangup for anyone still holding the slave). Idempotent."""
        self._close_pidfd()
        if self._master is not None:
            master, self._master = self._master, None
            os.close(master)
