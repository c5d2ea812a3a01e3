"""A command's output when its reader goes away: `lesa-bench run EXP | head -2`, a `tee` ended by
the same Ctrl-C that reached the run, the parent of a `--jobs` worker killed.

Python ignores SIGPIPE, so a write to a closed pipe raises BrokenPipeError wherever it happens:
in a run's log line it failed the run. `guard_output` wraps sys.stdout and sys.stderr once, at
the start of a command. The first write that finds its reader gone points the dead file
descriptor elsewhere (no later write fails, nor the interpreter's last flush), and then:

- in a command that trains (`stop=True`), a closed stdout stops the run as SIGTERM does: at its
  next exact resume point, saved and marked interrupted, exit 130 (bench/resume/stops.py); what
  it still prints goes to stderr while that is open (a terminal: the user sees the run's state),
  else nowhere;
- in any other command (`status`, `report`, ...), the rest of the output is dropped and the
  command finishes as it would have.

A closed stderr alone changes nothing but where stderr goes.
"""
from __future__ import annotations

import _thread
import errno
import io
import os
import signal
import sys
import threading

# the reader is gone: a pipe (EPIPE), a socket (ECONNRESET), a terminal that hung up (EIO)
GONE = (errno.EPIPE, errno.ECONNRESET, errno.EIO)
STOPPING = (b"\nstandard output closed (the command reading it ended): stopping the run as for "
            b"Ctrl-C; run the same command to resume it\n")


class _State:
    stop = False                     # a closed stdout stops the command (it trains)
    stdout_closed = False
    stdout_stream = None             # the stdout guard_output wrapped
    lock = threading.Lock()
    identity: dict[int, tuple[int, int] | None] = {}  # fd -> its file when guarded


def _identity(fd: int) -> tuple[int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class GuardedStream:
    """A text stream (sys.stdout or sys.stderr) whose writes never raise for a reader gone."""

    def __init__(self, stream, fd: int | None):
        self._stream, self._fd = stream, fd
        self._dropped = False  # no file descriptor to point elsewhere: drop what comes

    def write(self, text: str) -> int:
        if self._dropped:
            return len(text)
        try:
            return self._stream.write(text)
        except OSError as err:
            if err.errno not in GONE:
                raise
            self._gone(text)
            return len(text)

    def flush(self) -> None:
        if self._dropped:
            return
        try:
            self._stream.flush()
        except OSError as err:
            if err.errno not in GONE:
                raise
            self._gone()

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def _gone(self, text: str | None = None) -> None:
        """The reader is gone: point the descriptor elsewhere, write there what failed (a
        buffered stream kept it; an unbuffered one, PYTHONUNBUFFERED, lost it), then stop."""
        if self._fd is None:
            self._dropped = True
            if self._stream is _State.stdout_stream:
                _closed()
            return
        stdout_closed = _reader_gone(self._fd)
        try:
            if text is not None and isinstance(getattr(self._stream, "buffer", None),
                                               io.RawIOBase):
                self._stream.write(text)
            self._stream.flush()
        except OSError:
            self._dropped = True
        if stdout_closed:
            _closed()

    def __getattr__(self, name):  # fileno, isatty, encoding, buffer, ...
        return getattr(self._stream, name)


def _reader_gone(fd: int) -> bool:
    """Point `fd`, and every guarded descriptor on the same file (2>&1), at stderr (a closed
    stdout in a training command, while stderr is open) or /dev/null. Whether stdout was one;
    in a training command the user is told on stderr."""
    with _State.lock:
        dead = _State.identity.get(fd)
        fds = sorted({fd} | {f for f, ident in _State.identity.items()
                             if dead is not None and ident == dead})
        stderr_alive = 2 not in fds
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            for f in fds:
                os.dup2(2 if f == 1 and _State.stop and stderr_alive else null, f)
                _State.identity[f] = _identity(f)
        finally:
            os.close(null)
    if 1 in fds and stderr_alive and _State.stop and not _State.stdout_closed:
        try:
            os.write(2, STOPPING)
        except OSError:
            pass
    return 1 in fds


def _closed() -> None:
    """stdout lost its reader: a training command stops (once)."""
    with _State.lock:
        first, _State.stdout_closed = not _State.stdout_closed, True
    if first and _State.stop:
        request_stop()


def request_stop() -> None:
    """Stop this command as SIGTERM would: through the run's stop handler once it is installed
    (bench/resume/stops.py), else (still loading, nothing started) a KeyboardInterrupt."""
    if callable(signal.getsignal(signal.SIGTERM)):
        os.kill(os.getpid(), signal.SIGTERM)
    elif threading.current_thread() is threading.main_thread():
        raise KeyboardInterrupt()
    else:
        _thread.interrupt_main()


def output_closed() -> bool:
    """Whether this command's stdout lost its reader."""
    return _State.stdout_closed


def guard_output(stop: bool = False):
    """Wrap sys.stdout and sys.stderr (module docstring); returns the function that puts them
    back (main() calls it on return, so that an in-process caller gets its streams back)."""
    _State.stop, _State.stdout_closed = stop, False
    _State.stdout_stream = sys.stdout
    saved = sys.stdout, sys.stderr
    for name, fd in (("stdout", 1), ("stderr", 2)):
        stream = getattr(sys, name)
        if isinstance(stream, GuardedStream):
            continue
        try:
            own = stream.fileno() == fd
        except (AttributeError, OSError, ValueError):  # a test's capture: no descriptor
            own = False
        if own:
            _State.identity[fd] = _identity(fd)
        setattr(sys, name, GuardedStream(stream, fd if own else None))

    def restore() -> None:
        sys.stdout, sys.stderr = saved
        _State.stop = False
    return restore
