"""Parameter, FLOP and device accounting: every count the program prints comes from here.

Conventions (GPT-2 with tied input/output embeddings):
- ``n_params`` counts every parameter once: token embedding (also the output
    projection), position embedding, blocks and final LayerNorm.
- ``n_params_non_embedding`` drops the token and position embeddings, as Kaplan et
    al. (2020) and Chinchilla's fits do.
- Training FLOPs per token follow three published recipes: ``6N``, PaLM's
    ``6N + 12·L·H·Q·T`` (appendix B), and Chinchilla's appendix F.
- MFU is reported under two conventions: PaLM's (``mfu``: the attention term counts the
    full T x T score matrix, as nanoGPT does) and the causal one llm.c and MaxText use
    (``mfu_causal``: ``6N + 6·L·H·Q·T``, the masked half of the scores left out).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import platform
import time
from pathlib import Path

from gpt2jax.files.atomic import write_atomically


@dataclasses.dataclass(frozen=True)
class Shape:
    """The numbers that decide GPT-2's parameter and FLOP counts."""

    n_layer: int
    n_head: int
    n_embd: int
    vocab_size: int
    block_size: int

    @classmethod
    def from_config(cls, model_config, *, padded: bool = False) -> "Shape":
        vocab = (
            padded_vocab_size(model_config.vocab_size, model_config.vocab_multiple)
            if padded
            else model_config.vocab_size
        )
        return cls(model_config.n_layer, model_config.n_head, model_config.n_embd, vocab, model_config.block_size)


def padded_vocab_size(vocab_size: int, multiple: int) -> int:
    """Rounds the vocabulary up to a multiple (50257 -> 50304 for 64): faster matmuls, mesh-divisible rows."""
    return -(-vocab_size // multiple) * multiple


# GPT-2's MLP is this many times the model width; every count of MLP parameters, FLOPs and
# shardings reads it through ``mlp_width``, so a new MLP changes it here once.
MLP_EXPANSION = 4


def mlp_width(n_embd: int) -> int:
    """The hidden width of a block's MLP: 4d for GPT-2."""
    return MLP_EXPANSION * n_embd


def params_per_block(n_embd: int) -> int:
    """Two LayerNorms (4d), qkv (3d²+3d), attention out (d²+d), MLP (2df+f+d): 12d² + 13d at f = 4d."""
    d, f = n_embd, mlp_width(n_embd)
    return 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (2 * d * f + f + d)


def count_params(shape: Shape) -> dict[str, int]:
    """Parameter counts by component; ``n_params`` is 124,439,808 for GPT-2 small."""
    token_embedding = shape.vocab_size * shape.n_embd
    position_embedding = shape.block_size * shape.n_embd
    blocks = shape.n_layer * params_per_block(shape.n_embd)
    final_norm = 2 * shape.n_embd
    non_embedding = blocks + final_norm
    return {
        "n_params": token_embedding + position_embedding + non_embedding,
        "n_params_non_embedding": non_embedding,
        "token_embedding": token_embedding,
        "position_embedding": position_embedding,
    }


def flops_per_token_6n(n_params: int) -> float:
    """Kaplan's and Chinchilla's rule of thumb: 2N forward plus 4N backward per token."""
    return 6.0 * n_params


def flops_per_token_palm(shape: Shape, seq_len: int | None = None, *, causal: bool = False) -> float:
    """PaLM's 6N + 12·L·H·Q·T, as nanoGPT's MFU uses it; ``causal`` halves the attention term.

    N excludes the position embedding (a lookup, no matmul) but keeps the token
    embedding, which the tied output projection multiplies by. H·Q is the model width.
    With ``causal``, 6N + 6·L·H·Q·T: only the scores a causal mask keeps are counted, the
    convention of llm.c and MaxText (at GPT-2 small's T=1024, 6.6% fewer FLOPs than PaLM's).
    """
    seq_len = shape.block_size if seq_len is None else seq_len
    counts = count_params(shape)
    matmul_params = counts["n_params"] - counts["position_embedding"]
    attention = (6.0 if causal else 12.0) * shape.n_layer * shape.n_embd * seq_len
    return 6.0 * matmul_params + attention


def flops_per_token_chinchilla(shape: Shape, seq_len: int | None = None) -> float:
    """Chinchilla's appendix F: forward FLOPs counted op by op, backward twice the forward.

    Per sequence of length T with width d, key size k, H heads, vocabulary V and an
    MLP of width 4d, divided by T to give a per-token figure.
    """
    seq = shape.block_size if seq_len is None else seq_len
    embeddings = 2 * seq * shape.vocab_size * shape.n_embd
    logits = 2 * seq * shape.n_embd * shape.vocab_size
    return flops_per_token_chinchilla_layers(shape, seq) + 3.0 * (embeddings + logits) / seq


def flops_per_token_chinchilla_layers(shape: Shape, seq_len: int | None = None) -> float:
    """Chinchilla's appendix F for the transformer layers alone: the count behind its Table A4.

    Table A4's ratios to 6N (1.03, 1.10, 1.08, 1.04, 1.03, 0.99 at T=2048, V=32000) come out
    of the attention and MLP terms with N counting the blocks and one vocabulary matrix. The
    appendix also lists embedding and logit terms, but with them no context or vocabulary
    reproduces the table; nanoGPT's scaling_laws.ipynb reports the authors confirmed the
    table leaves them out.
    """
    seq = shape.block_size if seq_len is None else seq_len
    d, heads = shape.n_embd, shape.n_head
    key_size = d // heads
    ffw = mlp_width(d)
    attention = (
        2 * 3 * seq * d * (key_size * heads)  # q, k, v projections
        + 2 * seq * seq * (key_size * heads)  # q @ k logits
        + 3 * heads * seq * seq  # softmax
        + 2 * seq * seq * (key_size * heads)  # softmax @ v
        + 2 * seq * (key_size * heads) * d  # output projection
    )
    dense = 2 * seq * (d * ffw + d * ffw)
    return 3.0 * shape.n_layer * (attention + dense) / seq


def flops_per_token(shape: Shape, seq_len: int | None = None) -> dict[str, float]:
    """All three per-token training FLOP estimates, keyed by name."""
    n_params = count_params(shape)["n_params"]
    return {
        "6n": flops_per_token_6n(n_params),
        "6n_attention": flops_per_token_palm(shape, seq_len),
        "chinchilla": flops_per_token_chinchilla(shape, seq_len),
    }


def model_accounting(model_config) -> dict:
    """Parameter counts for the true and the padded vocabulary, and FLOPs per token, of a GPTConfig."""
    true_shape = Shape.from_config(model_config)
    padded_shape = Shape.from_config(model_config, padded=True)
    true_counts, padded_counts = count_params(true_shape), count_params(padded_shape)
    per_token = flops_per_token(true_shape)
    return {
        "n_params": true_counts["n_params"],
        "n_params_non_embedding": true_counts["n_params_non_embedding"],
        "n_params_padded": padded_counts["n_params"],
        "n_params_non_embedding_padded": padded_counts["n_params_non_embedding"],
        "flops_per_token_6n": per_token["6n"],
        "flops_per_token_6n_attention": per_token["6n_attention"],
        "flops_per_token_chinchilla": per_token["chinchilla"],
    }


def step_accounting(model_config, batch_size: int) -> dict:
    """Tokens and model FLOPs of one optimizer step over ``batch_size`` sequences, by PaLM's and the causal count."""
    tokens = batch_size * model_config.block_size
    shape = Shape.from_config(model_config)
    return {
        "tokens_per_step": tokens,
        "flops_per_step": flops_per_token_palm(shape) * tokens,
        "flops_per_step_causal": flops_per_token_palm(shape, causal=True) * tokens,
    }


def throughput(step: dict, steps: int, seconds: float, peak_flops: float | None) -> dict:
    """tokens/s, model FLOP/s and MFU of ``steps`` steps of ``step_accounting`` that took ``seconds``.

    ``mfu`` and ``model_flops_per_s`` count PaLM's FLOPs, ``mfu_causal`` the causal count
    llm.c and MaxText report; the bench and the training log both print these keys.
    """
    model_flops_per_s = steps * step["flops_per_step"] / seconds
    return {
        "tokens_per_s": steps * step["tokens_per_step"] / seconds,
        "model_flops_per_s": model_flops_per_s,
        "mfu": mfu(model_flops_per_s, peak_flops),
        "mfu_causal": mfu(steps * step["flops_per_step_causal"] / seconds, peak_flops),
    }


def format_count(value: float) -> str:
    """1.93e9 -> '1.93B', 4.17e5 -> '417k': the scale a reader compares model and data sizes in."""
    for divisor, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= divisor:
            return f"{value / divisor:.3g}{suffix}"
    return f"{value:.3g}"


# Peak dense throughput in FLOP/s per precision, from the vendors' datasheets and whitepapers,
# never with 2:4 sparsity (datasheets print sparse tensor figures; dense is half):
#   fp32  plain float32 on the CUDA cores (TPUs: XLA's HIGHEST precision, six bf16 passes);
#   tf32  float32 matmuls on the tensor cores (TF32, which XLA:GPU uses for float32 by default);
#   bf16  bfloat16 or float16 tensor-core matmuls with float32 accumulation, what mixed
#         precision training runs (GeForce cards run fp16 accumulation twice as fast; no
#         trainer uses it).
# Keys are matched against jax's ``device_kind`` by ``device_key``.
#   host_link  bytes/s one direction of the card's link to the host memory, an assumption: PCIe x16's
#         coded rate per direction (PCI-SIG: 8, 16, 32 GT/s a lane for 3.0, 4.0, 5.0, 128b/130b:
#         15.75, 31.5, 63 GB/s) x 0.8, about what pinned copies reach in CUDA's bandwidthTest (PCIe 4.0
#         x16 ~25 GB/s); not measured here. SXM boards reach the host over PCIe x16 too (HGX: 5.0 for
#         H100 and H200, 4.0 for A100). What train.offload's traffic is costed at (``host_link_seconds``).
#         TPUs: none stated (their host link is not in Google's pages), so offload is not costed there.
PCIE_X16 = {"3.0": 0.8 * 15.75e9, "4.0": 0.8 * 31.5e9, "5.0": 0.8 * 63e9}
DEVICE_PEAKS: dict[str, dict[str, float]] = {
    # H100 SXM5 datasheet: FP32 67 TFLOPS; TF32 989, BF16/FP16 1979 TFLOPS "with sparsity".
    "h100-sxm": {"fp32": 67e12, "tf32": 494.5e12, "bf16": 989.5e12, "memory_gib": 80, "host_link": PCIE_X16["5.0"]},
    # H100 PCIe datasheet: FP32 51; TF32 756, BF16 1513 with sparsity.
    "h100-pcie": {"fp32": 51e12, "tf32": 378e12, "bf16": 756.5e12, "memory_gib": 80, "host_link": PCIE_X16["5.0"]},
    # H200 SXM datasheet: the H100 SXM's compute (FP32 67; TF32 989, BF16 1979 with sparsity), 141 GB HBM3e.
    "h200": {"fp32": 67e12, "tf32": 494.5e12, "bf16": 989.5e12, "memory_gib": 141, "host_link": PCIE_X16["5.0"]},
    # A100 datasheet: FP32 19.5; TF32 156 and BF16 312 dense (312 and 624 with sparsity).
    "a100": {"fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12, "memory_gib": 80, "host_link": PCIE_X16["4.0"]},
    # Ada whitepaper, appendix A (RTX 4090): FP32 82.6; TF32 82.6, BF16 with FP32 accumulate 165.2
    # dense (FP16 accumulate 330.3); llm.c's Ada table uses the same 165.2.
    "rtx-4090": {"fp32": 82.6e12, "tf32": 82.6e12, "bf16": 165.2e12, "memory_gib": 24, "host_link": PCIE_X16["4.0"]},
    # RTX 4070 Ti: 7680 CUDA cores x 2.61 GHz boost x 2 = 40.1 TFLOPS fp32, the rate the one-GPU-year
    # question's 1.14e21 assumes. NVIDIA gives 641 "AI TOPS", sparse FP8: 320 dense FP8, 160 FP16 with
    # FP16 accumulate, and GeForce Ada halves that with FP32 accumulate: 80.2 (60 SMs x 2.61 GHz x
    # 512 FLOP per SM per clock, the 4090's 165.2 / (128 x 2.52) ratio); TF32 is half of that again.
    "rtx-4070-ti": {"fp32": 40.1e12, "tf32": 40.1e12, "bf16": 80.2e12, "memory_gib": 12, "host_link": PCIE_X16["4.0"]},
    # V100 SXM2 datasheet: FP32 15.7, FP16 tensor (FP32 accumulate) 125; no bf16 and no TF32, so
    # float32 matmuls run at the fp32 rate.
    "v100": {"fp32": 15.7e12, "tf32": 15.7e12, "bf16": 125e12, "memory_gib": 32, "host_link": PCIE_X16["3.0"]},
    # TPU v4 and v5e: 275 and 197 TFLOPS bf16 (Google Cloud's system architecture pages). A float32
    # matmul at JAX's default precision is one bf16 pass (the tf32 column); at HIGHEST, six.
    "tpu-v4": {"fp32": 275e12 / 6, "tf32": 275e12, "bf16": 275e12, "memory_gib": 32},
    "tpu-v5e": {"fp32": 197e12 / 6, "tf32": 197e12, "bf16": 197e12, "memory_gib": 16},
}
PRECISIONS = ("fp32", "tf32", "bf16")

# jax device_kind strings -> table keys, most specific first.
_DEVICE_KIND_PATTERNS = (
    ("h100 pcie", "h100-pcie"),
    ("h100", "h100-sxm"),
    ("h200", "h200"),
    ("a100", "a100"),
    ("4090", "rtx-4090"),
    ("4070 ti", "rtx-4070-ti"),
    ("v100", "v100"),
    ("tpu v4", "tpu-v4"),
    ("tpu v5 lite", "tpu-v5e"),
    ("tpu v5e", "tpu-v5e"),
)


def host_link_seconds(transfer_bytes: float, device: str) -> float | None:
    """Seconds ``transfer_bytes`` take over ``device``'s link to the host (DEVICE_PEAKS' ``host_link``), counted
    one direction after the other (a bound: PCIe is full duplex); None where the table states no link."""
    rate = DEVICE_PEAKS[device].get("host_link")
    return None if rate is None else transfer_bytes / rate


# The share of the forward pass's matmul FLOPs each model.remat policy runs again in the backward pass:
# full recomputes every block's forward; dots keeps every weight matmul's output and the attention
# output, so it reruns only elementwise ops. A step of 6N per token then costs (6 + 2 x share) N.
# Counted, not timed: on an H200, GPT-2 small's step ran no slower with full (docs/benchmarks.md),
# since memory bound there; a compute-bound card pays up to the count.
REMAT_RECOMPUTED_FORWARD = {"none": 0.0, "dots": 0.0, "full": 1.0}


def remat_step_factor(remat: str) -> float:
    """A train step's FLOPs with ``remat`` over its FLOPs without: 1 + 2 x the recomputed forward share / 6."""
    if remat not in REMAT_RECOMPUTED_FORWARD:
        raise ValueError(
            f"no recompute count for model.remat={remat!r}; counted: {', '.join(REMAT_RECOMPUTED_FORWARD)}."
        )
    return 1.0 + 2.0 * REMAT_RECOMPUTED_FORWARD[remat] / 6.0


def step_seconds(
    step_flops: float, flops_per_second: float, remat: str, transfer_bytes: float, device: str
) -> dict | None:
    """A train step's seconds at ``flops_per_second`` (a peak x MFU), ``remat``'s recompute and ``transfer_bytes``
    over the host link added: by part, and as ``slowdown``, over the step without either; None where the host
    link's rate is unknown and there are bytes to move."""
    link = host_link_seconds(transfer_bytes, device) if transfer_bytes else 0.0
    if link is None:
        return None
    plain = step_flops / flops_per_second
    compute = plain * remat_step_factor(remat)
    return {
        "compute_seconds": compute,
        "host_link_seconds": link,
        "step_seconds": compute + link,
        "slowdown": (compute + link) / plain,
    }


def device_key(device_kind: str) -> str | None:
    """The table key for a jax ``device_kind`` (e.g. "NVIDIA H100 80GB HBM3"), or None."""
    kind = device_kind.lower()
    for pattern, key in _DEVICE_KIND_PATTERNS:
        if pattern in kind:
            return key
    return None


def compute_precision(dtype: str) -> str:
    """The DEVICE_PEAKS column a step computing in ``dtype`` runs its matmuls at.

    bfloat16 and float16 compute is "bf16"; float32 is "tf32" unless jax's default matmul
    precision asks for full float32 ("highest" or "float32"), which makes it "fp32". A
    precision name ("fp32", "tf32", "bf16") is returned as it is.
    """
    if dtype in PRECISIONS:
        return dtype
    if dtype in ("bfloat16", "float16", "fp16"):
        return "bf16"
    if dtype not in ("float32", "fp32"):
        raise ValueError(f"compute dtype {dtype!r} is not float32, bfloat16 or float16.")
    import jax

    return "fp32" if jax.config.jax_default_matmul_precision in ("highest", "float32") else "tf32"


def device_peak(device, dtype: str = "bf16") -> float | None:
    """Peak FLOP/s of one jax device at the precision a ``dtype`` step computes in (``compute_precision``).

    A CPU has no datasheet figure: its peak is a float32 matmul measured on this host.
    Unknown accelerators give None, so MFU is reported as unknown rather than wrong.
    """
    if device.platform == "cpu":
        return measured_cpu_matmul_peak()
    key = device_key(device.device_kind)
    if key is None:
        return None
    return DEVICE_PEAKS[key][compute_precision(dtype)]


# Square float32 matmuls timed for a CPU's peak: the best of all, since a loaded machine
# only ever makes a matmul slower. One timing of 1024² on 2 shared cores came out 30% under
# the best of these, enough for a training run to log an MFU of 1.16.
_CPU_PEAK_SIZES = (512, 1024, 2048)
_CPU_PEAK_REPEATS = 20


def cache_dir() -> Path:
    """Where per-host measurements are kept: $GPT2JAX_CACHE_DIR, else $XDG_CACHE_HOME/gpt2jax or ~/.cache/gpt2jax."""
    if os.environ.get("GPT2JAX_CACHE_DIR"):
        return Path(os.environ["GPT2JAX_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpt2jax"


def available_cores() -> int:
    """The cores this process may run on (a SLURM or taskset allocation, not the whole machine)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def _cpu_host_key() -> str:
    """This host, its CPU, the cores this process may use, its CPU devices and jax: what a CPU peak depends on."""
    import jax

    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
    except OSError:
        pass
    devices = jax.device_count("cpu")
    return f"{platform.node()} | {model} | {available_cores()} cores | {devices} cpu devices | jax {jax.__version__}"


# A cached peak is timed again when the machine is quieter by this much load per core than
# when it was timed: a peak timed on a busy machine (2 shared cores at load 4 timed 244 of
# their 440 GFLOP/s) would otherwise stand for good and make a train step's MFU read 0.98.
_CPU_PEAK_RETIME_LOAD_DROP = 0.25


def _load_per_core() -> float:
    """The 1-minute load average over the cores this process may use (0 where the OS has none)."""
    return os.getloadavg()[0] / available_cores() if hasattr(os, "getloadavg") else 0.0


@functools.cache
def measured_cpu_matmul_peak() -> float:
    """This host's best float32 matmul throughput on the CPU backend (all cores), in FLOP/s.

    Kept per host in ``cache_dir()/cpu_matmul_peak.json`` with the load per core it was timed
    at: several sizes, each timed ``_CPU_PEAK_REPEATS`` times, the fastest of all, so that it
    bounds what a train step can reach. A later process times it again only when the machine
    is quieter than it was then (by ``_CPU_PEAK_RETIME_LOAD_DROP``), and keeps the higher
    figure; ``mfu`` still refuses a ratio above 1.
    """
    path = cache_dir() / "cpu_matmul_peak.json"
    key = _cpu_host_key()
    try:
        entry = json.loads(path.read_text())[key]
        if isinstance(entry, dict):
            cached_peak, cached_load = float(entry["flops"]), float(entry["load_per_core"])
        else:  # an older file's bare figure, timed at an unknown load
            cached_peak, cached_load = float(entry), math.inf
    except (OSError, ValueError, KeyError, TypeError):
        cached_peak, cached_load = 0.0, math.inf
    load = _load_per_core()
    if cached_peak > 0 and load > cached_load - _CPU_PEAK_RETIME_LOAD_DROP:
        return cached_peak
    # The entry keeps the best figure and the quietest load it has been timed at.
    peak = max(_time_cpu_matmuls(), cached_peak)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fresh = json.loads(path.read_text())
        except (OSError, ValueError):
            fresh = {}
        fresh = fresh if isinstance(fresh, dict) else {}  # a file that is not ours is replaced
        other = fresh.get(key)
        if isinstance(other, dict) and isinstance(other.get("flops"), (int, float)):
            peak = max(peak, float(other["flops"]))  # a concurrent process timed a better one
        fresh[key] = {"flops": peak, "load_per_core": round(load, 3)}
        write_atomically(path, json.dumps(fresh, indent=2) + "\n")  # a concurrent reader sees old or new
    except OSError:
        pass  # an unwritable cache only costs the next run the measurement
    return peak


def _time_cpu_matmuls() -> float:
    import jax
    import jax.numpy as jnp

    cpu = jax.devices("cpu")[0]
    matmul = jax.jit(lambda x: x @ x)
    best = 0.0
    for size in _CPU_PEAK_SIZES:
        a = jax.device_put(jnp.ones((size, size), jnp.float32), cpu)
        matmul(a).block_until_ready()
        for _ in range(_CPU_PEAK_REPEATS):
            start = time.perf_counter()
            matmul(a).block_until_ready()
            best = max(best, 2.0 * size**3 / (time.perf_counter() - start))
    return best


def mesh_peak_flops(devices, dtype: str = "bf16") -> float | None:
    """Summed peak FLOP/s of the devices a step runs on; None if any is unknown.

    CPU devices (including fake ones from --xla_force_host_platform_device_count) share
    one host, so they count once, at the host's measured matmul peak.
    """
    accelerators = [d for d in devices if d.platform != "cpu"]
    if not accelerators:
        return measured_cpu_matmul_peak()
    peaks = [device_peak(d, dtype) for d in accelerators]
    return None if None in peaks else float(sum(peaks))


def mfu(flops_per_second: float, peak_flops: float | None) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak of the devices used.

    None when the peak is unknown, and when the ratio exceeds 1: a peak that a step beats
    is no peak (a CPU's measured on a loaded machine), and no MFU above 100% is printed.
    """
    if not peak_flops:
        return None
    utilisation = flops_per_second / peak_flops
    return utilisation if utilisation <= 1.0 else None


def training_memory_bytes(n_params: int) -> int:
    """Mixed-precision AdamW state: fp32 params, fp32 grads, two fp32 moments (16 B/param).

    Activations come on top and depend on batch, context and remat; see ``sharding``.
    """
    return 16 * n_params
