"""Hugging Face GPT-2 checkpoints in and out, without PyTorch.

A checkpoint is a directory with ``config.json`` and ``model.safetensors`` (or shards listed in
``model.safetensors.index.json``), as ``GPT2LMHeadModel.save_pretrained`` writes it. HF's
Conv1D layers store their weights [in, out], as gpt2jax does, so only reshapes separate the
heads: c_attn [D, 3D] -> qkv_kernel [D, 3, H, K], attention c_proj [D, D] -> out_kernel
[H, K, D]. On import the token embedding gets zero rows up to the padded vocabulary (the model
masks their logits); on export they are cut off again. The output projection is tied to the
token embedding, so an ``lm_head.weight`` that differs from it is refused.

Every file is written readable by all (0644), as ``save_pretrained`` leaves files under the usual
umask; safetensors' own ``save_file`` creates its file 0600, which would hide the weights from
the other users of a shared export directory.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import jax
import numpy as np
from flax import nnx, traverse_util
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from gpt2jax import flops
from gpt2jax.data.tokenizer import ENCODER_JSON, EOT_TOKEN_ID, VOCAB_BPE
from gpt2jax.errors import first_line
from gpt2jax.files.atomic import write_atomically
from gpt2jax.files.workdir import read_json
from gpt2jax.model import GPTConfig, abstract_model

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
FILE_MODE = 0o644
EOT_TEXT = "<|endoftext|>"
SHAPE_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")

# Defaults of transformers' GPT2Config, for keys a config.json leaves out.
_HF_DEFAULTS = dict(
    vocab_size=50257,
    n_positions=1024,
    n_embd=768,
    n_layer=12,
    n_head=12,
    n_inner=None,
    activation_function="gelu_new",
    layer_norm_epsilon=1e-5,
    scale_attn_weights=True,
    scale_attn_by_inverse_layer_idx=False,
    reorder_and_upcast_attn=False,
    add_cross_attention=False,
    tie_word_embeddings=True,
)
# The model's GELU is the tanh approximation, which both of these names mean.
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")
_DOWNLOAD_AGAIN = "download it again"
# Causal-mask buffers that older transformers versions saved with the weights.
_MASK_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)$")


def read_config(directory: str | Path) -> dict[str, int]:
    """The GPTConfig shape fields of a Hugging Face GPT-2 config, refusing what the model cannot run."""
    if not Path(directory).is_dir():
        raise FileNotFoundError(
            f"{directory} is not a directory; a Hugging Face GPT-2 checkpoint is a directory "
            f"with {CONFIG_FILE} and {WEIGHTS_FILE}."
        )
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} holds no {CONFIG_FILE}; a Hugging Face GPT-2 directory has {CONFIG_FILE} and {WEIGHTS_FILE}."
        )
    hf = read_json(path, _DOWNLOAD_AGAIN)
    if {"model", "train", "data"} <= hf.keys():  # the sections of gpt2jax's own config.json
        raise ValueError(
            f"{directory} is a gpt2jax training workdir, not a Hugging Face directory; pass "
            f"--init_from checkpoint:{directory} to start from its checkpoint (or --workdir {directory} to evaluate it)."
        )
    hf = _HF_DEFAULTS | hf
    if hf.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"{path} describes a {hf['model_type']!r} model; only GPT-2 (model_type 'gpt2') imports.")
    unsupported = []
    if hf["activation_function"] not in _TANH_GELUS:
        unsupported.append(
            f"activation_function={hf['activation_function']!r} (the model uses "
            f"tanh-approximated GELU: {' or '.join(_TANH_GELUS)})"
        )
    if hf["layer_norm_epsilon"] != 1e-5:
        unsupported.append(f"layer_norm_epsilon={hf['layer_norm_epsilon']} (the model uses 1e-5)")
    if hf["n_inner"] not in (None, flops.mlp_width(hf["n_embd"])):
        unsupported.append(
            f"n_inner={hf['n_inner']} (the model's MLP is {flops.MLP_EXPANSION} * n_embd = {flops.mlp_width(hf['n_embd'])} wide)"
        )
    for flag, representable in (
        ("scale_attn_weights", True),
        ("scale_attn_by_inverse_layer_idx", False),
        ("reorder_and_upcast_attn", False),
        ("add_cross_attention", False),
        ("tie_word_embeddings", True),
    ):
        if bool(hf[flag]) != representable:
            unsupported.append(f"{flag}={hf[flag]}")
    if unsupported:
        raise ValueError(f"{path} sets {', '.join(unsupported)}, which gpt2jax's GPT-2 cannot represent.")
    return dict(
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        n_embd=hf["n_embd"],
        block_size=hf["n_positions"],
        vocab_size=hf["vocab_size"],
    )


def check_shape(hf_fields: dict[str, int], model_config: GPTConfig, directory: str | Path) -> None:
    """Refuses a model config whose shape differs from the checkpoint's, naming the flags that fix it."""
    differing = [name for name in SHAPE_FIELDS if hf_fields[name] != getattr(model_config, name)]
    if differing:
        flags = " ".join(f"--config.model.{name}={hf_fields[name]}" for name in differing)
        ours = ", ".join(f"{name}={getattr(model_config, name)}" for name in differing)
        raise ValueError(
            f"the config's model ({ours}) differs from the Hugging Face model in {directory}; pass {flags}."
        )


def check_config_fits_weights(fields: dict[str, int], tensors: dict[str, np.ndarray], directory) -> None:
    """Refuses a config.json whose shape is not the weights': a config.json of GPT-2 medium beside weights of
    2 layers of width 128 had training advise medium's flags, which those weights cannot fill."""
    if "wte.weight" not in tensors or "wpe.weight" not in tensors:
        return  # named as missing weights
    layers = {int(name.split(".")[1]) for name in tensors if re.match(r"h\.\d+\.", name)}
    found = dict(
        n_layer=max(layers) + 1 if layers else 0,
        n_embd=tensors["wte.weight"].shape[-1],
        block_size=tensors["wpe.weight"].shape[0],
        vocab_size=tensors["wte.weight"].shape[0],
    )
    differing = [name for name, value in found.items() if fields[name] != value]
    if differing:
        weights = ", ".join(f"{name}={found[name]}" for name in differing)
        said = ", ".join(f"{name}={fields[name]}" for name in differing)
        raise ValueError(
            f"the weights in {directory} are {weights}, but its {CONFIG_FILE} says {said}: the checkpoint and its "
            f"config disagree; correct {CONFIG_FILE} to the weights' shape, or download the checkpoint again."
        )


def load_hf(directory: str | Path, model_config: GPTConfig | None = None) -> tuple[GPTConfig, nnx.State]:
    """(config, params) of a Hugging Face GPT-2 directory; params match ``GPT(config)`` as host numpy arrays.

    Without ``model_config`` the config is GPTConfig's defaults with the checkpoint's shape;
    with one, its shape must equal the checkpoint's and its other fields (vocab_multiple,
    dtype, ...) are kept.
    """
    fields = read_config(directory)
    tensors = _read_tensors(directory)
    check_config_fits_weights(fields, tensors, directory)  # before the config's shape is advised as the flags to pass
    if model_config is None:
        model_config = GPTConfig(**fields)
    else:
        check_shape(fields, model_config, directory)
    lm_head = tensors.pop("lm_head.weight", None)
    table = _name_table(model_config)
    missing = [name for name, *_ in table if name not in tensors]
    unexpected = sorted(set(tensors) - {name for name, *_ in table})
    if missing or unexpected:
        raise ValueError(
            f"the weights in {directory} do not fit config.json's GPT-2 (missing: {missing[:3]}, "
            f"unexpected: {unexpected[:3]}); is it a complete GPT-2 checkpoint?"
        )
    if lm_head is not None and not np.array_equal(lm_head, tensors["wte.weight"]):
        raise ValueError(
            f"the lm_head.weight in {directory} differs from wte.weight; gpt2jax ties them, "
            "so only tied GPT-2 checkpoints import."
        )
    _, params = abstract_model(model_config)
    shapes = {path: leaf.shape for path, leaf in traverse_util.flatten_dict(nnx.to_pure_dict(params)).items()}
    check_table_covers(shapes, table)
    flat = {}
    for name, path, layer, hf_shape in table:
        tensor = np.asarray(tensors[name], np.float32)
        if not np.isfinite(tensor).all():  # 0.04 s for GPT-2 small's 124M parameters: a NaN would train as one
            raise ValueError(
                f"{name} in {directory} holds NaN or infinite values; download the weights again, "
                "or start from another checkpoint."
            )
        if tensor.shape != hf_shape:
            raise ValueError(
                f"{name} in {directory} has shape {tensor.shape} but config.json implies {hf_shape}; "
                "the checkpoint and its config disagree."
            )
        if path == ("wte",):
            tensor = np.pad(tensor, ((0, model_config.padded_vocab_size - model_config.vocab_size), (0, 0)))
        if layer is None:
            flat[path] = tensor.reshape(shapes[path])
            continue
        if path not in flat:  # the stacked array, filled one layer at a time
            flat[path] = np.empty(shapes[path], np.float32)
        flat[path][layer] = tensor.reshape(shapes[path][1:])
    nnx.replace_by_pure_dict(params, traverse_util.unflatten_dict(flat))
    return model_config, params


def save_hf(model_config: GPTConfig, params, out_dir: str | Path) -> Path:
    """Writes config.json and model.safetensors that ``GPT2LMHeadModel.from_pretrained`` loads.

    ``params`` is an nnx.State (or its pure dict) of ``GPT(model_config)``, on host or device.
    The keys are those transformers' own ``save_pretrained`` writes: ``transformer.``-prefixed,
    without ``lm_head.weight``, which transformers ties to the token embedding.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pure = params if isinstance(params, dict) else nnx.to_pure_dict(params)
    flat = traverse_util.flatten_dict(jax.device_get(pure))
    table = _name_table(model_config)
    check_table_covers(flat, table)
    tensors = {}
    for name, path, layer, hf_shape in table:
        value = np.asarray(flat[path] if layer is None else flat[path][layer], np.float32)
        if path == ("wte",):
            value = value[: model_config.vocab_size]
        tensors["transformer." + name] = np.ascontiguousarray(value.reshape(hf_shape))
    save_file(tensors, out_dir / WEIGHTS_FILE, metadata={"format": "pt"})
    os.chmod(out_dir / WEIGHTS_FILE, FILE_MODE)
    write_atomically(out_dir / CONFIG_FILE, _json_text(_hf_config(model_config)))
    return out_dir


def save_gpt2_tokenizer(model_config: GPTConfig, out_dir: str | Path) -> list[str]:
    """Writes GPT-2's tokenizer and generation config, so the directory stands alone; returns the names.

    ``AutoTokenizer.from_pretrained(out_dir)`` then reads vocab.json and merges.txt, which are
    the packaged encoder.json and vocab.bpe tiktoken encodes with, so both tokenize alike; the
    other files are those of openai-community/gpt2 on the Hub, with this model's context.
    """
    out_dir = Path(out_dir)
    special = {"bos_token": EOT_TEXT, "eos_token": EOT_TEXT, "unk_token": EOT_TEXT}
    files = {
        "vocab.json": ENCODER_JSON.read_bytes(),
        "merges.txt": VOCAB_BPE.read_bytes(),
        "tokenizer_config.json": _json_text(
            dict(
                special,
                add_prefix_space=False,
                errors="replace",
                model_max_length=model_config.block_size,
                tokenizer_class="GPT2Tokenizer",
            )
        ),
        "special_tokens_map.json": _json_text(special),
        "generation_config.json": _json_text({"bos_token_id": EOT_TOKEN_ID, "eos_token_id": EOT_TOKEN_ID}),
    }
    for name, content in files.items():
        write_atomically(out_dir / name, content)
    return list(files)


def _json_text(value: dict) -> str:
    return json.dumps(value, indent=2) + "\n"


def check_table_covers(parameters, table) -> None:
    """Refuses parameters (keyed by path tuple) that the name table does not map to a Hugging Face name.

    Without this, a parameter added to the model would be left at its initial value on
    import and dropped on export, both silently.
    """
    mapped = {path for _, path, _, _ in table}
    unmapped = sorted("/".join(map(str, path)) for path in parameters if path not in mapped)
    if unmapped:
        raise ValueError(
            f"parameter {unmapped[0]} has no Hugging Face name in interop.hf._name_table; add it to the table."
        )


def _name_table(config: GPTConfig) -> list[tuple[str, tuple, int | None, tuple[int, ...]]]:
    """(HF name without 'transformer.', gpt2jax parameter path, layer, HF shape) for every parameter.

    Layer ``i``'s HF tensors are slice ``i`` of gpt2jax's stacked block parameters; the
    layer is None for parameters outside the blocks.
    """
    d, f = config.n_embd, config.mlp_width
    table = [
        ("wte.weight", ("wte",), None, (config.vocab_size, d)),
        ("wpe.weight", ("wpe",), None, (config.block_size, d)),
        ("ln_f.weight", ("ln_f", "scale"), None, (d,)),
        ("ln_f.bias", ("ln_f", "bias"), None, (d,)),
    ]
    layer = (
        ("ln_1.weight", ("ln_1", "scale"), (d,)),
        ("ln_1.bias", ("ln_1", "bias"), (d,)),
        ("attn.c_attn.weight", ("attn", "qkv_kernel"), (d, 3 * d)),
        ("attn.c_attn.bias", ("attn", "qkv_bias"), (3 * d,)),
        ("attn.c_proj.weight", ("attn", "out_kernel"), (d, d)),
        ("attn.c_proj.bias", ("attn", "out_bias"), (d,)),
        ("ln_2.weight", ("ln_2", "scale"), (d,)),
        ("ln_2.bias", ("ln_2", "bias"), (d,)),
        ("mlp.c_fc.weight", ("mlp", "fc_kernel"), (d, f)),
        ("mlp.c_fc.bias", ("mlp", "fc_bias"), (f,)),
        ("mlp.c_proj.weight", ("mlp", "proj_kernel"), (f, d)),
        ("mlp.c_proj.bias", ("mlp", "proj_bias"), (d,)),
    )
    for i in range(config.n_layer):
        table += [(f"h.{i}.{name}", ("h",) + path, i, shape) for name, path, shape in layer]
    return table


def _read_tensors(directory: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint by its name without 'transformer.', mask buffers dropped."""
    directory = Path(directory)
    index = directory / WEIGHTS_INDEX_FILE
    if (directory / WEIGHTS_FILE).is_file():
        files = [directory / WEIGHTS_FILE]
    elif index.is_file():
        weight_map = read_json(index, _DOWNLOAD_AGAIN).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index} has no weight_map object; download it again.")
        files = [directory / name for name in sorted(set(weight_map.values()))]
    else:
        raise FileNotFoundError(
            f"{directory} holds no {WEIGHTS_FILE}; download the safetensors weights (PyTorch .bin files are not read)."
        )
    tensors = {}
    for path in files:
        try:
            with safe_open(path, framework="numpy") as weights:
                for key in weights.keys():
                    name = key.removeprefix("transformer.")
                    if not _MASK_BUFFER.match(name):
                        tensors[name] = weights.get_tensor(key)
        except SafetensorError as error:  # a cut download, a header length past the file, ...
            raise ValueError(
                f"{path} is not a readable safetensors file ({first_line(error, limit=200)}); download it again."
            ) from None
    return tensors


def _hf_config(config: GPTConfig) -> dict:
    hf = dict(
        architectures=["GPT2LMHeadModel"],
        model_type="gpt2",
        vocab_size=config.vocab_size,
        n_positions=config.block_size,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_inner=None,
        activation_function="gelu_new",
        # gpt2jax drops out the embeddings and each residual branch, not attention probabilities.
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        initializer_range=0.02,
        scale_attn_weights=True,
        scale_attn_by_inverse_layer_idx=False,
        reorder_and_upcast_attn=False,
        tie_word_embeddings=True,
    )
    if config.vocab_size > EOT_TOKEN_ID:
        hf.update(bos_token_id=EOT_TOKEN_ID, eos_token_id=EOT_TOKEN_ID)
    return hf
