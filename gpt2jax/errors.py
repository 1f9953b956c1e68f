"""How another library's error reads inside one of gpt2jax's one-sentence messages."""

from __future__ import annotations


def first_line(error: BaseException, limit: int | None = None) -> str:
    """The first line of ``error``'s text (its type's name when it has none), cut to ``limit`` characters.

    pyarrow, TensorStore, huggingface_hub and XLA put a multi-line report, often a C++ trace,
    behind their first line; the first line is what says what went wrong.
    """
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line if limit is None or len(line) <= limit else line[: limit - 3] + "..."
