import gzip
import importlib.util
import json
import os
import subprocess
import sys
import time

import jax
import pytest

from gpt2jax import flops
from gpt2jax.training.benchmark import benchmark, summarise_trace
from tests.helpers import REPO, tiny_config


def test_benchmark_reports_consistent_figures():
    config = tiny_config("unused")
    result = benchmark(config, steps=2)
    tokens_per_step = 8 * 16
    assert result["tokens_per_step"] == tokens_per_step
    assert result["tokens_per_s"] == pytest.approx(tokens_per_step / (result["step_ms"] / 1e3))
    per_token = flops.flops_per_token_palm(flops.Shape(2, 4, 32, 50257, 16))
    assert result["model_flops_per_s"] == pytest.approx(per_token * result["tokens_per_s"])
    # MFU under both conventions, or unknown (None) where the measured peak would put it over 1.
    causal = flops.flops_per_token_palm(flops.Shape(2, 4, 32, 50257, 16), causal=True)
    for key, count in (("mfu", per_token), ("mfu_causal", causal)):
        utilisation = count * result["tokens_per_s"] / result["peak_flops_per_s"]
        assert result[key] == (pytest.approx(utilisation) if utilisation <= 1 else None)
    assert result["attention"] == "xla" and result["scan_layers"] is True and result["grad_accum_steps"] == 1
    assert result["n_devices"] == 8 and result["mesh"]["fsdp"] == 8
    assert result["compile_s"] > 0 and result["peak_memory_bytes"] > 0
    assert 0 < result["final_loss"] < 11.5


def test_bench_cli_prints_json_and_writes_a_profile(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpt2jax.cli.bench",
            "--config",
            "configs/tiny.py",
            "--steps",
            "1",
            "--json",
            "--config.model.n_embd=32",
            "--config.model.block_size=16",
            "--config.train.batch_size=8",
            f"--profile_dir={tmp_path / 'profile'}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"tokens_per_s", "step_ms", "compile_s", "mfu", "mfu_causal", "peak_memory_bytes"} <= report.keys()
    assert list((tmp_path / "profile").rglob("*.xplane.pb")), "no jax.profiler trace was written"


def test_mfu_above_one_is_never_reported():
    step = {"tokens_per_step": 1000, "flops_per_step": 2e12, "flops_per_step_causal": 1.9e12}
    speed = flops.throughput(step, steps=1, seconds=1.0, peak_flops=1.95e12)
    assert speed["mfu"] is None and speed["mfu_causal"] == pytest.approx(1.9 / 1.95)


def test_cpu_peak_is_measured_once_per_host_and_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2JAX_CACHE_DIR", str(tmp_path))
    cache = tmp_path / "cpu_matmul_peak.json"
    flops.measured_cpu_matmul_peak.cache_clear()
    measured = flops.measured_cpu_matmul_peak()
    cached = json.loads(cache.read_text())
    [key] = cached
    assert cached[key]["flops"] == measured and measured > 1e9
    # The next process reads it instead of measuring: a planted figure comes back as is.
    cache.write_text(json.dumps({key: {"flops": 123e9, "load_per_core": 0.0}}))
    flops.measured_cpu_matmul_peak.cache_clear()
    assert flops.measured_cpu_matmul_peak() == 123e9
    flops.measured_cpu_matmul_peak.cache_clear()


def test_a_cpu_peak_timed_on_a_busier_machine_is_timed_again(tmp_path, monkeypatch):
    # What a shared 2-core machine did: timed at load 4, the peak came out at 55% of the
    # idle figure, and a train step's MFU read 0.98 against it.
    monkeypatch.setenv("GPT2JAX_CACHE_DIR", str(tmp_path))
    cache = tmp_path / "cpu_matmul_peak.json"
    flops.measured_cpu_matmul_peak.cache_clear()
    key = flops._cpu_host_key()
    monkeypatch.setattr(flops, "_load_per_core", lambda: 0.25)
    cache.write_text(json.dumps({key: {"flops": 1.0, "load_per_core": 2.0}}))
    retimed = flops.measured_cpu_matmul_peak()
    assert retimed > 1e9
    assert json.loads(cache.read_text())[key] == {"flops": retimed, "load_per_core": 0.25}
    # A figure from an older file (a bare number, no load) is timed again too, and kept if higher.
    flops.measured_cpu_matmul_peak.cache_clear()
    cache.write_text(json.dumps({key: 1e15}))
    assert flops.measured_cpu_matmul_peak() == 1e15
    assert json.loads(cache.read_text())[key]["flops"] == 1e15
    flops.measured_cpu_matmul_peak.cache_clear()


# bench/gpu.py: the one-process GPU harness, run on the CPU at its tiny shape.


def _harness_module():
    spec = importlib.util.spec_from_file_location("gpu_harness", REPO / "bench" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _one_cpu_device_env(**extra) -> dict:
    """The harness as a GPU runs it: one device (the tests' 8 fake CPU devices are dropped), this checkout first."""
    env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
    return {**env, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", **extra}


@pytest.fixture(scope="module")
def harness_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_bench")
    command = [sys.executable, "bench/gpu.py", "--tiny", "--out", str(out), "--compile_cache", str(out / "cache")]
    start = time.monotonic()
    result = subprocess.run(command, cwd=REPO, env=_one_cpu_device_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(text) for text in result.stdout.splitlines()]
    return out, lines, time.monotonic() - start


def test_the_gpu_harness_prints_its_versions_first_then_every_variant_in_order(harness_run):
    out, lines, _ = harness_run
    harness = _harness_module()
    versions = lines[0]
    assert versions["run"] == "versions" and versions["elapsed_s"] < 60
    assert versions["attention_probe"] == "xla"  # a CPU: cuDNN's probe is not run
    assert versions["versions"]["jax"] == jax.__version__ and versions["versions"]["platform"] == "cpu"
    assert versions["versions"]["cudnn"] is None and versions["versions"]["nvidia_driver"] is None
    # The children keep this process's clock: the lines' elapsed times never go back.
    assert [line["elapsed_s"] for line in lines] == sorted(line["elapsed_s"] for line in lines)
    runs = [line["run"] for line in lines]
    expected = []
    for section in harness.DEFAULT_SECTIONS:
        expected += [variant.name for variant in harness.VARIANTS.get(section, [])] or [section]
    assert runs == ["versions", *expected]
    for line in lines:
        assert "error" not in line, line
        assert line["versions"] == versions["versions"]  # every line says what it ran on
    variants = [line for line in lines if line["section"] in harness.VARIANTS]
    for line in variants:
        assert line["tokens_per_s"] > 0 and line["compile_s"] >= 0 and line["xla_total"] > 0
        assert all(line[key] is None or 0 < line[key] <= 1 for key in ("mfu", "mfu_causal"))
    by_run = {line["run"]: line for line in lines}
    # The default remat and loss head are the unrolled micro-batch of 16 itself: measured once.
    for same in ("small-b16-unrolled-remat-none", "small-b16-unrolled-loss_chunk-auto"):
        assert by_run[same]["same_as"] == "small-b16-unrolled"
        assert by_run[same]["step_ms"] == by_run["small-b16-unrolled"]["step_ms"]
    assert by_run["small-b16-unrolled-remat-dots"]["remat"] == "dots"
    assert by_run["small-b16-unrolled-loss_chunk-0"]["loss_chunk"] == 0
    assert by_run["small-b16-unrolled-loss_chunk-128"]["loss_chunk"] == 128
    assert [by_run[f"small-b16-{layout}"]["scan_layers"] for layout in ("scanned", "unrolled")] == [True, False]
    assert by_run["small"]["grad_accum_steps"] == 2 and by_run["small-b32-scanned"]["micro_batch_size"] == 4
    # What jax reads once per process ran in a process of its own: its lines say what differed.
    assert by_run["small-b16-unrolled-xla_ab"]["environment"] == {"GPT2JAX_GPU_XLA_DEFAULTS": "0"}
    assert by_run["small_12gib-in-12gib"]["environment"] == {}  # a CPU has no card to take a share of
    assert [json.loads(text) for text in (out / "bench.jsonl").read_text().splitlines()] == lines


def test_the_gpu_harness_summarises_its_profile_trains_and_skips_a_missing_torch(harness_run):
    out, lines, _ = harness_run
    by_run = {line["run"]: line for line in lines}
    profile = by_run["profile"]
    assert profile["variant"] == "small" and 0 < len(profile["top"]) <= 15
    assert set(profile["totals_ms_per_step"]) == {"matmul", "attention", "fusion", "copy", "other"}
    assert sum(profile["totals_ms_per_step"].values()) == pytest.approx(profile["kernel_ms_per_step"])
    assert profile["totals_ms_per_step"]["matmul"] > 0
    assert profile["kernel_lines"] and all(line.startswith("/host:CPU / tf_XLA") for line in profile["kernel_lines"])
    with gzip.open(out / "trace.json.gz", "rt") as trace:
        assert json.load(trace)["traceEvents"]
    train = by_run["train"]
    assert train["step"] == 4 and train["checkpoint"] == 4 and train["tokens_per_s"] > 0
    assert 0 < train["val_loss"] < 11.5
    assert len((out / "train_metrics.jsonl").read_text().splitlines()) == 1
    if importlib.util.find_spec("torch") is None:
        assert by_run["torch"]["skipped"] == "torch is not installed"
    else:
        assert by_run["torch"]["tokens_per_s"] > 0 and "mfu_causal" in by_run["torch"]
    kept = [path for path in out.iterdir() if path.is_file()]
    assert len(kept) <= 8, kept  # what the GPU tool brings back


def test_an_import_the_harness_lacks_stops_it_within_10_seconds(tmp_path):
    planted = tmp_path / "ml_collections"
    planted.mkdir()
    (planted / "__init__.py").write_text("raise ImportError(\"No module named 'ml_collections' (planted)\")\n")
    env = _one_cpu_device_env(PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}")
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "bench/gpu.py", "--out", str(tmp_path / "out")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.monotonic() - start < 10
    assert result.returncode == 1
    assert json.loads(result.stdout) == {
        "run": "versions",
        "error": "an import failed: No module named 'ml_collections' (planted)",
    }
    assert result.stderr.strip().splitlines()[-1].startswith("error: an import failed")


def _write_trace(directory, events):
    path = directory / "plugins" / "profile" / "run" / "host.trace.json.gz"
    path.parent.mkdir(parents=True)
    with gzip.open(path, "wt") as file:
        json.dump({"traceEvents": events}, file)


def test_a_gpu_trace_is_summarised_from_its_stream_lines_each_kernel_by_its_own_time(tmp_path):
    meta = lambda pid, tid, kind, name: {"ph": "M", "pid": pid, "tid": tid, "name": kind, "args": {"name": name}}
    kernel = lambda tid, ts, dur, name: {"ph": "X", "pid": 2, "tid": tid, "ts": ts, "dur": dur, "name": name}
    events = [
        meta(1, 0, "process_name", "/host:CPU"),
        meta(2, 0, "process_name", "/device:GPU:0"),
        meta(2, 7, "thread_name", "Stream #7(Compute)"),
        meta(2, 9, "thread_name", "XLA Ops"),  # derived from the streams: counted there, not twice
        {"ph": "X", "pid": 1, "tid": 3, "ts": 0, "dur": 5000, "name": "PjitFunction(train_step)"},
    ]
    # Two steps: a cuBLAS matmul, cuDNN's attention, a fusion and a copy, each step.
    for step in range(2):
        at = 1000 * step
        events += [
            kernel(7, at, 400, "sm90_xmma_gemm_bf16bf16_bf16f32"),
            kernel(7, at + 400, 300, "cudnn_generated_fort_native_sdpa_sm90"),
            kernel(7, at + 700, 100, "loop_multiply_fusion"),
            kernel(7, at + 800, 50, "Memcpy DtoD"),
            kernel(9, at, 800, "fusion.12"),
        ]
    _write_trace(tmp_path, events)
    summary = summarise_trace(tmp_path, steps=2)
    assert summary["totals_ms_per_step"] == pytest.approx(
        {"attention": 0.3, "matmul": 0.4, "copy": 0.05, "fusion": 0.1, "other": 0.0}
    )
    assert summary["kernel_ms_per_step"] == pytest.approx(0.85)
    assert summary["span_ms_per_step"] == pytest.approx(1.85 / 2)
    assert [entry["name"] for entry in summary["top"]][:2] == [
        "sm90_xmma_gemm_bf16bf16_bf16f32",
        "cudnn_generated_fort_native_sdpa_sm90",
    ]
    assert summary["top"][0]["calls_per_step"] == 1 and summary["top"][0]["share"] == pytest.approx(0.4 / 0.85)


def test_a_cpu_trace_counts_the_xla_threads_ops_without_the_ops_nested_in_them(tmp_path):
    events = [
        {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/host:CPU"}},
        {"ph": "M", "pid": 1, "tid": 4, "name": "thread_name", "args": {"name": "tf_XLAEigen/123"}},
        {"ph": "M", "pid": 1, "tid": 5, "name": "thread_name", "args": {"name": "python"}},
        {"ph": "X", "pid": 1, "tid": 4, "ts": 0, "dur": 1000, "name": "ThunkExecutor::Execute"},  # bookkeeping
        {"ph": "X", "pid": 1, "tid": 4, "ts": 0, "dur": 900, "name": "while.51"},
        {"ph": "X", "pid": 1, "tid": 4, "ts": 100, "dur": 500, "name": "dot.3"},
        {"ph": "X", "pid": 1, "tid": 4, "ts": 600, "dur": 200, "name": "copy_bitcast_fusion.7"},
        {"ph": "X", "pid": 1, "tid": 5, "ts": 0, "dur": 5000, "name": "block_until_ready"},
    ]
    _write_trace(tmp_path, events)
    summary = summarise_trace(tmp_path, steps=1)
    own = {entry["name"]: entry["ms_per_step"] for entry in summary["top"]}
    assert own == pytest.approx({"dot.3": 0.5, "copy_bitcast_fusion.7": 0.2, "while.51": 0.2})
    assert summary["totals_ms_per_step"]["matmul"] == pytest.approx(0.5)


def test_the_gpu_harness_offload_section_runs_each_layout_with_its_estimates(tmp_path):
    """Issue 34's GPU check at the tiny shape, in its own process as on a GPU: every layout trains, in the order of
    its device estimate, and says the dry run's device and host figures beside what the device reports."""
    out = tmp_path / "out"
    out.mkdir()
    command = [sys.executable, "bench/gpu.py", "--tiny", "--sections", "offload", "--out", str(out)]
    command += ["--compile_cache", str(tmp_path / "cache")]
    result = subprocess.run(command, cwd=REPO, env=_one_cpu_device_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(text) for text in result.stdout.splitlines()][1:]
    harness = _harness_module()
    assert [line["run"] for line in lines] == [variant.name for variant in harness.VARIANTS["offload"]]
    assert [line["offload"] for line in lines] == ["all", "master", "optimizer", "none", "master", "all"]
    for line in lines:
        assert "error" not in line, line
        assert line["estimate_bytes"] > 0 and line["host_estimate_bytes"] > 0 and line["final_loss"] > 0
        assert line["peak_bytes_in_use"] is None  # a CPU reports no device memory; a GPU's figure is the check


def test_the_offload_sections_variants_run_in_the_order_of_their_estimates_at_gpt2s_sizes():
    """A process's peak counts every step before it, so each variant's peak is its own only in this order: medium
    all 3.3 GiB, master 4.6, optimizer 5.5, none 7.7, large_12gib 7.7, xl_12gib 8.6 (one device, the estimate)."""
    from gpt2jax.config import load_config_file
    from gpt2jax.training import memory
    from gpt2jax.training.trainer import build_trainer

    estimates = []
    for variant in _harness_module().VARIANTS["offload"]:
        config = load_config_file(variant.config)
        for key, value in variant.overrides.items():
            section, _, name = key.partition(".")
            config[section][name] = value
        estimates.append(memory.estimate(build_trainer(config, devices=jax.devices()[:1]))["total"])
    assert estimates == sorted(estimates) and estimates[-1] <= 0.75 * 12 * 2**30
