"""Training results as the scaling fits read them: one row per (model, token count, loss) point.

A results CSV has the columns ``n_params``, ``n_tokens`` and ``loss``, and optionally:
- ``flops``: training FLOPs of the point; 6 * n_params * n_tokens when absent.
- ``run``: an id shared by the checkpoints of one training run, so that its rows form a
    training curve. Without it every row is the final point of its own run.
- ``budget``: the nominal FLOP budget of the IsoFLOP profile the run belongs to.
Other columns are ignored.
"""

from __future__ import annotations

import csv
import dataclasses
import pathlib

import numpy as np

REQUIRED_COLUMNS = ("n_params", "n_tokens", "loss")


@dataclasses.dataclass(frozen=True)
class ScalingPoints:
    """Parallel arrays, one entry per point; ``run`` and ``budget`` are None when not recorded."""

    n_params: np.ndarray
    n_tokens: np.ndarray
    loss: np.ndarray
    flops: np.ndarray
    run: np.ndarray | None = None
    budget: np.ndarray | None = None

    @classmethod
    def from_arrays(cls, n_params, n_tokens, loss, *, flops=None, run=None, budget=None) -> "ScalingPoints":
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
        return cls(n_params, n_tokens, loss, flops, run, budget)

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


def load_results(path) -> ScalingPoints:
    """Reads a results CSV; a missing file, column or number raises an error naming it."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file {path} does not exist; pass the CSV a sweep wrote.")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [name for name in REQUIRED_COLUMNS if name not in columns]
        if missing:
            raise ValueError(
                f"{path} lacks the column(s) {', '.join(missing)}; it needs {', '.join(REQUIRED_COLUMNS)}."
            )
        rows = list(reader)
    if not rows:
        raise ValueError(f"{path} has a header but no rows.")

    def numbers(name):
        values = []
        for line, row in enumerate(rows, start=2):
            try:
                values.append(float(row[name]))
            except (TypeError, ValueError):
                raise ValueError(f"{path} line {line}: {name} is {row[name]!r}, not a number.") from None
        return values

    required = [numbers(name) for name in REQUIRED_COLUMNS]
    optional = {name: numbers(name) for name in ("flops", "budget") if name in columns}
    run = [row["run"] for row in rows] if "run" in columns else None
    try:
        return ScalingPoints.from_arrays(*required, run=run, **optional)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
