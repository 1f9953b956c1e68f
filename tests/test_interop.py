"""Tests for gpt2jax.interop.hf, HF initialisation of training and export, on the tiny fixture in tests/data/hf_tiny.

The fixture is transformers' own ``save_pretrained`` of a random 2-layer GPT-2, written by
scripts/make_hf_reference.py; these tests need neither PyTorch nor transformers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util
from safetensors.numpy import load_file, save_file

from gpt2jax.config import base_config
from gpt2jax.data.tokenizer import get_tokenizer
from gpt2jax.inference.export import EXPORT_MARKER
from gpt2jax.interop import hf
from gpt2jax.model import GPTConfig, abstract_model

FIXTURE = Path(__file__).parent / "data" / "hf_tiny"


def flat_params(params) -> dict:
    return traverse_util.flatten_dict(jax.device_get(nnx.to_pure_dict(params)))


def assert_same_params(a, b) -> None:
    a, b = flat_params(a), flat_params(b)
    assert a.keys() == b.keys()
    for path in a:
        assert a[path].dtype == b[path].dtype and np.array_equal(a[path], b[path]), path


def copy_fixture(tmp_path: Path, tensors: dict | None = None, **config_changes) -> Path:
    """The fixture in a new directory, with its weights and config.json fields replaced as given."""
    directory = tmp_path / "hf"
    directory.mkdir()
    config = json.loads((FIXTURE / "config.json").read_text()) | config_changes
    (directory / "config.json").write_text(json.dumps(config))
    if tensors is None:
        shutil.copy(FIXTURE / "model.safetensors", directory)
    else:
        save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    return directory


def test_import_reads_the_shape_and_lays_out_heads():
    config, params = hf.load_hf(FIXTURE)
    shape = (config.n_layer, config.n_head, config.n_embd, config.block_size, config.vocab_size)
    assert shape == (2, 4, 32, 128, 50257)
    _, abstract = abstract_model(config)
    assert jax.tree.map(np.shape, nnx.to_pure_dict(params)) == jax.tree.map(np.shape, nnx.to_pure_dict(abstract))
    tensors = load_file(FIXTURE / "model.safetensors")
    ours = nnx.to_pure_dict(params)
    d, k = 32, 8
    # HF's c_attn columns are [q | k | v], each split into heads of K columns.
    c_attn = tensors["transformer.h.1.attn.c_attn.weight"]
    np.testing.assert_array_equal(ours["h"]["attn"]["qkv_kernel"][1][:, 2, 3], c_attn[:, 2 * d + 3 * k : 2 * d + 4 * k])
    c_proj = tensors["transformer.h.0.attn.c_proj.weight"]
    np.testing.assert_array_equal(ours["h"]["attn"]["out_kernel"][0][1], c_proj[k : 2 * k])
    np.testing.assert_array_equal(ours["h"]["ln_2"]["scale"][0], tensors["transformer.h.0.ln_2.weight"])
    wte = ours["wte"]
    assert wte.shape == (50304, 32)
    np.testing.assert_array_equal(wte[:50257], tensors["transformer.wte.weight"])
    assert not wte[50257:].any()


def test_round_trip_is_bit_exact(tmp_path):
    config, params = hf.load_hf(FIXTURE)
    hf.save_hf(config, params, tmp_path / "exported")
    exported = load_file(tmp_path / "exported" / "model.safetensors")
    original = load_file(FIXTURE / "model.safetensors")
    # The same names, shapes and bits as transformers' own save_pretrained.
    assert exported.keys() == original.keys()
    for name in original:
        assert np.array_equal(exported[name], original[name]), name
    config_again, params_again = hf.load_hf(tmp_path / "exported")
    assert config_again == config
    assert_same_params(params_again, params)


def test_export_writes_a_config_transformers_reads_as_gpt2(tmp_path):
    config = GPTConfig(n_layer=3, n_head=2, n_embd=16, block_size=32, vocab_size=50257, dropout=0.1)
    _, abstract = abstract_model(config)
    params = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), abstract)
    hf.save_hf(config, params, tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["architectures"] == ["GPT2LMHeadModel"] and written["model_type"] == "gpt2"
    assert (written["n_layer"], written["n_head"], written["n_embd"], written["n_positions"]) == (3, 2, 16, 32)
    assert written["resid_pdrop"] == written["embd_pdrop"] == 0.1 and written["attn_pdrop"] == 0.0
    assert written["tie_word_embeddings"] and written["eos_token_id"] == 50256
    assert hf.read_config(tmp_path) == dict(n_layer=3, n_head=2, n_embd=16, block_size=32, vocab_size=50257)


def test_import_accepts_unprefixed_keys_mask_buffers_and_a_tied_lm_head(tmp_path):
    tensors = {
        name.removeprefix("transformer."): value for name, value in load_file(FIXTURE / "model.safetensors").items()
    }
    # OpenAI's checkpoints on the Hub: GPT2Model names and the causal-mask buffers.
    for layer in range(2):
        tensors[f"h.{layer}.attn.bias"] = np.tril(np.ones((1, 1, 128, 128), np.float32))
        tensors[f"h.{layer}.attn.masked_bias"] = np.asarray(-1e4, np.float32)
    tensors["lm_head.weight"] = tensors["wte.weight"]
    _, expected = hf.load_hf(FIXTURE)
    _, params = hf.load_hf(copy_fixture(tmp_path, tensors))
    assert_same_params(params, expected)


@pytest.mark.parametrize("dtype", [np.float16, jnp.bfloat16])
def test_import_reads_half_precision_checkpoints(tmp_path, dtype):
    tensors = {name: value.astype(dtype) for name, value in load_file(FIXTURE / "model.safetensors").items()}
    _, params = hf.load_hf(copy_fixture(tmp_path, tensors))
    wte = nnx.to_pure_dict(params)["wte"]
    assert wte.dtype == np.float32
    np.testing.assert_array_equal(wte[:50257], tensors["transformer.wte.weight"].astype(np.float32))


def test_import_refuses_an_untied_lm_head(tmp_path):
    tensors = load_file(FIXTURE / "model.safetensors")
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"] + 1.0
    with pytest.raises(ValueError, match="lm_head.weight .* differs from wte.weight"):
        hf.load_hf(copy_fixture(tmp_path, tensors))


def test_import_refuses_missing_weights(tmp_path):
    tensors = load_file(FIXTURE / "model.safetensors")
    del tensors["transformer.h.1.mlp.c_fc.bias"]
    with pytest.raises(ValueError, match=r"missing: \['h.1.mlp.c_fc.bias'\]"):
        hf.load_hf(copy_fixture(tmp_path, tensors))


def test_import_refuses_weights_that_disagree_with_the_config(tmp_path):
    with pytest.raises(
        ValueError, match=r"the weights in .* are block_size=128, but its config.json says block_size=64"
    ):
        hf.load_hf(copy_fixture(tmp_path, n_positions=64))


@pytest.mark.parametrize(
    "field,value",
    [
        ("activation_function", "gelu"),
        ("layer_norm_epsilon", 1e-6),
        ("scale_attn_by_inverse_layer_idx", True),
        ("reorder_and_upcast_attn", True),
        ("scale_attn_weights", False),
        ("n_inner", 64),
        ("tie_word_embeddings", False),
    ],
)
def test_import_refuses_what_the_model_cannot_represent(tmp_path, field, value):
    with pytest.raises(ValueError, match=rf"sets .*{field}=.*cannot represent"):
        hf.load_hf(copy_fixture(tmp_path, **{field: value}))


def test_import_refuses_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        hf.load_hf(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="holds no config.json"):
        hf.load_hf(tmp_path)
    (tmp_path / "config.json").write_text((FIXTURE / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="holds no model.safetensors"):
        hf.load_hf(tmp_path)


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda data: data[: len(data) // 2], "incomplete metadata, file not fully covered"),  # a cut download
        (lambda data: (1 << 62).to_bytes(8, "little") + data[8:], "header too large"),  # an absurd header length
    ],
)
def test_import_refuses_a_cut_or_garbled_weights_file_in_one_sentence(tmp_path, damage, reason):
    directory = copy_fixture(tmp_path)
    weights_file = directory / "model.safetensors"
    weights_file.write_bytes(damage(weights_file.read_bytes()))
    with pytest.raises(ValueError, match=rf"hf/model.safetensors is not a readable safetensors file \(.*{reason}\); "):
        hf.load_hf(directory)


def test_the_commands_refuse_a_cut_weights_file_in_one_sentence(tmp_path):
    from tests.helpers import REPO

    directory = copy_fixture(tmp_path)
    weights_file = directory / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:100_000])
    (tmp_path / "text.txt").write_text("Hello world. " * 20)
    evaluate = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpt2jax.cli.evaluate",
            f"--init_from=hf:{directory}",
            f"--text={tmp_path / 'text.txt'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert evaluate.returncode == 1 and evaluate.stderr.strip().splitlines() == [
        f"error: {weights_file} is not a readable safetensors file (Error while deserializing header: "
        "incomplete metadata, file not fully covered); download it again."
    ], evaluate.stderr[-2000:]


def test_import_refuses_non_finite_weights_naming_the_tensor(tmp_path):
    tensors = load_file(FIXTURE / "model.safetensors")
    tensors["transformer.h.1.mlp.c_fc.weight"][3, 5] = np.nan
    with pytest.raises(ValueError, match=r"h.1.mlp.c_fc.weight in .*hf holds NaN or infinite values; download"):
        hf.load_hf(copy_fixture(tmp_path, tensors))


def test_import_of_a_gpt2jax_workdir_or_a_config_that_is_no_object_says_what_it_is(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(base_config().to_json_best_effort())
    with pytest.raises(
        ValueError, match=rf"run is a gpt2jax training workdir, .*pass --init_from checkpoint:{workdir} "
    ):
        hf.load_hf(workdir)
    (workdir / "config.json").write_text("[]")
    with pytest.raises(ValueError, match=r"run/config.json holds a JSON list, not an object; download it again"):
        hf.load_hf(workdir)


def test_import_into_a_given_config_keeps_its_padding_and_checks_its_shape():
    config = GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=128, vocab_multiple=1, dtype="bfloat16")
    loaded_config, params = hf.load_hf(FIXTURE, config)
    assert loaded_config is config and nnx.to_pure_dict(params)["wte"].shape == (50257, 32)
    with pytest.raises(ValueError, match=r"pass --config.model.n_layer=2 --config.model.block_size=128\.$"):
        hf.load_hf(FIXTURE, dataclasses.replace(config, n_layer=12, block_size=1024))


# Training from HF weights, and exporting a run.


def fixture_run_config(**train_changes):
    config = base_config()
    config.model.update(n_layer=2, n_head=4, n_embd=32, block_size=128)
    config.train.update(init_from=f"hf:{FIXTURE}", **train_changes)
    return config


def test_restore_or_init_starts_from_hf_weights_then_resumes(tmp_path):
    from gpt2jax.training import loop
    from gpt2jax.training.checkpoint import Checkpointer
    from gpt2jax.training.trainer import build_trainer

    trainer = build_trainer(fixture_run_config())
    checkpointer = Checkpointer(tmp_path / "checkpoints", asynchronous=False)
    try:
        state = loop.restore_or_init(trainer, checkpointer)
        _, expected = hf.load_hf(FIXTURE)
        assert int(state["step"]) == 0
        assert_same_params(state["params"], expected)
        # Sharded as the table says, with an optimizer state to match.
        wte = nnx.to_pure_dict(state["params"])["wte"]
        assert wte.sharding == nnx.to_pure_dict(trainer.state_shardings["params"])["wte"]
        assert jax.tree.structure(state["opt_state"]) == jax.tree.structure(trainer.abstract_state["opt_state"])
        checkpointer.save(7, dict(state, step=state["step"] + 7))
        checkpointer.wait()
        assert int(loop.restore_or_init(trainer, checkpointer)["step"]) == 7
    finally:
        checkpointer.close()


def test_restore_or_init_names_the_flags_for_a_mismatched_model(tmp_path):
    from gpt2jax.training import loop
    from gpt2jax.training.checkpoint import Checkpointer
    from gpt2jax.training.trainer import build_trainer

    config = fixture_run_config()
    config.model.n_embd = 64
    trainer = build_trainer(config)
    checkpointer = Checkpointer(tmp_path / "checkpoints", asynchronous=False)
    try:
        with pytest.raises(ValueError, match=r"pass --config.model.n_embd=32\.$"):
            loop.restore_or_init(trainer, checkpointer)
    finally:
        checkpointer.close()


def test_a_config_json_of_another_shape_than_its_weights_is_refused_not_advised_as_flags(tmp_path):
    """A config.json of GPT-2 medium beside weights of 2 x 128: training advised medium's flags, which the weights
    cannot fill; evaluate said at once that the two disagree. Both say so now, from the weights' shapes."""
    from gpt2jax.training import loop
    from gpt2jax.training.checkpoint import Checkpointer
    from gpt2jax.training.trainer import build_trainer

    directory = copy_fixture(tmp_path, n_layer=24, n_embd=1024, n_head=16)  # medium's shape, the fixture's weights
    disagree = (
        rf"^the weights in {directory} are n_layer=2, n_embd=32, but its config.json says n_layer=24, n_embd=1024: "
        r"the checkpoint and its config disagree; correct config.json to the weights' shape, or download"
    )
    with pytest.raises(ValueError, match=disagree):
        hf.load_hf(directory)  # as evaluate --init_from reads it
    config = fixture_run_config()
    config.train.init_from = f"hf:{directory}"
    checkpointer = Checkpointer(tmp_path / "checkpoints", asynchronous=False)
    try:
        with pytest.raises(ValueError, match=disagree):
            loop.restore_or_init(build_trainer(config), checkpointer)
    finally:
        checkpointer.close()


def test_export_of_a_run_started_from_hf_gives_back_the_hf_weights(tmp_path):
    from gpt2jax.training import loop
    from gpt2jax.training.checkpoint import Checkpointer
    from gpt2jax.training.trainer import build_trainer

    config = fixture_run_config()
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(config.to_json_best_effort())
    trainer = build_trainer(config)
    checkpointer = Checkpointer(workdir / "checkpoints", asynchronous=False)
    try:
        checkpointer.save(0, loop.restore_or_init(trainer, checkpointer))
        checkpointer.wait()
    finally:
        checkpointer.close()
    out = tmp_path / "exported"
    result = subprocess.run(
        [sys.executable, "-m", "gpt2jax.cli.export", f"--workdir={workdir}", f"--out={out}"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    tokenizer_files = ["vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"]
    printed = json.loads(result.stdout.splitlines()[-1])
    assert printed == {"step": 0, "out": str(out), "tokenizer_files": [*tokenizer_files, "generation_config.json"]}
    # Readable by everyone, as save_pretrained leaves its files (safetensors alone would write 0600).
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in out.iterdir()}
    assert modes == dict.fromkeys(
        ["config.json", "model.safetensors", *printed["tokenizer_files"], EXPORT_MARKER], 0o644
    )
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 128
    exported = load_file(out / "model.safetensors")
    original = load_file(FIXTURE / "model.safetensors")
    assert exported.keys() == original.keys()
    for name in original:
        assert np.array_equal(exported[name], original[name]), name


def test_main_fine_tunes_from_hf_weights(tmp_path):
    """``main --init_from hf:DIR`` starts from the fixture: its first loss is the fixture's loss."""
    from gpt2jax.inference import weights
    from tests.helpers import run_main

    workdir = tmp_path / "finetune"
    result = run_main(
        [
            "--config",
            "configs/tiny.py",
            "--workdir",
            str(workdir),
            "--init_from",
            f"hf:{FIXTURE}",
            "--config.model.n_embd=32",
            "--config.model.block_size=128",
            f"--config.data.dir={tmp_path / 'data'}",
            "--config.data.synthetic_train_tokens=20000",
            "--config.data.synthetic_val_tokens=2000",
            "--config.train.batch_size=8",
            "--config.train.steps=2",
            "--config.train.log_every=1",
            "--config.train.eval_every=2",
            "--config.train.eval_batches=1",
            "--config.train.learning_rate=0",
        ]
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # With a zero learning rate the trained parameters are the fixture's, to the bit.
    loaded = weights.restore_checkpoint(workdir)
    _, expected = hf.load_hf(FIXTURE)
    assert loaded.step == 2
    assert_same_params(loaded.params, expected)


def tokenizer_test_strings() -> list[str]:
    """A few hundred strings: the fixture's text cut at random places, and BPE's hard cases."""
    text = (FIXTURE / "text.txt").read_text()
    rng = random.Random(0)
    cuts = [sorted(rng.sample(range(len(text)), 2)) for _ in range(250)]
    hard = [
        "The",
        " The",
        "",
        "   leading and trailing spaces   ",
        "tabs\tand\nnewlines\n\n\nand\r\nCRLF",
        "I'm, you're, they'd, it's, we'll, I've, 'quoted'",
        "numbers 1234567890 3.14159 -42 1e-5",
        "UPPER lower MiXeD snake_case camelCase",
        "naïve café résumé Ωmega 東京 😀👍🏽 ∑∫√",
        "a<|endoftext|>b",
        "<|endoftext|>",
        "  \u00a0non-breaking\u2003spaces",
        "https://example.com/path?q=1&r=2#frag",
        "def f(x):\n    return x ** 2  # comment",
    ]
    return [text[start:end] for start, end in cuts] + hard


def test_an_export_tokenizes_with_transformers_exactly_as_tiktoken(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config, params = hf.load_hf(FIXTURE)
    hf.save_hf(config, params, tmp_path)
    hf.save_gpt2_tokenizer(config, tmp_path)
    ours = transformers.AutoTokenizer.from_pretrained(tmp_path)
    tiktoken_gpt2 = get_tokenizer()
    strings = tokenizer_test_strings()
    assert len(strings) > 200
    for text in strings:
        expected = tiktoken_gpt2.encode(text, allowed_special={"<|endoftext|>"})
        assert ours.encode(text) == expected, text
        assert ours.decode(expected) == tiktoken_gpt2.decode(expected), text
    assert ours.eos_token_id == ours.bos_token_id == 50256 and ours.model_max_length == config.block_size
    generation = transformers.GenerationConfig.from_pretrained(tmp_path)
    assert generation.eos_token_id == generation.bos_token_id == 50256
