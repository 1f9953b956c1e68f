"""Other groups' released scaling runs, converted to results.csv form, so a backtest can test our fits on them.

    python scripts/scaling_runs.py porian --repo MIRROR --out DIR
    python scripts/scaling_runs.py misfitting --repo MIRROR --out DIR
    python scripts/scaling_runs.py marin --repo MIRROR --out DIR      # three files: dclm, comma, nemotron
    python scripts/scaling_runs.py chinchilla --file ../shared/data/chinchilla_svg_extracted_epoch.csv --out DIR

``MIRROR`` is a git directory of the source repository (a clone, or the bare copy the project's
``fetch`` tool brings); the file is read at its HEAD, whose commit is recorded. Each dataset becomes
``DIR/NAME.csv`` (run, n_params, n_tokens, loss, and budget where the runs form IsoFLOP profiles;
FLOPs are 6ND) and ``DIR/NAME.json`` (source, paper, repository, commit, path, licence, what was
kept). None of these files is committed to gpt2jax: the sources' licences are missing or their
own, and the project keeps other groups' data out of its tree so that nothing is tuned to them.
``tests/test_scaling_runs.py`` backtests on ``DIR`` when ``GPT2JAX_SCALING_RUNS`` names it (or
``../shared/data/scaling_runs`` holds it) and skips otherwise.

Sources:
- chinchilla: Epoch AI's extraction of Hoffmann et al.'s figure 4 (Besiroglu et al. 2024,
  epoch-research/analyzing-chinchilla), the project's shared copy: ``chinchilla.csv`` holds all 245
  points, ``chinchilla240.csv`` the 240 without the 5 highest losses, as Besiroglu et al. fit them.
  FLOPs as extracted, D = C / 6N, no budget column (a backtest splits by FLOPs).
- porian: Porian et al. 2024, "Resolving Discrepancies in Compute-Optimal Scaling of Language
  Models" (formll/resolving-scaling-law-discrepancies, MIT). ``data/summary_df.pickle.xz`` holds
  their IsoFLOP points; we take the configuration closest to Chinchilla's (RefinedWeb, short
  warmup, cosine decay to each run's length, validation loss): 88 runs at 12 budgets from
  1.25e16 to 2.56e19 FLOPs. The pickle is read with pandas through an unpickler that refuses any
  class outside pandas and numpy.
- misfitting: Li, Kudugunta and Zettlemoyer 2025, "(Mis)Fitting Scaling Laws"
  (hadasah/scaling_laws, no licence file). ``data/scaling_results_last_ckpt_only.csv``: each
  (N, D) trained at several peak learning rates; we keep the best rate's final C4 loss, 81 points.
- marin: the Marin project's IsoFLOP ladders on DCLM, Comma and Nemotron-CC, as vendored from
  Weights & Biases by Open-Athena/scaling-law-analysis (no licence file) under
  ``data/isoflops/extract/marin_202603/raw``: Paloma macro loss; the budget in a run's name counts
  forward FLOPs (2ND), so it is multiplied by 3, as that repository does; its "validation-optimal"
  runs, which name 6ND instead, are dropped.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import lzma
import pickle
import re
import subprocess
from pathlib import Path

SOURCES = {
    "chinchilla": {
        "paper": "Besiroglu, Erdil, Barnett, You 2024, arXiv:2404.10102 (points of Hoffmann et al. 2022, figure 4)",
        "repository": "https://github.com/epoch-research/analyzing-chinchilla",
        "path": "data/svg_extracted_data.csv",
        "licence": "MIT (the repository's LICENSE); read from the project's shared copy",
    },
    "porian": {
        "paper": "Porian, Wortsman, Jitsev, Schmidt, Carmon 2024, arXiv:2406.19146",
        "repository": "https://github.com/formll/resolving-scaling-law-discrepancies",
        "path": "data/summary_df.pickle.xz",
        "licence": "MIT (LICENSE in the repository)",
    },
    "misfitting": {
        "paper": "Li, Kudugunta, Zettlemoyer 2025, arXiv:2502.18969",
        "repository": "https://github.com/hadasah/scaling_laws",
        "path": "data/scaling_results_last_ckpt_only.csv",
        "licence": "none stated (no LICENSE file): not redistributed",
    },
    "marin": {
        "paper": "Marin scaling ladders (wandb.ai/marin-community/marin, report 'Scaling Ladders')",
        "repository": "https://github.com/Open-Athena/scaling-law-analysis",
        "path": "data/isoflops/extract/marin_202603/raw/isoflop-{corpus}.csv",
        "licence": "none stated (no LICENSE file): not redistributed",
    },
}
MARIN_CORPORA = ("dclm", "comma", "nemotron")
# Porian et al.'s configuration 3 of summary_df: RefinedWeb, base hyperparameters, short warmup,
# Chinchilla's cosine decay to each run's length, standard parameter count, validation loss.
PORIAN_CONFIG = {"dataset": "rw", "warmup": "short", "decay": "chinchilla", "param_count": "standard", "val": "val"}


def read_blob(repo: Path, path: str) -> tuple[bytes, str]:
    """The file at ``path`` in the git directory ``repo`` at HEAD, and HEAD's commit."""
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, check=True, text=True)
    blob = subprocess.run(["git", "-C", str(repo), "show", f"HEAD:{path}"], capture_output=True, check=True)
    return blob.stdout, commit.stdout.strip()


class _FramesOnly(pickle.Unpickler):
    """Unpickles a pandas DataFrame and refuses any other class, so the pickle can run no code of its own."""

    def find_class(self, module, name):
        if module.split(".")[0] in ("pandas", "numpy") or (module, name) == ("builtins", "slice"):
            return super().find_class(module.replace("numpy.core", "numpy._core"), name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name} from a data file")


def porian_rows(blob: bytes) -> list[dict]:
    import pandas  # noqa: F401  (the unpickler needs it importable; only this converter uses pandas)

    frame = _FramesOnly(io.BytesIO(lzma.decompress(blob))).load()
    chosen = frame
    for column, value in PORIAN_CONFIG.items():
        chosen = chosen[chosen[column] == value]
    if len(chosen) != 1:
        raise SystemExit(f"expected one configuration {PORIAN_CONFIG} in summary_df, found {len(chosen)}")
    rows = []
    for _, budget in chosen["data"].iloc[0].iterrows():
        if not hasattr(budget["orig_n"], "__len__"):
            continue  # a budget without runs
        for n, d, loss in zip(budget["orig_n"], budget["orig_t"], budget["orig_loss"]):
            rows.append(
                {"n_params": float(n), "n_tokens": float(d), "budget": float(budget["flops"]), "loss": float(loss)}
            )
    return rows


def misfitting_rows(blob: bytes) -> list[dict]:
    best: dict[tuple[float, float], float] = {}
    for row in csv.DictReader(io.StringIO(blob.decode())):
        if float(row["portion_steps_elapsed"]) != 1.0:
            continue
        key = (float(row["N"]), float(row["D"]))
        best[key] = min(best.get(key, float("inf")), float(row["loss"]))
    return [{"n_params": n, "n_tokens": d, "loss": loss} for (n, d), loss in sorted(best.items())]


def marin_rows(blob: bytes) -> list[dict]:
    rows = []
    for row in csv.DictReader(io.StringIO(blob.decode())):
        if "validation-optimal" in row["Name"]:
            continue
        match = re.search(r"-(\d+(?:\.\d+)?e[+-]\d+)(?:-|$)", row["Name"])
        if not match:
            raise SystemExit(f"no budget in the Marin run name {row['Name']!r}")
        rows.append(
            {
                "n_params": float(row["parameter_count"]),
                "n_tokens": float(row["throughput/total_tokens"]),
                "budget": 3.0 * float(match.group(1)),  # named by forward FLOPs, 2ND
                "loss": float(row["eval/paloma/macro_loss"]),
            }
        )
    return rows


def chinchilla_rows(text: str) -> list[dict]:
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        n, flops = float(row["Model Size"]), float(row["Training FLOP"])
        rows.append({"n_params": n, "n_tokens": flops / (6.0 * n), "flops": flops, "loss": float(row["loss"])})
    return rows


def write(out: Path, name: str, rows: list[dict], meta: dict) -> None:
    columns = ["run", "n_params", "n_tokens", *(c for c in ("budget", "flops") if c in rows[0]), "loss"]
    with open(out / f"{name}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for index, row in enumerate(rows):
            writer.writerow({"run": f"{name}_{index:03d}", **row})
    meta = {**meta, "points": len(rows), "loss_range": [min(r["loss"] for r in rows), max(r["loss"] for r in rows)]}
    (out / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{out / name}.csv: {len(rows)} points")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", choices=sorted(SOURCES))
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--repo", type=Path, help="git directory of the source repository")
    where.add_argument("--file", type=Path, help="chinchilla: the shared copy of Epoch's CSV")
    parser.add_argument("--out", type=Path, required=True, help="directory to write NAME.csv and NAME.json to")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    source = SOURCES[args.source]
    if args.source == "chinchilla":
        rows = chinchilla_rows(args.file.read_text())
        highest = sorted(row["loss"] for row in rows)[-5]
        write(args.out, "chinchilla", rows, {**source, "file": str(args.file)})
        kept = [row for row in rows if row["loss"] < highest]
        write(args.out, "chinchilla240", kept, {**source, "file": str(args.file), "dropped": "the 5 highest losses"})
        return
    if args.repo is None:
        raise SystemExit(f"{args.source} is read from its repository: give --repo")
    if args.source == "marin":
        for corpus in MARIN_CORPORA:
            path = source["path"].format(corpus=corpus)
            blob, commit = read_blob(args.repo, path)
            write(args.out, f"marin_{corpus}", marin_rows(blob), {**source, "path": path, "commit": commit})
        return
    blob, commit = read_blob(args.repo, source["path"])
    convert = {"porian": porian_rows, "misfitting": misfitting_rows}[args.source]
    extra = {"configuration": PORIAN_CONFIG} if args.source == "porian" else {}
    write(args.out, args.source, convert(blob), {**source, **extra, "commit": commit})


if __name__ == "__main__":
    main()
