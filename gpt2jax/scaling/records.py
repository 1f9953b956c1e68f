"""A sweep's results.csv: one row per trained point, written whole and atomically.

Each write takes the file's lock, reads the rows, adds or replaces the point's row, writes a
temporary file beside it and renames it over the old one: a reader (``scaling fit``, a plot,
another worker) sees the old table or the new one, never half a row, and two workers
never lose each other's rows. ``n_params``, ``n_tokens``, ``loss``, ``flops``, ``budget`` and
``run`` are the columns ``scaling.results.load_results`` reads.
"""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path

from gpt2jax.locks import FileLock
from gpt2jax.workdir import write_atomically

COLUMNS = (
    "run",
    "kind",
    "schedule",
    "seed",
    "n_layer",
    "n_head",
    "n_embd",
    "vocab_size",
    "block_size",
    "batch_size",
    "steps",
    "learning_rate",
    "warmup_steps",
    "trunk",
    "branch_step",
    "lr_multiplier",
    "n_params",
    "n_params_non_embedding",
    "n_tokens",
    "budget",
    "flops",
    "flops_6n",
    "flops_6n_attention",
    "flops_chinchilla",
    "flops_spent",
    "epochs",
    "train_loss",
    "val_loss",
    "loss",
    "wall_s",
)


def read_rows(path: str | Path) -> list[dict]:
    """The rows of finished points. A row cut short is left out, with a warning, and is not a finished point.

    Every row is written whole and ends in a newline, so a row that lacks columns, or a last
    row without its newline, was cut (by a copy, a crash or a full disk on a filesystem that
    does not rename atomically); the next ``upsert_row`` writes the file without it.
    """
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text()
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    complete = [row for row in rows if None not in row and None not in row.values()]
    if rows and complete and complete[-1] is rows[-1] and not text.endswith("\n"):
        complete.pop()
    if len(complete) < len(rows):
        warnings.warn(
            f"{path} holds {len(rows) - len(complete)} row(s) cut short; left them out, so their points run again."
        )
    return complete


def upsert_row(path: str | Path, row: dict) -> None:
    """Adds ``row`` to the CSV at ``path``, replacing the row of the same ``run``."""
    path = Path(path)
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ValueError(f"results row has unknown columns {sorted(unknown)}; add them to records.COLUMNS.")
    with FileLock(path.with_name(path.name + ".lock"), stale_after=60.0):
        rows = [old for old in read_rows(path) if old["run"] != row["run"]] + [row]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_atomically(path, text.getvalue())
