"""How a command's end reads: another library's error inside a one-sentence message, and a stop by signal."""

from __future__ import annotations

import contextlib
import os
import signal
import threading


def first_line(error: BaseException, limit: int | None = None) -> str:
    """The first line of ``error``'s text (its type's name when it has none), cut to ``limit`` characters.

    pyarrow, TensorStore, huggingface_hub and XLA put a multi-line report, often a C++ trace,
    behind their first line; the first line is what says what went wrong.
    """
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line if limit is None or len(line) <= limit else line[: limit - 3] + "..."


class Stopped(SystemExit):
    """A command stopped by SIGTERM or SIGINT: it exits 128 + the signal's number after its ``finally`` clauses.

    ``message``, when the code that stopped knows it (what was saved, how to go on), is the one
    line the command prints.
    """

    def __init__(self, signum: int, message: str | None = None):
        super().__init__(128 + signum)
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.message = message


# The stop a signal asked for, and how many blocks stop at points of their own choosing. Signal
# handlers run only in the main thread, between two of its bytecodes.
_stop = {"signum": None, "cooperative": 0, "anywhere": 0}


def request_stop(signum, frame) -> None:
    """The handler of SIGTERM and SIGINT: records the stop, which the code stops at where it chooses.

    A handler that raises lands wherever the main thread is, inside JAX's callbacks too: of 8
    SIGTERMs sent 2 to 12 s after ``main`` started, 2 ended in a segfault (exit 139) and 2 were
    swallowed by ``_xla_gc_callback`` ("Exception ignored") and trained on to exit 0. So the
    handler records the signal, and the code checks it where it chooses (``check_stop``):
    training, prepare and a sweep (``stopping_at_checkpoints``) between steps and between their
    start-up phases, every command before it starts and as it ends (``cli.guarded``). Only
    inside ``stopping_anywhere`` (commands that only read: evaluate, sample, export) does it
    also raise ``Stopped`` where the code is; the record makes the exit code 128 + the signal's
    number even where that raise is swallowed. A second signal ends the process at once,
    without its ``finally`` clauses: a save cut short is never committed, and a dead process's
    locks are broken by the next one.
    """
    # The record is the first thing done. A stop sent while ml_dtypes' C extension loaded (inside import jax)
    # was lost in 2 of 40 tries under load, the handler writing nothing, when its first line was an enum
    # lookup; if that line failed, CPython had already cleared the signal. Not yet shown to be the cause.
    if _stop["signum"] is not None:
        os.write(2, f"stopped at once by a second {signal.Signals(signum).name}.\n".encode())
        os._exit(128 + signum)
    _stop["signum"] = signum
    if _stop["anywhere"] and not _stop["cooperative"]:
        raise Stopped(signum)


def stop_requested() -> int | None:
    """The number of the signal that asked for a stop, or None."""
    return _stop["signum"]


def clear_stop() -> None:
    """Forgets a stop once the command it stopped has ended (an in-process caller goes on)."""
    _stop["signum"] = None


def check_stop(message=None) -> None:
    """Raises ``Stopped`` if a signal asked for a stop; ``message(name)`` is the line it ends with."""
    signum = _stop["signum"]
    if signum is not None:
        raise Stopped(signum, message(signal.Signals(signum).name) if message else None)


@contextlib.contextmanager
def stopping_at_checkpoints():
    """A block that stops only where it calls ``check_stop`` (see ``request_stop``).

    In the main thread, the block handles SIGTERM and SIGINT itself where nothing else does (a
    library caller of ``loop.run`` or ``prepare``); a command's handlers (``cli.guarded``) stay.
    """
    installed = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            if signal.getsignal(signum) in (signal.SIG_DFL, signal.default_int_handler):
                installed[signum] = signal.signal(signum, request_stop)
    _stop["cooperative"] += 1
    try:
        yield
    finally:
        _stop["cooperative"] -= 1
        for signum, handler in installed.items():
            signal.signal(signum, handler)
        if installed:
            clear_stop()  # the stop was this block's to act on, and it has


@contextlib.contextmanager
def stopping_anywhere():
    """A block a stop may cut wherever it is (see ``request_stop``), unless a ``stopping_at_checkpoints``
    block inside it is running."""
    _stop["anywhere"] += 1
    try:
        yield
    finally:
        _stop["anywhere"] -= 1
