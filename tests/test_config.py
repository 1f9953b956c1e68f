"""Settings checked before a run starts: every numeric key of the run config and of a sweep config has
a range (a new key without one fails here), a value outside it is refused in one sentence before the
data or the workdir is touched, a config file that does not load is named with its line, a workdir of
another run is named before any corpus is fetched, and a step the memory cannot hold is refused."""

import math
import os
import re
import subprocess
import sys

import pytest

from gpt2jax import ranges
from gpt2jax.config import base_config, warmup_warning
from gpt2jax.files import workdir as workdir_files
from gpt2jax.scaling import plan
from gpt2jax.training import loop, memory
from gpt2jax.training.trainer import build_trainer
from tests.helpers import REPO, compact_config, tiny_config, tiny_sweep_config

SECTIONS = ("model", "data", "train", "mesh")
SWEEP_CONFIGS = ("cpu_english.py", "cpu_topics.py", "gpu_english.py", "gpu_sweep.py")


def _numeric(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def _numbers(value) -> bool:
    """A number, or a non-empty list of them (a sweep's budgets, seeds, multipliers)."""
    if isinstance(value, (list, tuple)):
        return bool(value) and all(_numeric(item) for item in value)
    return _numeric(value)


# Every key has a range.


def test_every_numeric_key_of_the_run_config_has_a_range_and_every_range_a_key():
    config = base_config()
    assert set(config) == set(SECTIONS), "a new section of the run config: check it in config.check_run_config"
    numeric = {f"{section}.{key}" for section in SECTIONS for key, value in config[section].items() if _numeric(value)}
    assert not numeric - set(ranges.RUN_CONFIG_RANGES), "numeric keys without a range in ranges.RUN_CONFIG_RANGES"
    assert not set(ranges.RUN_CONFIG_RANGES) - numeric, "ranges of keys the run config does not have"
    for key, bounds in ranges.RUN_CONFIG_RANGES.items():
        section, name = key.split(".")
        assert bounds.holds(config[section][name]), f"the default {key}={config[section][name]!r} is out of its range"


@pytest.mark.parametrize("name", SWEEP_CONFIGS)
def test_every_numeric_key_of_a_sweep_config_has_a_range(name, tmp_path):
    config = plan.load_sweep_config(str(REPO / "experiments" / name))
    checked = [config, plan.checked_sweep_config(tiny_sweep_config(tmp_path))]
    missing = set()
    for sweep in checked:
        for key, value in sweep.items():
            if key in ("rules", "limits"):
                missing |= {f"{key}.{k}" for k, v in value.items() if _numbers(v)} - set(plan.SWEEP_RANGES)
            elif key in ("shapes", "allocations"):
                for item in value:
                    named = {f"model.{k}" for k in item} & set(ranges.RUN_CONFIG_RANGES)
                    own = {f"{key}.{k}" for k, v in item.items() if _numbers(v) and f"model.{k}" not in named}
                    missing |= own - set(plan.SWEEP_RANGES)
            elif key != "base" and _numbers(value):  # the base is a run config: the test above
                missing |= {key} - set(plan.SWEEP_RANGES)
    assert not missing, f"sweep keys without a range in plan.SWEEP_RANGES: {sorted(missing)}"
    # Every rule and limit is a number, set or not in these configs; every range names a key a sweep has.
    assert {f"rules.{key}" for key in plan.RULE_KEYS} | {f"limits.{key}" for key in plan.LIMIT_KEYS} <= set(
        plan.SWEEP_RANGES
    )
    sweep_keys = (
        set(plan.SWEEP_KEYS) | {f"rules.{k}" for k in plan.RULE_KEYS} | {f"limits.{k}" for k in plan.LIMIT_KEYS}
    )
    assert set(plan.SWEEP_RANGES) - sweep_keys == {"allocations.budget"}


def test_a_range_holds_its_bounds_and_refuses_nan_infinity_booleans_and_text():
    assert ranges.DECAY.holds(0.0) and ranges.DECAY.holds(0.999) and not ranges.DECAY.holds(1.0)
    assert ranges.FRACTION.holds(1.0) and not ranges.FRACTION.holds(1.5)
    for value in (math.nan, math.inf, -math.inf, -1e-12, True, "1e-3", None):
        assert not ranges.NON_NEGATIVE.holds(value), value
    assert ranges.MESH_AXIS.holds(-1) and ranges.MESH_AXIS.holds(8)
    assert not any(ranges.MESH_AXIS.holds(value) for value in (0, -2, 2.0))
    assert ranges.LIMIT.holds(math.inf) and not ranges.LIMIT.holds(0.0) and not ranges.LIMIT.holds(math.nan)
    assert ranges.DECAY.describe() == "a number in [0, 1)"
    assert ranges.POSITIVE.describe() == "a finite number above 0"
    assert ranges.COUNT.describe() == "a whole number of at least 1"
    assert ranges.MESH_AXIS.describe() == "a whole number of at least 1, or -1"


# Out of range: refused before anything is written.


def _outside(bounds: ranges.Range) -> list:
    """Values just outside ``bounds``, and NaN and infinity for a key that takes fractions."""
    candidates = []
    if math.isfinite(bounds.low):
        candidates.append(bounds.low if bounds.low_open else bounds.low - 1)
    if math.isfinite(bounds.high):
        candidates.append(bounds.high if bounds.high_open else bounds.high + 1)
    if not bounds.whole:
        candidates += [math.nan, math.inf]
    values = [value for value in candidates if not bounds.holds(value)]
    assert values, bounds
    return values


@pytest.mark.parametrize("key", sorted(ranges.RUN_CONFIG_RANGES))
def test_a_value_outside_its_range_is_refused_naming_it_before_anything_is_written(tmp_path, key):
    section, name = key.split(".")
    for value in _outside(ranges.RUN_CONFIG_RANGES[key]):
        config = tiny_config(tmp_path / "data")
        config[section][name] = value
        with pytest.raises(ValueError, match=re.escape(f"{key}={value!r} must be ")):
            loop.run(config, tmp_path / "w")
    assert not (tmp_path / "w").exists() and not (tmp_path / "data").exists()


def test_a_sweep_config_gets_the_same_checks_for_its_values(tmp_path):
    config = tiny_sweep_config(tmp_path)
    config.budgets = [4096.0, math.nan]
    config.rules.warmup_fraction = 1.5
    config.shapes[1]["n_head"] = 0
    config.limits.max_epochs = math.inf  # no limit
    with pytest.raises(
        ValueError,
        match=re.escape(
            "budgets[1]=nan must be a finite number above 0; rules.warmup_fraction=1.5 must be a number in [0, 1]; "
            "shapes[1].n_head=0 must be a whole number of at least 1."
        ),
    ):
        plan.expand(config)
    config = tiny_sweep_config(tmp_path)
    config.rules.min_batch_size = 16
    with pytest.raises(ValueError, match=re.escape("rules.min_batch_size=16 must be at most rules.max_batch_size=8")):
        plan.expand(config)
    config = tiny_sweep_config(tmp_path)
    config.base.train.beta2 = 1.5
    with pytest.raises(ValueError, match=re.escape("base.train.beta2=1.5 must be a number in [0, 1).")):
        plan.expand(config)


def _popen(args, cwd, env=None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", **(env or {}))
    env.pop("GPT2JAX_TRACEBACK", None)
    return subprocess.Popen(
        [sys.executable, *args], cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _one_sentence(process: subprocess.Popen, code: int = 1) -> str:
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == code, stderr[-2000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and not stdout.strip(), stderr[-2000:]
    return lines[0]


def test_bad_settings_and_config_files_are_one_sentence_from_the_command_line_and_write_nothing(tmp_path):
    """The trials, as real processes (refused before anything compiles, so run side by side): optimizer
    settings that cannot be right, a syntax error, a directory, a file without get_config, a sweep's bad
    value, and bench's --steps 0 (which compiled the step, then divided by zero)."""
    (tmp_path / "bad.py").write_text("def get_config(:\n    pass\n")
    (tmp_path / "noget.py").write_text("CONFIG = None\n")
    (tmp_path / "configs").mkdir()
    (tmp_path / "sweep.py").write_text(
        "from tests.helpers import tiny_sweep_config\n\n\ndef get_config():\n"
        "    config = tiny_sweep_config('data')\n    config.rules.learning_rate = -1.0\n    return config\n"
    )
    workdir, data = tmp_path / "w", tmp_path / "data"

    def train(config: str, *overrides: str) -> list[str]:
        return [
            "-m",
            "gpt2jax.main",
            "--workdir",
            str(workdir),
            "--config",
            config,
            f"--config.data.dir={data}",
            *overrides,
        ]

    bad_values = [
        "--config.train.batch_size=0",
        "--config.train.learning_rate=nan",
        "--config.train.beta2=1.5",
        "--config.train.weight_decay=-1",
        "--config.train.min_lr_ratio=5",
        "--config.model.n_layer=0",
    ]
    runs = {
        "values": _popen(train("tiny", *bad_values), tmp_path),
        "syntax": _popen(train("bad.py"), tmp_path),
        "directory": _popen(train("configs"), tmp_path),
        "no get_config": _popen(train("noget.py"), tmp_path),
        "sweep": _popen(["-m", "gpt2jax.scaling", "sweep", "--config", "sweep.py", "--plan"], tmp_path),
        "bench steps": _popen(["-m", "gpt2jax.cli.bench", "--steps", "0"], tmp_path),  # a division by zero, once
    }
    assert _one_sentence(runs["values"]) == (
        "error: model.n_layer=0 must be a whole number of at least 1; train.batch_size=0 must be a whole number "
        "of at least 1; train.beta2=1.5 must be a number in [0, 1); train.learning_rate=nan must be a finite "
        "number of at least 0; train.min_lr_ratio=5.0 must be a number in [0, 1]; train.weight_decay=-1.0 must be "
        "a finite number of at least 0."
    )
    assert _one_sentence(runs["syntax"]) == (
        f"error: config file {tmp_path / 'bad.py'} line 1: invalid syntax; fix the file, or give another config."
    )
    assert _one_sentence(runs["directory"], code=2).startswith("error: config configs is a directory; give a config")
    assert _one_sentence(runs["no get_config"]).startswith("error: config file noget.py defines no get_config();")
    assert _one_sentence(runs["sweep"]) == "error: rules.learning_rate=-1.0 must be a finite number above 0."
    assert _one_sentence(runs["bench steps"], code=2) == (
        "error: flag --steps=0: 0 is not a positive integer; pass --help for the flags."
    )
    assert not workdir.exists() and not data.exists() and not (tmp_path / "data").exists()


# The workdir: what it refuses, read before the data.


def test_a_workdir_where_nothing_trained_takes_a_new_config_and_one_trained_names_another_model_first(tmp_path):
    """A run refused after writing config.json (batch_size=0 once was) left a workdir that refused the
    corrected command; a workdir of another model was found out only after the network was tried."""
    workdir, data = tmp_path / "w", tmp_path / "data"
    workdir.mkdir()
    stale = compact_config(data, steps=2, batch_size=8)
    stale.train.batch_size = 0
    (workdir / workdir_files.CONFIG_FILE).write_text(stale.to_json_best_effort())
    config = compact_config(data, steps=2, warmup_steps=5)
    with pytest.warns(
        UserWarning, match=r"train.warmup_steps=5 is more than train.steps=2, so the learning rate never"
    ):
        assert loop.run(config, workdir)["step"] == 2
    (change,) = workdir_files.read_jsonl(workdir / workdir_files.CONFIG_CHANGES_FILE)
    assert change["step"] == 0 and change["changes"]["train.batch_size"] == [0, 8]
    # Trained now: the GPT-2 small recipe (a Hub corpus) is refused by the workdir, without the network.
    elsewhere = tmp_path / "elsewhere"
    process = _popen(
        ["-m", "gpt2jax.main", "--config", "small", "--workdir", str(workdir), f"--config.data.dir={elsewhere}"],
        tmp_path,
    )
    message = _one_sentence(process)
    assert message.startswith(f"error: {workdir} holds a run trained with another config (data.source"), message
    assert "model.n_layer 1 -> 12" in message and "Hub" not in message
    assert not elsewhere.exists()


def test_the_warmup_warning_says_the_highest_rate_reached():
    config = base_config()
    config.train.update(steps=3, warmup_steps=1000, learning_rate=1e-3)
    assert warmup_warning(config.train) == (
        "train.warmup_steps=1000 is more than train.steps=3, so the learning rate never passes 2e-06 (0.2% of "
        "train.learning_rate=0.001); lower train.warmup_steps or raise train.steps if this run is meant to learn."
    )
    config.train.update(steps=1000)
    assert warmup_warning(config.train) is None


def test_the_divergence_advice_names_only_a_rate_that_trains():
    """A NaN rate stopped at step 2 advising --config.train.learning_rate=nan (now refused up front as well)."""
    for rate in (math.nan, math.inf, 5e-324):
        message = str(loop._stop("the loss became nan", 3, None, None, rate))
        assert "learning_rate=" not in message and "run again with a lower, finite rate --config" in message, message
    message = str(loop._stop("the loss became nan", 3, None, None, 1e-3))
    assert "with a lower rate, e.g. --config.train.learning_rate=0.0001 --config.train.allow_config_change" in message


# Memory: the estimate against what the host or the device has.


def test_a_step_past_the_memory_available_is_refused_in_one_sentence():
    gib = memory.GIB
    memory.refuse_unfit(2 * gib, 2 * gib, "the train step")
    with pytest.raises(
        ValueError,
        match=r"^the train step need about 3.0 GiB by the dry run's estimate, more than the 2.0 GiB available; ",
    ):
        memory.refuse_unfit(3 * gib, 2 * gib, "the train step")


def test_on_a_cpu_the_host_holds_every_devices_step_and_a_checkpoints_copy_of_the_state(tmp_path):
    trainer = build_trainer(tiny_config(tmp_path))
    needed, available, what = memory.step_memory(trainer)
    parts = memory.estimate(trainer)
    assert needed == 8 * (parts["total"] + parts["params"] + parts["optimizer_state"])  # conftest's 8 CPU devices
    assert 0 < available == pytest.approx(memory.host_available_bytes(), rel=0.2)
    assert what == "the train step and a checkpoint's copy of its state in this host's memory"


def test_a_model_the_host_cannot_hold_is_refused_before_anything_is_allocated(tmp_path):
    """A real process, its host made to have 1 GiB: n_embd=4096 on a 23 GB host was killed by the kernel."""
    workdir, data = tmp_path / "w", tmp_path / "data"
    args = [
        "main", "--config", "tiny", "--workdir", str(workdir), f"--config.data.dir={data}",
        "--config.model.n_embd=1024", "--config.model.n_head=8", "--config.model.n_layer=4",
    ]  # fmt: skip
    code = (
        "import sys\nfrom gpt2jax.training import memory\nmemory.host_available_bytes = lambda: 2**30\n"
        f"from gpt2jax.cli import train\nsys.argv = {args!r}\ntrain.entry()"
    )
    message = _one_sentence(_popen(["-c", code], REPO, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}))
    assert re.fullmatch(
        r"error: the train step and a checkpoint's copy of its state in this host's memory need about 3\.\d GiB by "
        r"the dry run's estimate, more than the 1\.0 GiB available; make the model smaller .*--dry_run shows what fits\.",
        message,
    ), message
    assert not workdir.exists() and not data.exists()


def test_a_config_file_and_the_command_line_give_scan_layers_and_loss_chunk_as_a_word_or_a_value(tmp_path):
    """Typed as words ("auto"), a config file's ``config.model.scan_layers = False`` was refused by ml_collections."""
    from gpt2jax.config import load_config_file
    from gpt2jax.model import GPTConfig

    path = tmp_path / "mine.py"
    path.write_text(
        "from gpt2jax.configs import tiny\n\n\ndef get_config():\n    config = tiny.get_config()\n"
        "    config.model.scan_layers = False\n    config.model.loss_chunk = 64\n    return config\n"
    )
    config = load_config_file(str(path))
    model = GPTConfig.from_config(config.model)
    assert (model.scan_layers, model.loss_chunk) == (False, 64)
    config.model.scan_layers, config.model.loss_chunk = "auto", "auto"  # what the defaults hold
    assert GPTConfig.from_config(config.model).scan_layers == "auto"
    # A config.json written while the fields were words still reads as the values they name.
    assert GPTConfig(scan_layers="false", loss_chunk="0").scan_layers is False
    assert GPTConfig(scan_layers="false", loss_chunk="0").loss_chunk == 0
    with pytest.raises(ValueError, match="model.scan_layers='sometimes'"):
        GPTConfig.from_config({**dict(config.model), "scan_layers": "sometimes"})
