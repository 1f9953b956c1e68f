"""How a command's end reads: another library's error inside a one-sentence message, and a stop by signal."""

from __future__ import annotations

import contextlib
import signal


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


_deferred = {"depth": 0, "signum": None}  # the main thread's: signal handlers run only there


def stop_now(signum, frame) -> None:
    """The signal handler of a command that stops where it is: it raises ``Stopped``, at once or, inside
    ``stops_deferred``, when that block ends."""
    if _deferred["depth"]:
        _deferred["signum"] = _deferred["signum"] or signum
        return
    raise Stopped(signum)


@contextlib.contextmanager
def stops_deferred():
    """A block a stop must not cut in two (starting a checkpoint's save: a ``Stopped`` raised inside
    Orbax's save left a step half-written, and the stop's message named the step before it)."""
    _deferred["depth"] += 1
    try:
        yield
    finally:
        _deferred["depth"] -= 1
    signum = _deferred["signum"]
    if signum is not None and not _deferred["depth"]:
        _deferred["signum"] = None
        raise Stopped(signum)
