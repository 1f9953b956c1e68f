"""Evaluate a trained run or Hugging Face GPT-2 weights (drives ``scoring``); prints one JSON object.

Validation loss on the data a run was trained on (or a ``--config``'s data, for HF weights)::

    python -m gpt2jax.cli.evaluate --workdir runs/x [--step N] [--batches N]
    python -m gpt2jax.cli.evaluate --init_from hf:DIR --config small

Per-token log-probabilities of a text file, windowed as ``scoring.token_logprobs`` describes::

    python -m gpt2jax.cli.evaluate --init_from hf:DIR --text FILE [--logprobs_out OUT.npy] [--stride S]

HellaSwag accuracy (acc, acc_norm, n, 95% Wilson intervals), scored completion-style as ``scoring``
describes, on the validation split of the original jsonl, the Hub's copy, or TFDS's prepared one::

    python -m gpt2jax.cli.evaluate --workdir runs/x --task hellaswag --hellaswag_data hellaswag_val.jsonl
    python -m gpt2jax.cli.evaluate --workdir runs/x --task hellaswag --hellaswag_data hf:Rowan/hellaswag [--limit N]
    python -m gpt2jax.cli.evaluate --workdir runs/x --task hellaswag --hellaswag_data tfds [--tfds_data_dir D]
"""

import json

from absl import flags
from ml_collections import config_flags

from gpt2jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's workdir.")
_INIT_FROM = flags.DEFINE_string(
    "init_from", None, "hf:DIR (Hugging Face weights) or checkpoint:WORKDIR[@STEP], instead of --workdir."
)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step of --workdir (default: the latest).")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "With --init_from hf:DIR: the config whose validation data to score.", lock_config=True
)
_BATCHES = flags.DEFINE_integer("batches", None, "Validation batches (default: the config's train.eval_batches).")
_TEXT = flags.DEFINE_string("text", None, "A UTF-8 text file to score token by token.")
_LOGPROBS_OUT = flags.DEFINE_string("logprobs_out", None, "With --text: write the float32 log-probabilities (.npy).")
_STRIDE = flags.DEFINE_integer("stride", None, "With --text: targets each window advances (default: the context).")
_TASK = flags.DEFINE_enum("task", None, ["hellaswag"], "A benchmark to score.")
_HELLASWAG_DATA = flags.DEFINE_string(
    "hellaswag_data",
    None,
    "With --task=hellaswag: hellaswag_val.jsonl (github.com/rowanz/hellaswag), hf:Rowan/hellaswag (or hf:DIR), or tfds.",
)
_LIMIT = flags.DEFINE_integer("limit", None, "With --task: score only the first N examples.")
_HUB_CACHE = flags.DEFINE_string(
    "hub_cache", None, "With --hellaswag_data=hf:...: where Hub datasets are downloaded (default: huggingface_hub's)."
)
_TFDS_DATA_DIR = flags.DEFINE_string("tfds_data_dir", None, "With --hellaswag_data=tfds: where TFDS keeps it prepared.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "With --text or --task: sequences per forward pass.")


def _check_flags(source) -> None:
    from gpt2jax.data import hellaswag

    if _TEXT.value and _TASK.value:
        raise ValueError("pass either --text or --task, not both.")
    if not _TEXT.value and (_LOGPROBS_OUT.value or _STRIDE.value is not None):
        raise ValueError("--logprobs_out and --stride only apply with --text.")
    task_flags = (_HELLASWAG_DATA.value, _LIMIT.value is not None, _HUB_CACHE.value, _TFDS_DATA_DIR.value)
    if not _TASK.value and any(task_flags):
        raise ValueError("--hellaswag_data, --limit, --hub_cache and --tfds_data_dir only apply with --task.")
    if _TASK.value == "hellaswag" and not _HELLASWAG_DATA.value:
        raise ValueError(f"--task=hellaswag needs --hellaswag_data: {hellaswag.SOURCES} (a prepared TFDS copy).")
    if _LIMIT.value is not None and _LIMIT.value < 1:
        raise ValueError(f"--limit={_LIMIT.value} must be at least 1; omit it to score every example.")
    if _CONFIG.value is not None and (source.kind != "hf" or _TEXT.value or _TASK.value):
        raise ValueError(
            "--config names the validation data for --init_from=hf:DIR weights; a checkpoint brings "
            "its run's own, and --text or --task need none."
        )
    if source.kind == "hf" and not (_TEXT.value or _TASK.value or _CONFIG.value is not None):
        raise ValueError("--init_from=hf:DIR weights need --text, --task, or --config whose validation data to score.")


def main(argv):
    del argv
    cli.initialize_distributed()
    from gpt2jax.data import hellaswag
    from gpt2jax.inference import scoring, weights
    from gpt2jax.init_from import weights_source

    source = weights_source(_WORKDIR.value, _INIT_FROM.value, _STEP.value)
    _check_flags(source)
    if _TASK.value:
        # Read first: a bad file is refused before the weights load.
        examples = hellaswag.read_examples(
            _HELLASWAG_DATA.value, limit=_LIMIT.value, hub_cache=_HUB_CACHE.value, tfds_data_dir=_TFDS_DATA_DIR.value
        )
        result = scoring.evaluate_hellaswag(
            weights.load_weights(source), examples, _HELLASWAG_DATA.value, batch_size=_BATCH_SIZE.value
        )
    elif _TEXT.value:
        result = scoring.evaluate_text(
            weights.load_weights(source),
            _TEXT.value,
            stride=_STRIDE.value,
            batch_size=_BATCH_SIZE.value,
            logprobs_out=_LOGPROBS_OUT.value,
        )
    elif source.kind == "checkpoint":
        result = scoring.evaluate_checkpoint(source.path, source.step, _BATCHES.value)
    else:
        result = scoring.evaluate_hf_on_config(source.path, _CONFIG.value, _BATCHES.value)
    print(json.dumps(result, allow_nan=False))  # weights are checked finite at load: a NaN here is a bug


def entry() -> None:
    cli.run_absl(main)


if __name__ == "__main__":
    entry()
