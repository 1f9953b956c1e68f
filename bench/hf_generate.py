"""An export, read back by ``transformers``, continues a prompt token for token as gpt2jax does.

    python bench/hf_generate.py --workdir runs/x [--max_new_tokens 64] [--prompt "..."]

Needs PyTorch and ``transformers`` (CI has no PyTorch, so this is a peer script, not a test).
Exports the run's latest checkpoint to a temporary directory, encodes the prompts with the
export's own tokenizer (``AutoTokenizer``) and with gpt2jax's (tiktoken), and decodes greedily
with both: ``GPT2LMHeadModel.generate(do_sample=False)`` against ``cli.sample --temperature 0``'s
``generate``, compared up to where transformers stops (its end-of-text token). Both run in float32 on the CPU (no TF32), so a divergence is a bug, not rounding
between near-tied logits (the script prints the smallest top-two logit gap it met, so a tie
would show). Prints one JSON line per prompt and a summary.
"""

import argparse
import json
import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from gpt2jax.data.tokenizer import get_tokenizer  # noqa: E402
from gpt2jax.inference.export import export_checkpoint  # noqa: E402
from gpt2jax.inference.sampling import generate  # noqa: E402
from gpt2jax.inference.weights import restore_checkpoint  # noqa: E402

PROMPTS = ["The", "Training GPT-2 from scratch", "python -m gpt2jax.main --config", "\n\n## Scale\n"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--prompt", action="append", help="A prompt (repeatable); default four built-in ones.")
    args = parser.parse_args()
    jax.config.update("jax_default_matmul_precision", "highest")

    import torch
    import transformers

    torch.backends.cuda.matmul.allow_tf32 = False
    loaded = restore_checkpoint(args.workdir)
    tiktoken_encoding = get_tokenizer()
    summary = {"prompts": 0, "tokenizers_agree": 0, "continuations_agree": 0}
    with tempfile.TemporaryDirectory() as out_dir:
        export_checkpoint(args.workdir, out_dir, overwrite=True)
        hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out_dir)
        hf_model = transformers.GPT2LMHeadModel.from_pretrained(out_dir, torch_dtype=torch.float32).eval()
        for prompt in args.prompt or PROMPTS:
            ids = tiktoken_encoding.encode(prompt)
            # transformers' GPT-2 has no positions past its context; gpt2jax would slide its window there.
            new_tokens = min(args.max_new_tokens, loaded.model_config.block_size - len(ids))
            hf_ids = hf_tokenizer(prompt)["input_ids"]
            ours = generate(
                loaded.graphdef,
                loaded.params,
                jnp.asarray([ids], jnp.int32),
                jax.random.key(0),
                max_new_tokens=new_tokens,
                temperature=0.0,
                top_k=0,
            )
            ours = np.asarray(jax.device_get(ours))[0, len(ids) :].tolist()
            with torch.no_grad():
                output = hf_model.generate(
                    torch.tensor([hf_ids]),
                    attention_mask=torch.ones(1, len(hf_ids), dtype=torch.long),
                    do_sample=False,
                    max_new_tokens=new_tokens,
                    pad_token_id=hf_tokenizer.eos_token_id,
                    output_scores=True,
                    return_dict_in_generate=True,
                )
            theirs = output.sequences[0, len(hf_ids) :].tolist()  # ends early at <|endoftext|>; ours goes on
            ours = ours[: len(theirs)]
            top_two = torch.stack(output.scores)[:, 0].topk(2, dim=-1).values
            first_difference = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
            summary["prompts"] += 1
            summary["tokenizers_agree"] += ids == hf_ids
            summary["continuations_agree"] += first_difference is None and len(ours) == len(theirs)
            print(
                json.dumps(
                    {
                        "prompt": prompt,
                        "tokenizers_agree": ids == hf_ids,
                        "tokens": len(ours),
                        "first_difference": first_difference,
                        "smallest_top_two_gap": round(float((top_two[:, 0] - top_two[:, 1]).min()), 6),
                        "gpt2jax": tiktoken_encoding.decode(ours),
                        "transformers": hf_tokenizer.decode(theirs),
                    }
                )
            )
    print(json.dumps({"summary": summary, "transformers": transformers.__version__, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
