"""Pieces of a source tokenized in parallel, handed back in order.

Each worker process loads one tiktoken encoder and reads its pieces itself (``sources.read_documents``),
so the main process only receives token ids (2 bytes a token) and writes them: reading,
tokenizing and writing overlap. At most two pieces per worker are in flight, which bounds memory
by the pieces, not by the corpus. Workers start with ``spawn``: the main process may already run
JAX's threads, which ``fork`` would copy mid-flight.

Workers ignore SIGINT and SIGTERM (the main process stops them at a piece boundary, so a stop
never loses a half-written piece) and exit when the main process dies, even by SIGKILL.
"""

from __future__ import annotations

import collections
import concurrent.futures
import concurrent.futures.process
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from gpt2jax.data import sources
from gpt2jax.data.shards import TOKEN_DTYPE
from gpt2jax.data.tokenizer import EOT_TOKEN_ID, get_tokenizer

PIECES_IN_FLIGHT_PER_WORKER = 2
_RESULT_POLL_S = 0.2  # how often the main process looks up from a pending piece for a stop request
_DOCUMENTS_PER_CHUNK = 1024  # between checks of the stop event, and per uint16 conversion

_stop_event = None  # set in each worker by _start_worker


def tokenize_piece(piece: sources.Piece) -> tuple[np.ndarray, np.ndarray] | None:
    """(tokens [N] uint16, document lengths [documents] int64) of one piece; None if the pool is stopping.

    Each non-empty document is followed by <|endoftext|>; an empty one adds no token and has length 0,
    but still counts as a document for the carving rule.
    """
    encoder = get_tokenizer()
    chunks, lengths = [], []
    documents = sources.read_documents(piece)
    while True:
        texts = [text for _, text in zip(range(_DOCUMENTS_PER_CHUNK), documents)]
        if not texts:
            break
        if _stop_event is not None and _stop_event.is_set():
            return None
        # encode_ordinary semantics (a literal "<|endoftext|>" in a text stays text), as a numpy buffer:
        # no Python int per token. Measured the same speed as encode_ordinary on one core.
        ids = [encoder.encode_to_numpy(text, disallowed_special=()) if text else None for text in texts]
        chunk_lengths = [len(token_ids) + 1 if token_ids is not None else 0 for token_ids in ids]
        chunk = np.empty(sum(chunk_lengths), dtype=TOKEN_DTYPE)
        position = 0
        for token_ids, length in zip(ids, chunk_lengths):
            if length:
                chunk[position : position + length - 1] = token_ids
                chunk[position + length - 1] = EOT_TOKEN_ID
                position += length
        chunks.append(chunk)
        lengths += chunk_lengths
    tokens = np.concatenate(chunks) if chunks else np.empty(0, dtype=TOKEN_DTYPE)
    return tokens, np.asarray(lengths, dtype=np.int64)


def _start_worker(stop_event) -> None:
    global _stop_event
    _stop_event = stop_event
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    get_tokenizer()  # one encoder per worker, loaded once
    threading.Thread(target=_exit_with_parent, daemon=True).start()


def _exit_with_parent() -> None:
    """Ends this worker when the main process dies: a SIGKILL gives it no chance to stop the pool."""
    multiprocessing.connection.wait([multiprocessing.parent_process().sentinel])
    os._exit(1)


class _InProcess:
    """The executor interface for one worker: each piece tokenized in this process when asked for."""

    def submit(self, function, *args) -> concurrent.futures.Future:
        future = concurrent.futures.Future()
        try:
            future.set_result(function(*args))
        except Exception as error:
            future.set_exception(error)
        return future

    def shutdown(self, **_) -> None:
        pass


class Tokenizers:
    """A pool of tokenizer processes (none for workers=1), used as a context manager."""

    def __init__(self, workers: int):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}.")
        self.workers = workers
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._executor = (
            _InProcess()
            if workers == 1
            else concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=context, initializer=_start_worker, initargs=(self._stop,)
            )
        )

    def __enter__(self) -> Tokenizers:
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()  # running pieces return at their next chunk of documents
        self._executor.shutdown(wait=True, cancel_futures=True)

    def in_order(
        self, pieces: Iterable[tuple[int, sources.Piece]], stop_requested: Callable[[], bool]
    ) -> Iterator[tuple[int, tuple[np.ndarray, np.ndarray]]]:
        """(index, tokenize_piece result) for each (index, piece), in the order given.

        pieces is consumed lazily, a few ahead of the piece handed back, so its producer may skip
        pieces that turned out to be unneeded. Returns early once stop_requested() is true.
        """
        in_flight = PIECES_IN_FLIGHT_PER_WORKER * self.workers if self.workers > 1 else 1
        pending = collections.deque()
        pieces = iter(pieces)
        while True:
            while len(pending) < in_flight and (item := next(pieces, None)) is not None:
                pending.append((item[0], self._executor.submit(tokenize_piece, item[1])))
            if not pending or stop_requested():
                return
            index, future = pending.popleft()
            result = self._wait(future, stop_requested)
            if result is None:
                return
            yield index, result

    def _wait(self, future: concurrent.futures.Future, stop_requested: Callable[[], bool]):
        while True:
            try:
                return future.result(timeout=_RESULT_POLL_S)
            except concurrent.futures.TimeoutError:
                if stop_requested():
                    return None
            except concurrent.futures.process.BrokenProcessPool:
                raise RuntimeError(
                    "a tokenizer worker died (killed, out of memory, or started from a script that lacks an "
                    "`if __name__ == '__main__':` guard); run the same command again to continue, with fewer "
                    "workers (--workers, data.workers) if memory ran out."
                ) from None
