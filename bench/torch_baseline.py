"""A PyTorch GPT-2 training step, the yardstick for ``gpt2jax.cli.bench``: eager on a CPU, compiled on a GPU.

The same architecture as gpt2jax (nanoGPT's shape conventions: pre-LayerNorm blocks,
tied embeddings, tanh GELU, a 64-padded vocabulary), AdamW, gradient clipping. By default
float32, eager mode (no torch.compile), all host cores: ``bench/compare_cpu.sh``'s peer.
With ``--device cuda --compile --dtype bfloat16``, what a PyTorch user runs on a GPU (and
``bench/gpu.py``'s peer): ``torch.compile``, SDPA held to its flash-attention kernel,
fused AdamW, bf16 autocast around float32 weights. PyTorch is not a project dependency:
run this from an environment that has it (the GPU image does; ``pip install torch`` elsewhere).

    python bench/torch_baseline.py --n_layer 2 --n_head 4 --n_embd 128 --block_size 64 --batch_size 16
"""

import argparse
import contextlib
import json
import math
import time

import torch
from torch import nn
from torch.nn import functional as F


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.ln_1 = nn.LayerNorm(n_embd)
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.attn_out = nn.Linear(n_embd, n_embd)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.fc = nn.Linear(n_embd, 4 * n_embd)
        self.proj = nn.Linear(4 * n_embd, n_embd)

    def forward(self, x):
        batch, seq, width = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(width, dim=2)
        heads = lambda t: t.view(batch, seq, self.n_head, width // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), is_causal=True)
        x = x + self.attn_out(y.transpose(1, 2).reshape(batch, seq, width))
        return x + self.proj(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, n_layer, n_head, n_embd, block_size, vocab_size):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("attn_out.weight", "proj.weight")) else 0.02
                nn.init.normal_(p, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, tokens, targets):
        x = self.wte(tokens) + self.wpe(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.T
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in [
        ("n_layer", 2),
        ("n_head", 4),
        ("n_embd", 128),
        ("block_size", 64),
        ("batch_size", 16),
        ("vocab_size", 50304),
        ("steps", 10),
    ]:
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="bfloat16: autocast.")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model.")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.set_float32_matmul_precision("high")  # TF32 for what autocast leaves in float32, as nanoGPT does
    model = GPT(args.n_layer, args.n_head, args.n_embd, args.block_size, args.vocab_size).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=6e-4,
        betas=(0.9, 0.95),
        fused=on_gpu,  # one kernel for the whole update (CUDA only)
    )
    forward = torch.compile(model) if args.compile else model
    shape = (args.batch_size, args.block_size)

    def autocast():
        if args.dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    def attention_kernel():
        if not on_gpu:
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.FLASH_ATTENTION)  # flash or an error, never a silent fallback

    def step():
        tokens = torch.randint(0, 50257, shape, device=device)
        with autocast(), attention_kernel():
            loss = forward(tokens, torch.roll(tokens, -1, dims=1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss

    def synchronize():
        if on_gpu:
            torch.cuda.synchronize()

    start = time.perf_counter()
    for _ in range(2):  # warm-up: compilation, first-call allocations
        step()
    synchronize()
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    mode = "torch.compile" if args.compile else "eager"
    print(
        json.dumps(
            {
                "framework": f"torch {torch.__version__} {mode}",
                "device_name": torch.cuda.get_device_name() if on_gpu else "cpu",
                "settings": {
                    "dtype": args.dtype,
                    "compile": args.compile,
                    "fused_adamw": on_gpu,
                    "sdpa": "flash" if on_gpu else "default",
                },
                "threads": torch.get_num_threads(),
                "tokens_per_s": args.batch_size * args.block_size / seconds,
                "step_ms": 1e3 * seconds,
                "warmup_s": warmup_s,
                "peak_memory_bytes": torch.cuda.max_memory_allocated() if on_gpu else None,
                "final_loss": loss.item(),
            }
        )
    )


if __name__ == "__main__":
    main()
