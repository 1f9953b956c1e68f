"""Generate text from a trained run, or from Hugging Face GPT-2 weights (drives ``inference.sampling``).

``python -m gpt2jax.cli.sample --workdir runs/x --prompt "Once upon a time" --max_new_tokens 100``
``python -m gpt2jax.cli.sample --init_from hf:DIR --prompt "Once upon a time"``

Any length works on any model (past the context, the last block_size tokens condition the
next). A run trained on a compact vocabulary (its data's meta.json tokenizer is not gpt2)
takes and prints token ids: ``--prompt "64 3 17"``.
"""

from absl import flags

from gpt2jax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's workdir.")
_INIT_FROM = flags.DEFINE_string(
    "init_from", None, "hf:DIR (Hugging Face weights) or checkpoint:WORKDIR[@STEP], instead of --workdir."
)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step of --workdir (default: the latest).")
_PROMPT = flags.DEFINE_string(
    "prompt", None, "Text to continue (token ids for a compact vocabulary); default a newline, or <|endoftext|>'s id."
)
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 100, "Tokens to generate.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "Softmax temperature; 0 picks the most likely token.")
_TOP_K = flags.DEFINE_integer("top_k", 200, "Sample among the k most likely tokens (0: all).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Independent continuations of the prompt.")


def main(argv):
    del argv
    cli.initialize_distributed()
    from gpt2jax.inference import weights
    from gpt2jax.inference.sampling import sample_text, vocabulary_of
    from gpt2jax.init_from import weights_source

    loaded = weights.load_weights(weights_source(_WORKDIR.value, _INIT_FROM.value, _STEP.value))
    vocabulary = vocabulary_of(loaded.model_config, loaded.data_meta)
    samples = sample_text(
        loaded.graphdef,
        loaded.params,
        vocabulary.default_prompt if _PROMPT.value is None else _PROMPT.value,
        vocabulary=vocabulary,
        max_new_tokens=_MAX_NEW_TOKENS.value,
        temperature=_TEMPERATURE.value,
        top_k=_TOP_K.value,
        seed=_SEED.value,
        num_samples=_NUM_SAMPLES.value,
    )
    for text in samples:
        print(text)
        print("-" * 40)


def entry() -> None:
    cli.run_absl(main)


if __name__ == "__main__":
    entry()
