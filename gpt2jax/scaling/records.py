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
import os
import tempfile
from pathlib import Path

from gpt2jax.scaling.locks import FileLock

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
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


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


def write_atomically(path: Path, text: str) -> None:
    """Replaces ``path`` by a file holding ``text``: readers see the old file or the new one, whole."""
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w") as file:
            os.fchmod(file.fileno(), 0o644)  # mkstemp's 0600 would hide the results from other users
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
