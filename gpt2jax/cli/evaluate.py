"""Evaluate a trained run or Hugging Face GPT-2 weights (drives ``scoring``); prints one JSON object.

Validation loss on the data a run was trained on (or a ``--config``'s data, for HF weights)::

    python -m gpt2jax.cli.evaluate --workdir runs/x [--step N] [--batches N]
    python -m gpt2jax.cli.evaluate --init_from hf:DIR --config small

Per-token log-probabilities of a text file, windowed as ``scoring.token_logprobs`` describes::

    python -m gpt2jax.cli.evaluate --init_from hf:DIR --text FILE [--logprobs_out OUT.npy] [--stride S]

HellaSwag accuracy, scored completion-style as ``scoring`` describes::

    python -m gpt2jax.cli.evaluate --workdir runs/x --task hellaswag [--limit N]
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
_LIMIT = flags.DEFINE_integer("limit", None, "With --task: score only the first N examples.")
_TFDS_DATA_DIR = flags.DEFINE_string("tfds_data_dir", None, "With --task: where TFDS keeps the prepared dataset.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "With --text or --task: sequences per forward pass.")


def _check_flags(source) -> None:
    if _TEXT.value and _TASK.value:
        raise ValueError("pass either --text or --task, not both.")
    if not _TEXT.value and (_LOGPROBS_OUT.value or _STRIDE.value is not None):
        raise ValueError("--logprobs_out and --stride only apply with --text.")
    if not _TASK.value and (_LIMIT.value is not None or _TFDS_DATA_DIR.value):
        raise ValueError("--limit and --tfds_data_dir only apply with --task.")
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
    from gpt2jax.inference import scoring, weights
    from gpt2jax.init_from import weights_source

    source = weights_source(_WORKDIR.value, _INIT_FROM.value, _STEP.value)
    _check_flags(source)
    if _TEXT.value or _TASK.value:
        loaded = weights.load_weights(source)
        if _TEXT.value:
            result = scoring.evaluate_text(
                loaded,
                _TEXT.value,
                stride=_STRIDE.value,
                batch_size=_BATCH_SIZE.value,
                logprobs_out=_LOGPROBS_OUT.value,
            )
        else:
            result = scoring.evaluate_hellaswag(
                loaded, limit=_LIMIT.value, data_dir=_TFDS_DATA_DIR.value, batch_size=_BATCH_SIZE.value
            )
    elif source.kind == "checkpoint":
        result = scoring.evaluate_checkpoint(source.path, source.step, _BATCHES.value)
    else:
        result = scoring.evaluate_hf_on_config(source.path, _CONFIG.value, _BATCHES.value)
    print(json.dumps(result))


def entry() -> None:
    cli.run_absl(main)


if __name__ == "__main__":
    entry()
