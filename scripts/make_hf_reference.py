"""Builds the tiny Hugging Face GPT-2 fixture in tests/data/hf_tiny and its PyTorch reference outputs.

The tests compare gpt2jax against these numbers without needing PyTorch. This script needs
PyTorch and transformers, in an environment of its own (not the project's):

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch transformers safetensors numpy tiktoken
    /tmp/torchenv/bin/python scripts/make_hf_reference.py

and checks that a directory written by ``python -m gpt2jax.cli.export`` loads in transformers and
gives the fixture's logits:

    /tmp/torchenv/bin/python scripts/make_hf_reference.py --check_export DIR

Outputs: config.json and model.safetensors (transformers' save_pretrained of a random
2-layer model), reference.npz (the text's tokens and per-token log-probabilities for two
window strides) and hellaswag.json (hand-made examples with each ending's summed and mean loss).
"""

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

REPO = Path(__file__).resolve().parent.parent
FIXTURE_DIR = REPO / "tests" / "data" / "hf_tiny"
STRIDES = (128, 64)

HELLASWAG_EXAMPLES = [
    {
        "context": "A man is sitting on a roof. He",
        "endings": [
            "is using wrap to wrap a pair of skis.",
            "is ripping level tiles off.",
            "is holding a rubik's cube.",
            "starts pulling up roofing on a roof.",
        ],
        "label": 3,
    },
    {
        "context": "The keeper climbed the stairs of the lighthouse and",
        "endings": [
            "wiped the salt from the great lens.",
            "ate a sandwich.",
            "flew to the moon on a bicycle made of cheese, singing loudly.",
            "slept.",
        ],
        "label": 0,
    },
]


def gpt2_encoding():
    """tiktoken's GPT-2 encoding from the files gpt2jax ships, so no download is needed."""
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(REPO / "gpt2jax" / "data" / "tiktoken_cache"))
    import tiktoken

    return tiktoken.get_encoding("gpt2")


def random_model() -> GPT2LMHeadModel:
    """A tiny GPT-2 whose every parameter is random and far from its default.

    GPT-2's default initialisation gives nearly uniform next-token distributions and unit
    LayerNorms, which would let a wrongly mapped parameter pass a comparison; these weights
    make log-probabilities spread over several nats.
    """
    config = GPT2Config(
        vocab_size=50257,
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=4,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn_like(param)
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                param.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                param.copy_(0.2 * noise)
            elif name.endswith("wte.weight"):
                param.copy_(0.5 * noise)
            elif name.endswith("wpe.weight"):
                param.copy_(0.3 * noise)
            else:  # Conv1D weights are [in, out]
                param.copy_(noise / param.shape[0] ** 0.5)
    return model.eval()


@torch.no_grad()
def window_logprobs(model, tokens: list[int], block_size: int, stride: int) -> np.ndarray:
    """Log-probability of every token after the first, by windows written out one at a time.

    The first window predicts tokens 1..block_size; each later window ends ``stride``
    targets further on (or at the text's end), is block_size tokens long, and keeps only the
    targets the previous window did not reach.
    """
    logprobs = []
    last_target = 0
    while last_target < len(tokens) - 1:
        end = min(last_target + (block_size if last_target == 0 else stride), len(tokens) - 1)
        start = max(0, end - block_size)
        inputs = torch.tensor([tokens[start:end]])
        targets = torch.tensor(tokens[start + 1 : end + 1])
        window = torch.log_softmax(model(inputs).logits[0].float(), dim=-1)
        window = window.gather(-1, targets[:, None])[:, 0]
        logprobs.append(window[-(end - last_target) :].numpy())
        last_target = end
    return np.concatenate(logprobs).astype(np.float32)


@torch.no_grad()
def ending_losses(model, encoding, context: str, ending: str) -> list[float]:
    """build-nanogpt's rendering: context tokens, then the tokens of ' ' + ending, scored on the ending."""
    context_tokens = encoding.encode(context)
    ending_tokens = encoding.encode(" " + ending)
    tokens = torch.tensor([context_tokens + ending_tokens])
    logprobs = torch.log_softmax(model(tokens[:, :-1]).logits[0].float(), dim=-1)
    targets = tokens[0, 1:]
    losses = -logprobs.gather(-1, targets[:, None])[:, 0]
    ending_loss = losses[len(context_tokens) - 1 :]
    return [float(ending_loss.sum()), float(ending_loss.mean())]


def make_fixture() -> None:
    model = random_model()
    model.save_pretrained(FIXTURE_DIR)
    (FIXTURE_DIR / "generation_config.json").unlink(missing_ok=True)
    encoding = gpt2_encoding()
    tokens = encoding.encode((FIXTURE_DIR / "text.txt").read_text())
    reference = {"tokens": np.asarray(tokens, np.int32)}
    for stride in STRIDES:
        reference[f"logprobs_stride{stride}"] = window_logprobs(model, tokens, model.config.n_positions, stride)
    np.savez(FIXTURE_DIR / "reference.npz", **reference)
    hellaswag = [
        dict(
            example,
            losses=[ending_losses(model, encoding, example["context"], ending) for ending in example["endings"]],
        )
        for example in HELLASWAG_EXAMPLES
    ]
    (FIXTURE_DIR / "hellaswag.json").write_text(json.dumps(hellaswag, indent=2) + "\n")
    spread = float(reference[f"logprobs_stride{STRIDES[0]}"].std())
    print(f"wrote {FIXTURE_DIR}: {len(tokens)} tokens, log-probability spread {spread:.2f} nats")


@torch.no_grad()
def check_export(directory: str) -> None:
    """Loads an exported directory with transformers and compares its logits with the fixture's."""
    fixture = GPT2LMHeadModel.from_pretrained(FIXTURE_DIR).eval()
    exported, info = GPT2LMHeadModel.from_pretrained(directory, output_loading_info=True)
    problems = {key: value for key, value in info.items() if value}
    tokens = torch.tensor([gpt2_encoding().encode((FIXTURE_DIR / "text.txt").read_text())[:128]])
    difference = (exported.eval()(tokens).logits - fixture(tokens).logits).abs().max().item()
    print(json.dumps({"loading_problems": problems, "max_abs_logit_difference": difference}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check_export", metavar="DIR", help="an exported directory to compare with the fixture")
    args = parser.parse_args()
    if args.check_export:
        check_export(args.check_export)
    else:
        make_fixture()
