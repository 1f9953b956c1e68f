"""A sweep's results.csv, written by the runner and read by the fits: one row per (model, token count, loss) point.

Each write takes the file's lock, reads the rows, adds or replaces the point's row, writes a
temporary file beside it and renames it over the old one: a reader (``scaling fit``, a plot,
another worker) sees the old table or the new one, never half a row, and two workers
never lose each other's rows.

A results CSV has the columns ``n_params``, ``n_tokens`` and ``loss``, and optionally:
- ``flops``: training FLOPs of the point; 6 * n_params * n_tokens when absent.
- ``run``: an id shared by the checkpoints of one training run, so that its rows form a
    training curve. Without it every row is the final point of its own run.
- ``budget``: the nominal FLOP budget of the IsoFLOP profile the run belongs to.
- ``seed``: the training seed; rows of one shape and token count with different seeds give
    the seed-to-seed spread.
- ``lr_multiplier``: rows other than 1 are a learning-rate check, not points of the law; they
    are left out.
- ``n_params_non_embedding``, ``n_layer``, ``n_embd``, ``block_size``: what ``params='non_embedding'``
    and ``flops='6n_attention'`` read.
Other columns are ignored.

``params`` chooses N: 'total' (Chinchilla's count, the ``n_params`` column) or 'non_embedding'
(Kaplan's). ``flops`` chooses C: '6n' is 6ND with that N (the ``flops`` column when N is total and
it has one), '6n_attention' adds PaLM's attention term 12 L d T per token (flops.flops_per_token_palm).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import pathlib
import warnings
from pathlib import Path

import numpy as np

from gpt2jax.files.atomic import write_atomically
from gpt2jax.files.locks import FileLock
from gpt2jax.files.workdir import RESULTS_FILE, SWEEP_FILE, read_json
from gpt2jax.training.eval_tasks import TASKS, task_columns, wilson_interval

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
    *task_columns(),  # a sweep whose base config names train.eval_tasks: each point's final scores
)


def read_rows(path: str | Path) -> list[dict]:
    """The rows of finished points. A row cut short, garbled or longer than its header is left out, with a
    warning naming its line, and is not a finished point.

    Every row is written whole and ends in a newline, so a row that lacks columns, or a last
    row without its newline, was cut (by a copy, a crash or a full disk on a filesystem that
    does not rename atomically); a row whose numbers ``load_results`` would refuse
    (``row_problem``) was garbled; a row with more fields than the header was edited by hand.
    Either way its point runs again, and the next ``upsert_row`` (or ``repair``) writes the
    file without it, so the runner and the fits agree on the points.
    """
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text()
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = list(reader)
    columns = reader.fieldnames or []
    finished, garbled, cut, long = [], [], [], []
    for line, row in enumerate(rows, start=2):
        shape = _shape_problem(row, columns)
        if shape is None and row is rows[-1] and not text.endswith("\n"):
            shape = "it is cut short"
        if shape == "it is cut short":
            cut.append(line)
        elif shape is not None:
            long.append(f"line {line}")
        elif row_problem(row) is not None:
            garbled.append(f"run {row['run']!r}: {row_problem(row)}")
        else:
            finished.append(row)
    if len(finished) < len(rows):
        parts = [f"{len(garbled)} garbled row(s) ({'; '.join(garbled[:3])})"] if garbled else []
        parts += [f"{len(cut)} row(s) cut short"] if cut else []
        if long:
            parts.append(
                f"{len(long)} row(s) with more fields than its header's {len(columns)} ({', '.join(long[:3])})"
            )
        warnings.warn(f"{path} holds {' and '.join(parts)}; left them out, so their points run again.")
    return finished


def _shape_problem(row: dict, columns: list[str]) -> str | None:
    """Why a csv.DictReader row does not fit its header: fewer fields (cut short) or more, or None."""
    if None in row:  # DictReader's key for the fields past the header's
        return f"it has {len(columns) + len(row[None])} fields where the header names {len(columns)} columns"
    if None in row.values():
        return "it is cut short"
    return None


def row_problem(row: dict) -> str | None:
    """Why a row of a complete line is no point ``load_results`` could fit, or None.

    Its n_params, n_tokens and loss must be positive finite numbers, and every other number it
    has (flops, budget, ...), when given, too: a fit takes their logarithm.
    """
    for name in REQUIRED_COLUMNS + OPTIONAL_NUMBERS:
        value = row.get(name)
        if name in OPTIONAL_NUMBERS and value in ("", None):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            return f"{name} is {value!r}, not a number"
        if not (math.isfinite(number) and number > 0):
            return f"{name} is {value!r}, not a positive finite number"
    return None


def scored_tasks(rows: list[dict]) -> list[str]:
    """The eval tasks every one of ``rows`` carries a score of (none for a sweep without train.eval_tasks)."""
    return [task for task in TASKS if rows and all(row.get(f"{task}_acc_norm") not in ("", None) for row in rows)]


def task_score(row: dict, task: str) -> tuple[float, int, list[float]]:
    """(acc_norm, n, its 95% Wilson interval) of ``task`` in a results row."""
    accuracy, n = float(row[f"{task}_acc_norm"]), int(float(row[f"{task}_n"]))
    return accuracy, n, wilson_interval(round(accuracy * n), n)


def upsert_row(path: str | Path, row: dict) -> None:
    """Adds ``row`` to the CSV at ``path``, replacing the row of the same ``run``."""
    path = Path(path)
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ValueError(f"results row has unknown columns {sorted(unknown)}; add them to results.COLUMNS.")
    with FileLock(path.with_name(path.name + ".lock"), stale_after=60.0):
        _write_rows(path, [old for old in read_rows(path) if old["run"] != row["run"]] + [row])


def repair(path: str | Path) -> int:
    """Rewrites the CSV at ``path`` with its finished points only; the rows dropped (their points run again)."""
    path = Path(path)
    with FileLock(path.with_name(path.name + ".lock"), stale_after=60.0):
        before = len(list(csv.DictReader(io.StringIO(path.read_text(), newline=""))))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the rows dropped are the answer, not a warning
            rows = read_rows(path)
        _write_rows(path, rows)
    return before - len(rows)


def _write_rows(path: Path, rows: list[dict]) -> None:
    """Writes ``rows`` under COLUMNS and, after them, the columns a user added to the file (a ``note``,
    say), kept as they are: they ended the sweep in "dict contains fields not in fieldnames"."""
    added = []
    if path.is_file():
        header = next(csv.reader(io.StringIO(path.read_text(), newline="")), [])
        added = [column for column in header if column not in COLUMNS and column]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=[*COLUMNS, *added], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(path, text.getvalue())


REQUIRED_COLUMNS = ("n_params", "n_tokens", "loss")
# The other numbers load_results may read; lr_multiplier is compared with 1.
OPTIONAL_NUMBERS = (
    "n_params_non_embedding",
    "flops",
    "budget",
    "n_layer",
    "n_embd",
    "block_size",
    "lr_multiplier",
    *task_columns(),
)
PARAM_COLUMNS = {"total": "n_params", "non_embedding": "n_params_non_embedding"}
# What N counts, in the words every figure and table of a study names it by: a study's figures
# once gave N as all parameters on one and as non-embedding ones on another (404k against 1.76k
# for one model), neither saying which.
PARAM_NAMES = {"total": "parameters in all (embeddings too)", "non_embedding": "non-embedding parameters"}
FLOP_COUNTS = ("6n", "6n_attention")


@dataclasses.dataclass(frozen=True)
class ScalingPoints:
    """Parallel arrays, one entry per point; ``run`` and ``budget`` are None when not recorded."""

    n_params: np.ndarray
    n_tokens: np.ndarray
    loss: np.ndarray
    flops: np.ndarray
    run: np.ndarray | None = None
    budget: np.ndarray | None = None
    seed: np.ndarray | None = None

    @classmethod
    def from_arrays(cls, n_params, n_tokens, loss, *, flops=None, run=None, budget=None, seed=None) -> "ScalingPoints":
        """Checks the arrays; FLOPs default to 6ND."""
        n_params = np.asarray(n_params, dtype=float)
        n_tokens = np.asarray(n_tokens, dtype=float)
        loss = np.asarray(loss, dtype=float)
        flops = 6.0 * n_params * n_tokens if flops is None else np.asarray(flops, dtype=float)
        numeric = {"n_params": n_params, "n_tokens": n_tokens, "loss": loss, "flops": flops}
        if budget is not None:
            numeric["budget"] = budget = np.asarray(budget, dtype=float)
        for name, values in numeric.items():
            if values.shape != n_params.shape or values.ndim != 1:
                raise ValueError(
                    f"{name} has shape {values.shape} but n_params has {n_params.shape}; give one value per point."
                )
            if not np.all(np.isfinite(values) & (values > 0)):
                raise ValueError(f"every {name} must be a positive finite number, since the fits take its logarithm.")
        if run is not None:
            run = np.asarray(run)
            if run.shape != n_params.shape:
                raise ValueError(
                    f"run has shape {run.shape} but n_params has {n_params.shape}; give one run id per point."
                )
        if seed is not None:
            seed = np.asarray(seed)
            if seed.shape != n_params.shape:
                raise ValueError(f"seed has shape {seed.shape} but n_params has {n_params.shape}; give one per point.")
        return cls(n_params, n_tokens, loss, flops, run, budget, seed)

    def __len__(self) -> int:
        return len(self.loss)

    def subset(self, index) -> "ScalingPoints":
        """The points at ``index`` (a boolean mask or integer indices, repeats allowed)."""
        columns = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        return ScalingPoints(**{name: None if values is None else values[index] for name, values in columns.items()})

    def has_curves(self) -> bool:
        """Whether some run has more than one checkpoint."""
        return self.run is not None and len(np.unique(self.run)) < len(self.run)

    def final_points(self) -> "ScalingPoints":
        """Each run's last checkpoint (most tokens): the points a model trained to that length gives."""
        if self.run is None:
            return self
        last = {}
        for index, (run, tokens) in enumerate(zip(self.run, self.n_tokens)):
            if run not in last or tokens > self.n_tokens[last[run]]:
                last[run] = index
        return self.subset(np.array(sorted(last.values())))


def _read_rows(path: pathlib.Path) -> tuple[list[str], list[dict]]:
    if not path.is_file():
        raise FileNotFoundError(f"results file {path} does not exist; pass the CSV a sweep wrote.")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        rows = list(reader)
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if missing:
        raise ValueError(f"{path} lacks the column(s) {', '.join(missing)}; it needs {', '.join(REQUIRED_COLUMNS)}.")
    if not rows:
        raise ValueError(f"{path} has a header but no rows.")
    for line, row in enumerate(rows, start=2):
        problem = _shape_problem(row, columns) or row_problem(row)
        if problem:
            raise ValueError(f"{path} line {line}: {problem}; {_remedy(path)}.")
    return columns, [dict(row, _line=line, _path=path) for line, row in enumerate(rows, start=2)]


def _remedy(path: pathlib.Path) -> str:
    """What fixes a bad row: the sweep's repair for a sweep's results.csv, the user's hand for their own file."""
    if path.name == RESULTS_FILE and (path.parent / SWEEP_FILE).is_file():
        return (
            f"python -m gpt2jax.scaling sweep --workdir {path.parent} --repair drops the rows that are no finished "
            "point, and the sweep runs those points again"
        )
    return "fix or remove that row"


def load_results(path, params: str = "total", flops: str = "6n") -> ScalingPoints:
    """Reads one results CSV or several (a list); a missing file, column or number raises an error naming it."""
    if params not in PARAM_COLUMNS:
        raise ValueError(f"params {params!r} is not one of {', '.join(PARAM_COLUMNS)}.")
    if flops not in FLOP_COUNTS:
        raise ValueError(f"flops {flops!r} is not one of {', '.join(FLOP_COUNTS)}.")
    paths = [pathlib.Path(p) for p in (path if isinstance(path, (list, tuple)) else [path])]
    tables = [_read_rows(p) for p in paths]
    columns = set.intersection(*(set(table_columns) for table_columns, _ in tables))
    rows = [row for _, table_rows in tables for row in table_rows]
    needed = {PARAM_COLUMNS[params]}
    if flops == "6n_attention":
        needed |= {"n_layer", "n_embd", "block_size"}
    absent = sorted(needed - columns)
    if absent:
        raise ValueError(
            f"{', '.join(map(str, paths))} lack(s) the column(s) {', '.join(absent)} that params={params} and "
            f"flops={flops} read; a sweep's results.csv has them."
        )

    def numbers(name, chosen):
        values = []
        for row in chosen:
            try:
                values.append(float(row[name]))
            except (TypeError, ValueError):
                raise ValueError(
                    f"{row['_path']} line {row['_line']}: {name} is {row[name]!r}, not a number; "
                    f"{_remedy(row['_path'])}."
                ) from None
        return np.array(values)

    if "lr_multiplier" in columns:
        rows = [row for row in rows if row["lr_multiplier"] in ("", None) or float(row["lr_multiplier"]) == 1.0]
    n_params, n_tokens, loss = numbers(PARAM_COLUMNS[params], rows), numbers("n_tokens", rows), numbers("loss", rows)
    if flops == "6n":
        use_column = params == "total" and "flops" in columns
        compute = numbers("flops", rows) if use_column else 6.0 * n_params * n_tokens
    else:
        attention = 12.0 * numbers("n_layer", rows) * numbers("n_embd", rows) * numbers("block_size", rows)
        compute = (6.0 * n_params + attention) * n_tokens
    optional = {name: numbers(name, rows) for name in ("budget",) if name in columns}
    run = [row["run"] for row in rows] if "run" in columns else None
    seed = [row["seed"] for row in rows] if "seed" in columns else None
    try:
        return ScalingPoints.from_arrays(n_params, n_tokens, loss, flops=compute, run=run, seed=seed, **optional)
    except ValueError as error:
        raise ValueError(f"{', '.join(map(str, paths))}: {error}") from None


def param_axis(params: str, symbol: str = "N") -> str:
    """An axis or column label for a count of ``params`` (a key of ``PARAM_COLUMNS``): 'N, non-embedding parameters'."""
    return f"{symbol}, {PARAM_NAMES[params]}"


def sweep_param_count(workdir) -> str:
    """The parameter count (``params``) a sweep workdir's config chose: 'total' unless it says otherwise.

    The one definition of N for a study: its figures and its report read it here."""
    path = pathlib.Path(workdir) / SWEEP_FILE
    if not path.is_file():
        return "total"
    config = read_json(path, remedy="restore it, or run the sweep again in a new --workdir").get("config")
    if not isinstance(config, dict):
        raise ValueError(f"{path} holds no sweep config; restore it, or run the sweep again in a new --workdir.")
    return config.get("params", "total")
