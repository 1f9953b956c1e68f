"""The default configuration, and the config files that start from it and change what they need.

Every key a run reads is declared here, so a misspelt override is refused by
ml_collections instead of being silently ignored. The shipped configs live in
``gpt2jax/configs/`` (``configs/`` in the checkout points there); ``--config small``
names one wherever a command runs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import ml_collections

from gpt2jax import ranges
from gpt2jax.model import GPTConfig

SHIPPED_CONFIGS = Path(__file__).parent / "configs"


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    # The model's keys, their defaults and their comments are GPTConfig's fields (model.py). A field
    # that takes a word or a value of another type (scan_layers: auto or a bool; loss_chunk: auto or
    # a number) is left untyped, so a config file may write False or 64 and the command line
    # false or 64; ml_collections would otherwise lock it to its default's type, the word's.
    config.model = ml_collections.ConfigDict(
        {
            key: ml_collections.FieldReference(value, field_type=object) if key in GPTConfig.WORD_OR_VALUE else value
            for key, value in dataclasses.asdict(GPTConfig()).items()
        }
    )

    config.data = ml_collections.ConfigDict(
        dict(
            # synthetic | text:GLOB | parquet:GLOB | hf:OWNER/NAME[:CONFIG] | hf:DIR | tfds:NAME[/CONFIG]
            source="synthetic",
            dir="data",  # prepared token files live in dir/<source slug>
            # a directory `python -m gpt2jax.cli.prepare --out DIR` wrote: train on it as it is,
            # without preparing data.source again (empty: prepare data.source under data.dir)
            prepared="",
            val_fraction=0.005,
            text_key="text",
            tfds_data_dir="",  # empty: TFDS's own default
            synthetic_train_tokens=2_000_000,
            synthetic_val_tokens=100_000,
            max_tokens=0,  # stop preparing a corpus after this many train tokens; 0 reads it all
            shard_tokens=100_000_000,  # tokens per prepared shard file (200 MB); the stream is the same for any
            workers=0,  # tokenizer processes for prepare; 0: every core (none for an input under 16 MB)
            hub_cache="",  # where hf: datasets are downloaded; empty: dir/hub
            # the train split copied to every device once (a sweep's points share the copy) and each step's
            # windows gathered there, instead of cut on the host and sent: for corpora of a few GB at most
            on_device=False,
        )
    )

    config.train = ml_collections.ConfigDict(
        dict(
            batch_size=8,  # sequences per optimizer step, over all devices and micro-batches
            grad_accum_steps=1,  # micro-batches per step: batch_size / grad_accum_steps at a time
            steps=1000,
            # adamw | adamw_bf16 (both moments in bfloat16: half the state) | adafactor (a factored
            # second moment, no first: almost none) | muon (Muon on the hidden matrices, AdamW on the
            # rest); training/optim.py says what each keeps
            optimizer="adamw",
            # none | optimizer (the optimizer's state in host memory) | master (float32 master
            # weights and the optimizer's state in host memory, the compute-dtype weights on the
            # device): JAX's pinned_host memory kind, for a model whose state outgrows the card
            offload="none",
            learning_rate=6e-4,
            # train.optimizer=muon: Muon's peak rate on the hidden matrices (learning_rate is then its
            # AdamW branch's), on the same schedule; Jordan's default
            muon_learning_rate=0.02,
            # train.optimizer=muon: q, k and v each orthogonalised as one D x D matrix (projection) or as
            # n_head matrices of D x head size (head); optim.MUON_QKV
            muon_qkv="projection",
            schedule="cosine",  # cosine | wsd | constant, each after a linear warmup
            warmup_steps=100,
            min_lr_ratio=0.1,  # cosine and wsd decay to learning_rate * min_lr_ratio
            decay_fraction=0.2,  # wsd: the last fraction of steps decays
            weight_decay=0.1,
            beta1=0.9,
            beta2=0.95,
            eps=1e-8,
            grad_clip=1.0,
            seed=0,
            # uniform: windows drawn anywhere, with replacement (tokens repeat within an epoch) |
            # epochs: every window once per epoch, in an order permuted by (seed, epoch)
            sampling="uniform",
            init_from="resume",  # resume (latest checkpoint if any) | scratch | hf:DIR | checkpoint:WORKDIR@STEP
            log_every=10,
            eval_every=250,
            eval_batches=20,
            # Benchmarks scored with val every eval_every steps, comma-separated; empty: none.
            # hellaswag reads hellaswag_data (hellaswag_val.jsonl | hf:Rowan/hellaswag | hf:DIR | tfds).
            eval_tasks="",
            eval_limit=0,  # examples of each task scored; 0: all (HellaSwag's validation split has 10,042)
            hellaswag_data="",
            checkpoint_every=500,
            keep_checkpoints=3,
            tensorboard=False,
            # Resuming a workdir with a config that changes what its checkpoint means (seed, batch,
            # schedule, rate, fewer steps...) is refused unless True; the change is then recorded.
            allow_config_change=False,
            # Resuming a workdir whose metrics.jsonl records a checkpoint newer than any it holds
            # (deleted or lost) is refused unless True: the run then continues from the newest
            # left, or its start, and its records replace the old ones step by step.
            allow_lost_checkpoints=False,
        )
    )

    config.mesh = ml_collections.ConfigDict(
        dict(
            # Device-mesh axis sizes; -1 takes the devices the others leave.
            data=1,
            fsdp=-1,
            tensor=1,
        )
    )
    return config


def gpt2_recipe(
    preset: str, *, learning_rate: float, grad_accum_steps: int, remat: str = "none"
) -> ml_collections.ConfigDict:
    """One of GPT-2's four sizes with the recipe nanoGPT and llm.c reproduce.

    About 0.5M tokens a step (512 sequences of 1024) through gradient accumulation, linear
    warmup over 715 steps then cosine decay to 10% of the peak rate, AdamW with beta2 0.95 and
    weight decay 0.1, bfloat16 compute, on FineWeb-Edu's 10B-token sample (the corpus build-nanogpt
    and llm.c train this recipe on; about 10B GPT-2 tokens, so the 19073 steps read it about once,
    which the ``epochs`` metric shows). It is downloaded from the Hugging Face Hub into
    ``<data.dir>/hub`` and prepared on first use (README, "Data").
    """
    from gpt2jax.model import preset as model_preset

    config = base_config()
    config.model.update(**model_preset(preset), block_size=1024, dtype="bfloat16", remat=remat)
    config.data.update(source="hf:HuggingFaceFW/fineweb-edu:sample-10BT")
    config.train.update(
        sampling="epochs",  # ~1 epoch of the 10B sample: no token read twice
        batch_size=512,
        grad_accum_steps=grad_accum_steps,
        steps=19073,
        learning_rate=learning_rate,
        warmup_steps=715,
        min_lr_ratio=0.1,
        schedule="cosine",
        log_every=10,
        eval_every=250,
        eval_batches=20,
        checkpoint_every=1000,
    )
    return config


def shipped_config_names() -> list[str]:
    return sorted(path.stem for path in SHIPPED_CONFIGS.glob("*.py") if not path.stem.startswith("_"))


def config_path(spec: str) -> Path:
    """The file a ``--config`` value names: a path that exists, or a shipped config by name.

    ``small``, ``small.py`` and ``configs/small.py`` all name ``gpt2jax/configs/small.py``,
    so the shipped configs work from any directory.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    shipped = SHIPPED_CONFIGS / (Path(spec).stem + ".py")
    if Path(spec).suffix in ("", ".py") and shipped.is_file():
        return shipped
    if path.is_dir():
        raise IsADirectoryError(
            f"config {spec} is a directory; give a config file in it (FILE.py) or a shipped config's name."
        )
    raise FileNotFoundError(
        f"config file {spec} does not exist; give a path to a config file or one of the "
        f"shipped configs: {', '.join(shipped_config_names())}."
    )


def load_config_module(path: Path):
    """The config file at ``path`` run as a module; a syntax error or a missing ``get_config`` is one sentence.

    The train command checks its ``--config`` file with this before ml_collections loads it, which
    would otherwise end in a traceback (a syntax error) or call a missing get_config an unknown key.
    """
    module_spec = importlib.util.spec_from_file_location(f"gpt2jax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as error:
        raise ValueError(
            f"config file {error.filename or path} line {error.lineno}: {error.msg}; fix the file, or give another config."
        ) from None
    if not callable(getattr(module, "get_config", None)):
        raise ValueError(
            f"config file {path} defines no get_config(); a config file defines get_config() returning its "
            "ConfigDict, as gpt2jax/configs/tiny.py does."
        )
    return module


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """``FILE`` or ``FILE:VARIANT``: the ConfigDict of ``get_config()`` (or ``get_config(VARIANT)``) in FILE."""
    path_text, _, variant = spec.partition(":")
    module = load_config_module(config_path(path_text))
    return module.get_config(variant) if variant else module.get_config()


def check_run_config(config, shown: str = "") -> None:
    """Refuses, in one sentence naming each, a run config's numbers outside their ranges (``ranges.py``).

    ``build_trainer`` calls it first, so a bad value is refused before any data is prepared or
    the workdir is touched (``train.batch_size=0`` used to be refused after config.json was
    written, and the corrected command was then refused as another run's). ``shown`` goes before each
    key named (a sweep's ``base.``).
    """
    found = []
    for section in ("model", "data", "train", "mesh"):
        found += ranges.refusals(
            dict(config[section]), ranges.RUN_CONFIG_RANGES, prefix=f"{section}.", shown=f"{shown}{section}."
        )
    if found:
        raise ValueError("; ".join(found) + ".")


def warmup_warning(train_config) -> str | None:
    """One sentence when the warmup outlasts the run, so the rate never reaches its peak; None otherwise.

    A warning, not a refusal: a benchmark trains a few steps of a recipe that warms up for 715
    (bench/gpu.sh), where the rate does not matter. ``train.warmup_steps=1000`` with ``train.steps=3``
    trained at rates up to 2e-6 without a word.
    """
    warmup, steps, peak = train_config.warmup_steps, train_config.steps, train_config.learning_rate
    if warmup <= steps or not peak:
        return None
    highest = peak * (steps - 1) / warmup  # the warmup's rate at the run's last step
    return (
        f"train.warmup_steps={warmup} is more than train.steps={steps}, so the learning rate never passes "
        f"{highest:.3g} ({100 * highest / peak:.2g}% of train.learning_rate={peak:g}); lower train.warmup_steps "
        "or raise train.steps if this run is meant to learn."
    )
