"""Score a run or Hugging Face GPT-2 weights on lm-evaluation-harness tasks (drives ``inference.harness``).

Needs the optional extra (``pip install -e '.[lm-eval]'``; no PyTorch). Prints lm-eval's table
and writes its results as JSON (default: WORKDIR/lm_eval.json)::

    python -m gpt2jax.cli.lm_eval --workdir runs/x --tasks hellaswag,arc_easy --limit 100
    python -m gpt2jax.cli.lm_eval --init_from hf:DIR --tasks my_task --include_path tasks/ --output out.json
"""

import json
from pathlib import Path

from absl import flags

from gpt2jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's workdir.")
_INIT_FROM = flags.DEFINE_string(
    "init_from", None, "hf:DIR (Hugging Face weights) or checkpoint:WORKDIR[@STEP], instead of --workdir."
)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step of --workdir (default: the latest).")
_TASKS = flags.DEFINE_list("tasks", None, "lm-eval task names, comma-separated.", required=True)
_LIMIT = flags.DEFINE_integer("limit", None, "Score only the first N examples of each task.")
_NUM_FEWSHOT = flags.DEFINE_integer("num_fewshot", None, "Few-shot examples (default: each task's own).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Rows per forward pass.")
_INCLUDE_PATH = flags.DEFINE_string("include_path", None, "A folder of task YAMLs besides lm-eval's own.")
_OUTPUT = flags.DEFINE_string("output", None, "Where to write the results JSON (default: WORKDIR/lm_eval.json).")


def main(argv):
    del argv
    cli.initialize_distributed()
    from gpt2jax.files.atomic import write_atomically
    from gpt2jax.init_from import weights_source

    source = weights_source(_WORKDIR.value, _INIT_FROM.value, _STEP.value)
    if _LIMIT.value is not None and _LIMIT.value < 1:
        raise ValueError(f"--limit={_LIMIT.value} must be at least 1; omit it to score every example.")
    if _OUTPUT.value is None and source.kind != "checkpoint":
        raise ValueError("--init_from=hf:DIR weights have no workdir to write lm_eval.json into; pass --output.")
    output = Path(_OUTPUT.value or Path(source.path) / "lm_eval.json")
    try:
        from lm_eval.utils import make_table

        from gpt2jax.inference import harness
    except ModuleNotFoundError as error:
        raise RuntimeError(f"{error.name} is not installed; pip install -e '.[lm-eval]'.") from None
    from gpt2jax.inference import weights

    manager = harness.task_manager(_TASKS.value, _INCLUDE_PATH.value)  # an unknown task before the weights load
    results = harness.evaluate(
        weights.load_weights(source),
        _TASKS.value,
        manager,
        limit=_LIMIT.value,
        num_fewshot=_NUM_FEWSHOT.value,
        batch_size=_BATCH_SIZE.value,
    )
    print(make_table(results))
    write_atomically(output, json.dumps(results, indent=2, default=str) + "\n")
    print(f"results: {output}")


def entry() -> None:
    cli.run_absl(main)


if __name__ == "__main__":
    entry()
