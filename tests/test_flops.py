import types

import pytest

from gpt2jax import flops, model

# Chinchilla (Hoffmann et al. 2022) Table A4: (num_layers, d_model, num_heads, label, FLOP ratio ours/6ND),
# every model with ffw_size 4 d_model, at context 2048 and vocabulary 32000.
CHINCHILLA_TABLE_A4 = (
    (10, 640, 10, 73e6, 1.03),
    (20, 1024, 16, 305e6, 1.10),
    (24, 1280, 10, 552e6, 1.08),
    (26, 1792, 14, 1.1e9, 1.04),
    (28, 2048, 16, 1.6e9, 1.03),
    (40, 3584, 28, 6.8e9, 0.99),
)


def gpt2_shape(name: str) -> flops.Shape:
    """A GPT-2 preset at OpenAI's vocabulary (50257) and context (1024)."""
    return flops.Shape(**model.PRESETS[name], vocab_size=50257, block_size=1024)


def chinchilla_param_count(shape: flops.Shape) -> int:
    """Table A4's N: GPT-2-like blocks, relative-position weights (d² + 2d a layer) and one vocabulary matrix."""
    counts = flops.count_params(shape)
    relative_position = shape.n_layer * (shape.n_embd**2 + 2 * shape.n_embd)
    return counts["n_params_non_embedding"] + relative_position + counts["token_embedding"]


@pytest.mark.parametrize(
    "name, expected",
    [
        ("gpt2", 124_439_808),
        ("gpt2-medium", 354_823_168),
        ("gpt2-large", 774_030_080),
        ("gpt2-xl", 1_557_611_200),
    ],
)
def test_gpt2_parameter_counts(name, expected):
    assert flops.count_params(gpt2_shape(name))["n_params"] == expected


def test_gpt2_small_palm_flops_per_token():
    assert flops.flops_per_token_palm(gpt2_shape("gpt2"), 1024) == pytest.approx(854e6, rel=0.01)


@pytest.mark.parametrize("n_layer, n_embd, n_head, label, ratio", CHINCHILLA_TABLE_A4)
def test_chinchilla_table_a4(n_layer, n_embd, n_head, label, ratio):
    shape = flops.Shape(n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=32000, block_size=2048)
    n_params = chinchilla_param_count(shape)
    assert n_params == pytest.approx(label, rel=0.04)
    seq = shape.block_size
    table_ratio = flops.flops_per_token_chinchilla_layers(shape) * seq / (6 * n_params * seq)
    assert table_ratio == pytest.approx(ratio, abs=0.005)


def test_chinchilla_full_count_adds_embedding_and_logits():
    shape = gpt2_shape("gpt2")
    per_token_extra = 3 * (2 * shape.vocab_size * shape.n_embd + 2 * shape.n_embd * shape.vocab_size)
    difference = flops.flops_per_token_chinchilla(shape) - flops.flops_per_token_chinchilla_layers(shape)
    assert difference == pytest.approx(per_token_extra)


def test_device_table_has_every_required_key():
    required = {"h100-sxm", "h100-pcie", "h200", "a100", "rtx-4090", "rtx-4070-ti", "v100", "tpu-v4", "tpu-v5e"}
    assert required <= flops.DEVICE_PEAKS.keys()
    for key in required:
        assert {*flops.PRECISIONS, "memory_gib"} <= flops.DEVICE_PEAKS[key].keys()
        peaks = flops.DEVICE_PEAKS[key]
        assert peaks["fp32"] <= peaks["tf32"] <= peaks["bf16"]


# Dense peaks (TFLOP/s) from the datasheets and whitepapers, with the arithmetic of the flops.py comments:
# sparse datasheet figures halved; the RTX 4070 Ti's 641 sparse FP8 TOPS -> 320 dense FP8 -> 160 FP16
# with FP16 accumulate -> 80 with FP32 accumulate, the 4090's ratio (165.2 of 330.3).
PINNED_PEAKS = {
    "rtx-4070-ti": {"fp32": 40.1, "tf32": 40.1, "bf16": 80.2},
    "rtx-4090": {"fp32": 82.6, "tf32": 82.6, "bf16": 165.2},
    "a100": {"fp32": 19.5, "tf32": 156, "bf16": 312},
    "h100-sxm": {"fp32": 67, "tf32": 989 / 2, "bf16": 1979 / 2},
    "h200": {"fp32": 67, "tf32": 989 / 2, "bf16": 1979 / 2},
}


@pytest.mark.parametrize("key", sorted(PINNED_PEAKS))
def test_device_peaks_are_the_dense_datasheet_figures(key):
    for precision, tflops in PINNED_PEAKS[key].items():
        assert flops.DEVICE_PEAKS[key][precision] == pytest.approx(tflops * 1e12, rel=2e-3), precision
    assert flops.DEVICE_PEAKS["rtx-4070-ti"]["bf16"] == pytest.approx(641e12 / 2 / 2 / 2, rel=2e-3)


def test_mfu_uses_the_precision_the_step_computes_in():
    import jax

    h100 = types.SimpleNamespace(platform="gpu", device_kind="NVIDIA H100 80GB HBM3")
    assert flops.compute_precision("bfloat16") == flops.compute_precision("float16") == "bf16"
    assert flops.device_peak(h100, "bfloat16") == flops.DEVICE_PEAKS["h100-sxm"]["bf16"]
    # float32 matmuls run on TF32 tensor cores unless jax is told to keep full float32.
    assert flops.device_peak(h100, "float32") == flops.DEVICE_PEAKS["h100-sxm"]["tf32"]
    with jax.default_matmul_precision("highest"):
        assert flops.compute_precision("float32") == "fp32"
        assert flops.mesh_peak_flops([h100] * 2, "float32") == 2 * flops.DEVICE_PEAKS["h100-sxm"]["fp32"]
    with pytest.raises(ValueError, match="compute dtype 'int8' is not float32, bfloat16 or float16"):
        flops.compute_precision("int8")


@pytest.mark.parametrize(
    "device_kind, key",
    [
        ("NVIDIA H100 80GB HBM3", "h100-sxm"),
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA GeForce RTX 4070 Ti", "rtx-4070-ti"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("TPU v5 lite", "tpu-v5e"),
        ("Some Future Accelerator", None),
    ],
)
def test_device_key(device_kind, key):
    assert flops.device_key(device_kind) == key


def test_mfu_arithmetic():
    eight_h100 = [types.SimpleNamespace(platform="gpu", device_kind="NVIDIA H100 80GB HBM3")] * 8
    peak = flops.mesh_peak_flops(eight_h100)
    assert peak == pytest.approx(8 * flops.DEVICE_PEAKS["h100-sxm"]["bf16"])
    assert flops.mfu(0.4 * peak, peak) == pytest.approx(0.4)
    assert flops.mfu(100e12, 200e12) == pytest.approx(0.5)
    unknown = [types.SimpleNamespace(platform="gpu", device_kind="Some Future Accelerator")]
    assert flops.mfu(100e12, flops.mesh_peak_flops(unknown)) is None


def test_training_memory_is_sixteen_bytes_per_parameter():
    assert flops.training_memory_bytes(124_439_808) == 16 * 124_439_808


def test_causal_count_halves_the_attention_term():
    # GPT-2 small at T=1024, worked out by hand: 6 x (124,439,808 - 1024 x 768 position
    # embedding) + 6 x 12 layers x 768 x 1024 = 798,543,360 (PaLM's full count: 855,166,464).
    shape = flops.Shape(12, 12, 768, 50257, 1024)
    assert flops.flops_per_token_palm(shape, causal=True) == 6 * (124_439_808 - 1024 * 768) + 6 * 12 * 768 * 1024
    assert flops.flops_per_token_palm(shape, causal=True) == 798_543_360


def test_offload_traffic_is_costed_at_the_stated_pcie_rate_and_remat_at_its_recompute():
    # PCIe 4.0 x16: 16 GT/s x 16 lanes x 128/130 / 8 = 31.5 GB/s a direction, x 0.8 assumed reachable.
    assert flops.DEVICE_PEAKS["rtx-4070-ti"]["host_link"] == pytest.approx(16e9 * 16 * 128 / 130 / 8 * 0.8, rel=1e-3)
    assert flops.DEVICE_PEAKS["h100-pcie"]["host_link"] == pytest.approx(2 * flops.DEVICE_PEAKS["a100"]["host_link"])
    assert flops.host_link_seconds(25.2e9, "rtx-4070-ti") == pytest.approx(1.0)
    assert flops.host_link_seconds(1e9, "tpu-v4") is None  # no link stated: not costed
    # One step of 6N x 0.5M tokens for 1.56B parameters at 40% of 80.2 TFLOP/s: 152.9 s; full remat adds a
    # forward pass (2N of 6N), and 25 GB over the link adds 0.99 s.
    plain = 6 * 1.56e9 * 524288 / (0.4 * 80.2e12)
    seconds = flops.step_seconds(6 * 1.56e9 * 524288, 0.4 * 80.2e12, "full", 25e9, "rtx-4070-ti")
    assert seconds["compute_seconds"] == pytest.approx(plain * 4 / 3)
    assert seconds["host_link_seconds"] == pytest.approx(25e9 / 25.2e9)
    assert seconds["slowdown"] == pytest.approx((plain * 4 / 3 + 25e9 / 25.2e9) / plain)
    assert flops.step_seconds(1e15, 1e13, "dots", 0, "tpu-v4")["slowdown"] == 1.0
    assert flops.step_seconds(1e15, 1e13, "dots", 1e9, "tpu-v4") is None
