"""The files of a training workdir and of a sweep workdir, named in one place.

A training workdir (``--workdir`` of ``gpt2jax.main``) holds
  config.json     the config it trains with, written at start
  metrics.jsonl   one JSON object per log line
  checkpoints/    Orbax steps
  tensorboard/    events, with train.tensorboard=True

A sweep workdir (``--workdir`` of ``python -m gpt2jax.scaling sweep``) holds
  sweep.json      the sweep config, its points and the data's meta.json
  points/RUN/     each point's (and each trunk's) training workdir
  locks/JOB.lock  held by the worker running that job
  results.csv     one row per finished point
  sessions.jsonl  one line per invocation of a worker
"""

from __future__ import annotations

import json
from pathlib import Path

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"

SWEEP_FILE = "sweep.json"
RESULTS_FILE = "results.csv"
SESSIONS_FILE = "sessions.jsonl"
POINTS_DIR = "points"
LOCKS_DIR = "locks"


def load_run_config(workdir: str | Path):
    """The config a training workdir was trained with."""
    import ml_collections

    path = Path(workdir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{workdir} holds no {CONFIG_FILE}: is it a gpt2jax workdir (--workdir of a training run)?"
        )
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def read_metrics(workdir: str | Path) -> list[dict]:
    """A run's metrics.jsonl, one record per step.

    A resumed run logs again the steps after its last checkpoint, and the later record of
    a step is the one the run continued from.
    """
    path = Path(workdir) / METRICS_FILE
    if not path.is_file():
        return []
    by_step = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # blank, or cut short by a kill mid-write
        by_step[record["step"]] = record
    return [by_step[step] for step in sorted(by_step)]


def results_path(sweep_workdir: str | Path) -> Path:
    """A sweep workdir's results.csv, which must exist."""
    path = Path(sweep_workdir) / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{sweep_workdir} holds no {RESULTS_FILE}; run python -m gpt2jax.scaling sweep "
            f"--workdir {sweep_workdir} first."
        )
    return path
