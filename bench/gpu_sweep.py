"""The scaling bet in one process: unpack and tokenize a corpus, tune, train the lower budgets, predict the top
budget, train it, fit, plot and report, then pack what a device run may bring back (at most 8 files).

    python bench/gpu_sweep.py [--config experiments/gpu_english.py] [--corpus .corpus/english.tar.xz]
        [--workdir runs/gpu_english] [--out $OUT]

The corpus is a ``.tar.xz`` of JSONL files (``scripts/pack_english.sh`` packs ``data/english``), unpacked
into ``data/english`` under the current directory, where the config's ``text:data/english/*.jsonl`` finds
it, and tokenized on every core before the sweep starts. The prediction (``backtest --predict``, stamped
``predicted_at``) is written before the sweep's second session, the one that trains the top budget, starts
(its ``started`` in sessions.jsonl). Each command runs in this process (``gpt2jax.cli.scaling.main``), so
JAX starts once and every program compiles once (into the workdir's compilation cache).

When a GPU is lent, from the checkout the device tool sends (the wheels and the corpus carried):
    run(command="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 || exit;
        timeout -s TERM 500 python3 bench/gpu_sweep.py --out $OUT", carry=[".whl", ".corpus"], timeout_s=560)
(a SIGTERM stops the sweep at its next check and the driver still packs what it has; not SIGINT, which a
command started in the background ignores).

What comes back under --out (PACKED): results.csv, sessions.jsonl (the sweep's sessions, then the tuning scan's,
each marked by ``sweep``), tuning.json, prediction.json, fit.json (for ``scaling budget --fit``), REPORT.md, driver.json
(each stage's start and seconds, the corpus's sizes) and details.tar.gz (the figures, the tuning scan's
results and every point's metrics.jsonl). A stage that fails still leaves the files before it packed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import shutil
import sys
import tarfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CORPUS_DIR = Path("data") / "english"  # where the configs' text:data/english/*.jsonl reads it
DEFAULT_CORPUS = REPO / ".corpus" / "english.tar.xz"  # what scripts/pack_english.sh writes
PACKED = (
    "results.csv",
    "sessions.jsonl",
    "tuning.json",
    "prediction.json",
    "fit.json",
    "REPORT.md",
    "driver.json",
    "details.tar.gz",
)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Stages:
    """Each stage's UTC start and seconds, written to driver.json as the run goes."""

    def __init__(self, path: Path, facts: dict):
        self.path = path
        self.record = {**facts, "stages": []}

    @contextlib.contextmanager
    def stage(self, name: str):
        entry = {"stage": name, "started": now()}
        self.record["stages"].append(entry)
        clock = time.perf_counter()
        try:
            yield entry
        finally:
            entry["seconds"] = round(time.perf_counter() - clock, 2)
            self.path.write_text(json.dumps(self.record, indent=2) + "\n")


def scaling(*argv: str) -> str:
    """Runs ``python -m gpt2jax.scaling ARGV`` in this process; returns what it printed."""
    from gpt2jax.cli.scaling import main

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main([str(arg) for arg in argv])
    sys.stdout.write(printed.getvalue())
    return printed.getvalue()


def unpack(corpus: Path) -> dict:
    """The corpus unpacked into CORPUS_DIR (emptied first); its compressed and unpacked sizes."""
    if not corpus.is_file():
        raise FileNotFoundError(f"no corpus at {corpus}; pack one with scripts/pack_english.sh, or pass --corpus.")
    shutil.rmtree(CORPUS_DIR, ignore_errors=True)
    CORPUS_DIR.mkdir(parents=True)
    with tarfile.open(corpus, "r:xz") as archive:
        archive.extractall(CORPUS_DIR, filter="data")
    text_bytes = sum(path.stat().st_size for path in CORPUS_DIR.rglob("*") if path.is_file())
    return {"corpus": str(corpus), "compressed_bytes": corpus.stat().st_size, "text_bytes": text_bytes}


def tokenize(config) -> dict:
    """The sweep's corpus tokenized (every core), as the sweep will find it; its token counts and bytes."""
    from gpt2jax.data.loader import anchored, prepared_data

    data = prepared_data(anchored(config.base))
    token_bytes = sum(path.stat().st_size for path in Path(data.path).glob("*.bin"))
    return {
        "train_tokens": data.meta["train_tokens"],
        "val_tokens": data.meta["val_tokens"],
        "token_bytes": token_bytes,
    }


def lower_budget(config) -> float:
    """The largest budget below the top: the lower budgets are trained and fitted before the top is predicted."""
    budgets = sorted(set(config.budgets) | {allocation["budget"] for allocation in config.allocations})
    if len(budgets) < 3:
        raise ValueError(f"the sweep has budgets {budgets}; a bet needs at least two to fit and one to predict.")
    return budgets[-2]


def pack(workdir: Path, out: Path, staging: Path) -> list[str]:
    """Copies the PACKED files that exist into ``out``; returns their names."""
    from gpt2jax.files.workdir import SESSIONS_FILE, read_jsonl
    from gpt2jax.scaling.tuning import RULE_FILE, TUNING_DIR

    out.mkdir(parents=True, exist_ok=True)
    sessions = [
        {"sweep": sweep, **session}
        for sweep, folder in (("sweep", workdir), ("tuning", workdir / TUNING_DIR))
        for session in read_jsonl(folder / SESSIONS_FILE)
    ]
    if sessions:
        (out / "sessions.jsonl").write_text("".join(json.dumps(session) + "\n" for session in sessions))
    for name, source in (
        ("results.csv", workdir / "results.csv"),
        ("tuning.json", workdir / RULE_FILE),
        ("prediction.json", staging / "prediction.json"),
        ("fit.json", staging / "fit.json"),
        ("REPORT.md", staging / "REPORT.md"),
        ("driver.json", staging / "driver.json"),
    ):
        if source.is_file():
            shutil.copyfile(source, out / name)
    with tarfile.open(out / "details.tar.gz", "w:gz") as archive:
        if (staging / "figures").is_dir():
            archive.add(staging / "figures", "figures")
        for path in sorted(workdir.rglob("metrics.jsonl")) + sorted(workdir.glob(f"{TUNING_DIR}/results.csv")):
            archive.add(path, str(path.relative_to(workdir)))
    return sorted(path.name for path in out.iterdir())


def run(config_spec: str, corpus: Path, workdir: Path, out: Path, fitting: tuple[str, ...] = ()) -> None:
    """``fitting``: the options of every fit (``--bootstrap``, ``--grid``) that backtest, fit, plot and report run."""
    from gpt2jax.scaling.plan import load_sweep_config
    from gpt2jax.scaling.sweep import device_name

    config = load_sweep_config(config_spec)
    below = lower_budget(config)
    staging = workdir / "bet"
    staging.mkdir(parents=True, exist_ok=True)
    stages = Stages(staging / "driver.json", {"config": config_spec, "device": device_name(), "cores": os.cpu_count()})
    results = workdir / "results.csv"
    law = ("--params", config.params, *fitting)
    try:
        with stages.stage("unpack") as entry:
            entry.update(unpack(corpus))
        with stages.stage("tokenize") as entry:
            entry.update(tokenize(config))
        with stages.stage("tune and train the lower budgets"):
            scaling("sweep", "--config", config_spec, "--workdir", workdir, "--max_budget", below)
        with stages.stage("predict the top budget") as entry:
            prediction = scaling(
                "backtest", "--results", results, "--train_below", below, *law, "--predict", config_spec, "--json"
            )
            (staging / "prediction.json").write_text(prediction)
            entry["predicted_at"] = json.loads(prediction)["predicted_at"]
        with stages.stage("train the top budget"):
            scaling("sweep", "--config", config_spec, "--workdir", workdir)
        with stages.stage("fit"):
            (staging / "fit.json").write_text(scaling("fit", "--results", results, *law, "--json"))
        with stages.stage("plot"):
            scaling("plot", "--workdir", workdir, "--out", staging / "figures", *fitting)
        with stages.stage("report"):
            scaling(
                "report", "--workdir", workdir, "--prediction", staging / "prediction.json",
                "--figures", staging / "figures", "--out", staging / "REPORT.md", *fitting,
            )  # fmt: skip
    except BaseException:
        stages.record["failed"] = traceback.format_exc(limit=8)
        stages.path.write_text(json.dumps(stages.record, indent=2) + "\n")
        raise
    finally:
        print(f"packed into {out}: {', '.join(pack(workdir, out, staging))}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "experiments" / "gpu_english.py"), help="FILE[:VARIANT]")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="a .tar.xz of the corpus's JSONL files")
    parser.add_argument("--workdir", type=Path, default=Path("runs") / "gpu_english", help="the sweep's workdir")
    parser.add_argument("--out", type=Path, default=os.environ.get("OUT"), help="where the packed files go ($OUT)")
    parser.add_argument("--bootstrap", type=int, default=100, help="resamples of every fit's intervals")
    # Coarse: on the CPU study's results (38 points) its backtest gave the law and N_opt of Hoffmann's 4500 starts to
    # five digits in 14 s instead of 53 (one loaded CPU core); four fits a run, so 2.6 device-minutes less.
    parser.add_argument("--grid", default="coarse", help="approach 3's starts: coarse (108) or hoffmann (4500)")
    args = parser.parse_args(argv)
    if args.out is None:
        parser.error("give --out, or set $OUT, the folder the packed files go to")
    run(
        args.config,
        args.corpus.absolute(),
        args.workdir.absolute(),
        args.out.absolute(),
        ("--bootstrap", str(args.bootstrap), "--grid", args.grid),
    )


if __name__ == "__main__":
    main()
