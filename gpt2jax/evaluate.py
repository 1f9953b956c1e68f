"""Evaluate a trained run or Hugging Face GPT-2 weights; prints one JSON object.

Validation loss on the data a run was trained on (or a ``--config``'s data, for HF weights)::

    python -m gpt2jax.evaluate --workdir runs/x [--step N] [--batches N]
    python -m gpt2jax.evaluate --init_from hf:DIR --config configs/small.py

Per-token log-probabilities of a text file, windowed as ``scoring.token_logprobs`` describes::

    python -m gpt2jax.evaluate --init_from hf:DIR --text FILE [--logprobs_out OUT.npy] [--stride S]

HellaSwag accuracy, scored completion-style as ``scoring`` describes::

    python -m gpt2jax.evaluate --workdir runs/x --task hellaswag [--limit N]
"""

import json

from absl import flags
from ml_collections import config_flags

from gpt2jax import cli
from gpt2jax.scoring import evaluate_hellaswag, evaluate_hf_on_config, evaluate_text, evaluate_workdir

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's workdir.")
_INIT_FROM = flags.DEFINE_string("init_from", None, "hf:DIR: Hugging Face GPT-2 weights instead of a --workdir.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step of --workdir (default: the latest).")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "With --init_from: the config whose validation data to score.", lock_config=True)
_BATCHES = flags.DEFINE_integer("batches", None, "Validation batches (default: the config's train.eval_batches).")
_TEXT = flags.DEFINE_string("text", None, "A UTF-8 text file to score token by token.")
_LOGPROBS_OUT = flags.DEFINE_string("logprobs_out", None, "With --text: write the float32 log-probabilities (.npy).")
_STRIDE = flags.DEFINE_integer("stride", None, "With --text: targets each window advances (default: the context).")
_TASK = flags.DEFINE_enum("task", None, ["hellaswag"], "A benchmark to score.")
_LIMIT = flags.DEFINE_integer("limit", None, "With --task: score only the first N examples.")
_TFDS_DATA_DIR = flags.DEFINE_string("tfds_data_dir", None, "With --task: where TFDS keeps the prepared dataset.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "With --text or --task: sequences per forward pass.")


def _check_flags() -> None:
    if (_WORKDIR.value is None) == (_INIT_FROM.value is None):
        raise ValueError("pass either --workdir (a training run) or --init_from=hf:DIR (Hugging Face weights).")
    if _STEP.value is not None and not _WORKDIR.value:
        raise ValueError("--step picks a checkpoint of a --workdir; Hugging Face weights have none.")
    if _TEXT.value and _TASK.value:
        raise ValueError("pass either --text or --task, not both.")
    if not _TEXT.value and (_LOGPROBS_OUT.value or _STRIDE.value is not None):
        raise ValueError("--logprobs_out and --stride only apply with --text.")
    if not _TASK.value and (_LIMIT.value is not None or _TFDS_DATA_DIR.value):
        raise ValueError("--limit and --tfds_data_dir only apply with --task.")
    if _CONFIG.value is not None and (_WORKDIR.value or _TEXT.value or _TASK.value):
        raise ValueError("--config names the validation data for --init_from weights; a --workdir brings its "
                         "own, and --text or --task need none.")


def main(argv):
    del argv
    cli.initialize_distributed()
    from gpt2jax import train
    from gpt2jax.interop import hf

    _check_flags()
    if _TEXT.value or _TASK.value:
        model_config, graphdef, params = train.restore_model(_WORKDIR.value, _INIT_FROM.value, _STEP.value)
        if _TEXT.value:
            result = evaluate_text(graphdef, params, model_config.block_size, _TEXT.value, stride=_STRIDE.value,
                                   batch_size=_BATCH_SIZE.value, logprobs_out=_LOGPROBS_OUT.value)
        else:
            result = evaluate_hellaswag(graphdef, params, model_config.block_size, limit=_LIMIT.value,
                                        data_dir=_TFDS_DATA_DIR.value, batch_size=_BATCH_SIZE.value)
    elif _WORKDIR.value:
        result = evaluate_workdir(_WORKDIR.value, _STEP.value, _BATCHES.value)
    else:
        directory = hf.init_from_directory(_INIT_FROM.value)
        if directory is None:
            raise ValueError(f"--init_from={_INIT_FROM.value!r} must be hf:DIR, a Hugging Face GPT-2 directory.")
        if _CONFIG.value is None:
            raise ValueError("--init_from weights need --text, --task, or --config whose validation data to score.")
        result = evaluate_hf_on_config(directory, _CONFIG.value, _BATCHES.value)
    print(json.dumps(result))


if __name__ == "__main__":
    cli.run_absl(main)
