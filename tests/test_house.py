"""The house rules: one error path for every command, no import cycles, one init_from parser,
parameter tables that refuse what they do not know, shipped configs found by name, one formatter."""

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gpt2jax import init_from, sharding
from gpt2jax.config import config_path, shipped_config_names
from gpt2jax.interop import hf
from gpt2jax.model import GPTConfig, abstract_model
from gpt2jax.training import optim
from tests.helpers import REPO

PACKAGE = REPO / "gpt2jax"
ABSL_LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d", re.MULTILINE)  # I1201 23:40:11.269697 ...
# The two entry modules that keep short public names and only call into cli/.
ENTRY_ALIASES = {"gpt2jax.main", "gpt2jax.scaling.__main__"}

# Per command: a command line with a user error (exit 1, one sentence), and a malformed one (exit 2).
COMMANDS = {
    "train": (
        ["gpt2jax.main", "--config", "tiny", "--dry_run", "--config.train.init_from=bogus"],
        ["gpt2jax.main", "--no_such_flag"],
    ),
    "evaluate": (["gpt2jax.cli.evaluate", "--workdir", "{missing}"], ["gpt2jax.cli.evaluate", "--step", "x"]),
    "sample": (["gpt2jax.cli.sample", "--workdir", "{missing}"], ["gpt2jax.cli.sample", "--no_such_flag"]),
    "lm_eval": (
        ["gpt2jax.cli.lm_eval", "--workdir", "{missing}", "--tasks", "hellaswag"],
        ["gpt2jax.cli.lm_eval", "--tasks", "hellaswag", "--limit", "x"],
    ),
    "export": (
        ["gpt2jax.cli.export", "--workdir", "{missing}", "--out", "{missing}/out"],
        ["gpt2jax.cli.export", "--workdir", "{missing}"],
    ),
    "bench": (
        ["gpt2jax.cli.bench", "--config", "tiny", "--config.model.n_head=3"],
        ["gpt2jax.cli.bench", "--config", "no_such_config"],
    ),
    "prepare": (
        ["gpt2jax.cli.prepare", "--source", "bogus", "--out", "{missing}"],
        ["gpt2jax.cli.prepare", "--source", "synthetic"],
    ),
    "bench_prepare": (
        ["gpt2jax.cli.bench_prepare", "--source", "parquet:{missing}/*.parquet"],
        ["gpt2jax.cli.bench_prepare", "--workers", "two"],
    ),
    "sweep": (
        ["gpt2jax.scaling", "sweep", "--config", "{missing}/sweep.py", "--plan"],
        ["gpt2jax.scaling", "sweep", "--shard", "3/2", "--config", "x"],
    ),
    "fit": (["gpt2jax.scaling", "fit", "--results", "{missing}/results.csv"], ["gpt2jax.scaling", "fit"]),
    "backtest": (
        ["gpt2jax.scaling", "backtest", "--results", "{missing}/results.csv", "--train_below", "1e12"],
        ["gpt2jax.scaling", "backtest", "--train_below", "x"],
    ),
    "plot": (["gpt2jax.scaling", "plot", "--workdir", "{missing}"], ["gpt2jax.scaling", "plot"]),
    "report": (
        ["gpt2jax.scaling", "report", "--workdir", "{missing}", "--out", "{missing}/r.md"],
        ["gpt2jax.scaling", "report", "--workdir", "x"],
    ),
    "budget": (["gpt2jax.scaling", "budget", "--gpu", "gtx-480"], ["gpt2jax.scaling", "nope"]),
}


# Every command module, at every public name: each must list its own flags under --help.
HELP_MODULES = sorted(
    {"gpt2jax.main", "gpt2jax.scaling"}
    | {f"gpt2jax.cli.{path.stem}" for path in (PACKAGE / "cli").glob("*.py") if path.stem != "__init__"}
)


@pytest.fixture(scope="module")
def command_results(tmp_path_factory):
    """Every command's user error, with and without GPT2JAX_TRACEBACK, and its malformed line."""
    missing = tmp_path_factory.mktemp("cli") / "missing"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("GPT2JAX_TRACEBACK", None)
    commands = {}
    for name, (user_error, malformed) in COMMANDS.items():
        for case, args, extra_env in (
            ("user", user_error, {}),
            ("traceback", user_error, {"GPT2JAX_TRACEBACK": "1"}),
            ("usage", malformed, {}),
        ):
            commands[name, case] = ([*(arg.format(missing=missing) for arg in args)], dict(env, **extra_env))
    for module in HELP_MODULES:
        commands[module, "help"] = ([module, "--help"], env)

    # One process imports JAX and forks each command (tests/forked_commands.py): as fresh interpreters,
    # the ~75 command lines took 4 to 5 s of CPU each, and the fixture 380 s of a CI run.
    work = tmp_path_factory.mktemp("command_output")
    keys = list(commands)
    jobs = [
        {"argv": args, "env": run_env, "stdout": str(work / f"{i}.out"), "stderr": str(work / f"{i}.err")}
        for i, (args, run_env) in enumerate(commands[key] for key in keys)
    ]
    (work / "jobs.json").write_text(json.dumps(jobs))
    server = subprocess.run(
        [sys.executable, str(REPO / "tests" / "forked_commands.py"), str(work / "jobs.json")],
        cwd=REPO,
        env=env,
        text=True,
        capture_output=True,
        timeout=900,
    )
    assert server.returncode == 0, server.stderr[-3000:]
    codes = json.loads((work / "jobs.json.codes").read_text())
    results = {
        key: (code, (work / f"{i}.out").read_text(), (work / f"{i}.err").read_text())
        for i, (key, code) in enumerate(zip(keys, codes))
    }
    assert not missing.exists(), "a command that failed created files"
    return results


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_reports_user_errors_in_one_sentence_and_exits_1(command_results, name):
    code, stdout, stderr = command_results[name, "user"]
    assert code == 1, stderr[-2000:]
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in stderr, stderr[-2000:]
    assert not stdout.strip()


@pytest.mark.parametrize("module", HELP_MODULES)
def test_help_lists_the_commands_own_flags(command_results, module):
    code, stdout, stderr = command_results[module, "help"]
    assert code == 0, stderr[-2000:]
    flags = set(re.findall(r"--[a-z][a-z_.]*", stdout)) - {"--help", "--helpfull"}
    subcommands = re.search(r"\{(\w+,)+\w+\}", stdout)  # python -m gpt2jax.scaling {sweep,fit,...}
    assert flags or subcommands, f"python -m {module} --help lists no flag of its own:\n{stdout}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_gpt2jax_traceback_shows_the_traceback_for_every_command(command_results, name):
    code, _, stderr = command_results[name, "traceback"]
    assert code != 0 and "Traceback (most recent call last)" in stderr, stderr[-2000:]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_malformed_command_line_exits_2_for_every_command(command_results, name):
    code, _, stderr = command_results[name, "usage"]
    assert code == 2, stderr[-2000:]
    assert "Traceback" not in stderr and "error: " in stderr


def test_an_exception_nothing_expected_is_one_sentence_naming_its_type_and_the_variable(capsys, monkeypatch):
    from gpt2jax import cli

    def bug():
        return {}["missing"]

    monkeypatch.delenv(cli.TRACEBACK_VARIABLE, raising=False)
    with pytest.raises(SystemExit) as stop:
        cli.guarded(bug)()
    assert stop.value.code == 1
    assert re.fullmatch(
        r"error: unexpected KeyError: 'missing' \(.*run again with GPT2JAX_TRACEBACK=1 for the traceback.*\)\.\n",
        capsys.readouterr().err,
    )
    monkeypatch.setenv(cli.TRACEBACK_VARIABLE, "1")
    with pytest.raises(KeyError):
        cli.guarded(bug)()


# The import graph.


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gpt2jax"):
            found |= {node.module} & modules
            found |= {f"{node.module}.{alias.name}" for alias in node.names} & modules
    return found


@pytest.fixture(scope="module")
def import_graph():
    paths = {_module_name(path): path for path in PACKAGE.rglob("*.py") if "configs" not in path.parts}
    return {name: _imports(path, set(paths)) - {name} for name, path in paths.items()}


def test_the_import_graph_has_no_cycle(import_graph):
    state = {}

    def visit(module, trail):
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", f"import cycle: {' -> '.join(trail + [module])}"
        state[module] = "open"
        for imported in sorted(import_graph[module]):
            visit(imported, trail + [module])
        state[module] = "done"

    for module in sorted(import_graph):
        visit(module, [])


def _architecture_layers() -> list[tuple[str, list[str]]]:
    """(layer, module prefixes) from docs/ARCHITECTURE.md's layer table, lowest layer first."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    table = text.split("## The layers, lowest first", 1)[1].split("\n## ", 1)[0]
    layers = []
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or cells[0] in ("layer", "---"):
            continue
        prefixes = []
        for name in re.findall(r"`([^`]+)`", cells[1]):
            path = name.removesuffix(".py").removesuffix("/__init__").rstrip("/")
            prefixes.append("gpt2jax" if path == "gpt2jax" else "gpt2jax." + path.replace("/", "."))
        layers.append((cells[0], prefixes))
    return layers


def _layer_of(module: str, layers) -> int | None:
    """The index of the layer whose longest matching prefix names ``module``."""
    best = None
    for index, (_, prefixes) in enumerate(layers):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    return None if best is None else best[0]


def test_every_import_follows_the_layer_order_architecture_states(import_graph):
    layers = _architecture_layers()
    names = [name for name, _ in layers]
    assert names[:3] == ["files", "accounting", "data"] and names[-1] == "commands", names
    unplaced = sorted(module for module in import_graph if _layer_of(module, layers) is None)
    assert not unplaced, f"modules ARCHITECTURE.md's layer table does not name: {unplaced}"
    upward = []
    for module, imported in import_graph.items():
        own = _layer_of(module, layers)
        for target in imported:
            if _layer_of(target, layers) > own:
                upward.append(f"{module} ({names[own]}) imports {target} ({names[_layer_of(target, layers)]})")
    assert not upward, "imports against the layer order:\n" + "\n".join(sorted(upward))


def test_training_never_imports_inference(import_graph):
    offenders = {
        module: sorted(m for m in imported if m.startswith("gpt2jax.inference"))
        for module, imported in import_graph.items()
        if module.startswith("gpt2jax.training")
    }
    assert not {module: found for module, found in offenders.items() if found}


def test_the_layer_check_sees_an_upward_import():
    """The check would catch a data module importing the trainer: it is not vacuous."""
    layers = _architecture_layers()
    assert _layer_of("gpt2jax.data.loader", layers) < _layer_of("gpt2jax.training.trainer", layers)
    assert _layer_of("gpt2jax.files.atomic", layers) < _layer_of("gpt2jax.flops", layers)
    assert _layer_of("gpt2jax.scaling.__main__", layers) == len(layers) - 1


def test_no_library_module_imports_a_command(import_graph):
    library = [
        module for module in import_graph if not module.startswith("gpt2jax.cli") and module not in ENTRY_ALIASES
    ]
    offenders = {module: sorted(m for m in import_graph[module] if m.startswith("gpt2jax.cli")) for module in library}
    assert not {module: found for module, found in offenders.items() if found}


def test_no_library_module_parses_arguments():
    for path in PACKAGE.rglob("*.py"):
        if "cli" in path.relative_to(PACKAGE).parts:
            continue
        text = path.read_text()
        assert "argparse" not in text and "absl import flags" not in text, path


# init_from, parsed once.


def test_init_from_parses_every_form_and_refuses_the_rest():
    assert init_from.parse("resume") == init_from.InitFrom("resume")
    assert init_from.parse("scratch").kind == "scratch"
    assert init_from.parse("hf:some/dir") == init_from.InitFrom("hf", Path("some/dir"))
    assert init_from.parse("checkpoint:runs/a@12") == init_from.InitFrom("checkpoint", Path("runs/a"), 12)
    assert init_from.parse("checkpoint:runs/a") == init_from.InitFrom("checkpoint", Path("runs/a"))
    for value in ("hf:some/dir", "checkpoint:runs/a@12", "resume"):
        assert str(init_from.parse(value)) == value
    with pytest.raises(ValueError, match="names no directory"):
        init_from.parse("hf:")
    with pytest.raises(ValueError, match=r"must be checkpoint:WORKDIR\[@STEP\]"):
        init_from.parse("checkpoint:runs/a@last")
    with pytest.raises(
        ValueError,
        match=r"train.init_from='gpt2' is not one of resume, scratch, hf:DIR, "
        r"checkpoint:WORKDIR\[@STEP\]\.",
    ):
        init_from.parse("gpt2")


def test_inference_flags_become_one_weights_source():
    assert init_from.weights_source("runs/a", None, 5) == init_from.InitFrom("checkpoint", Path("runs/a"), 5)
    assert init_from.weights_source(None, "hf:d", None) == init_from.InitFrom("hf", Path("d"))
    with pytest.raises(ValueError, match="pass either --workdir"):
        init_from.weights_source("runs/a", "hf:d", None)
    with pytest.raises(ValueError, match="Hugging Face weights have none"):
        init_from.weights_source(None, "hf:d", 3)
    with pytest.raises(ValueError, match=r"--init_from='resume' does not apply here; give one of hf:DIR"):
        init_from.weights_source(None, "resume", None)


# The parameter contract.


def test_a_parameter_no_table_knows_is_refused_by_all_four(tmp_path):
    model_config = GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=16)
    _, params = abstract_model(model_config)
    pure = nnx.to_pure_dict(params)
    pure["h"]["attn"]["rotary_table"] = jax.ShapeDtypeStruct((2, 16, 32), jnp.float32)
    mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    with pytest.raises(
        ValueError,
        match=r"parameter h/attn/rotary_table \(2, 16, 32\) is a matrix that no rule in "
        r"sharding.PARTITION_RULES names",
    ):
        sharding.tree_shardings(mesh, pure)
    with pytest.raises(ValueError, match="parameter h/attn/rotary_table matches no rule in optim.DECAY_RULES"):
        optim.decay_mask(pure)
    with pytest.raises(ValueError, match="parameter h/attn/rotary_table matches no rule in optim.MUON_RULES"):
        optim.muon_labels(pure)
    host = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), pure)
    with pytest.raises(ValueError, match="parameter h/attn/rotary_table has no Hugging Face name"):
        hf.save_hf(model_config, host, tmp_path / "out")


def test_a_mesh_axis_that_does_not_divide_a_dimension_is_refused():
    _, params = abstract_model(GPTConfig(n_layer=1, n_head=4, n_embd=36, block_size=16))
    mesh = sharding.make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
    with pytest.raises(
        ValueError,
        match=r"mesh.fsdp=8 does not divide dimension 36 of parameter \S+ .*"
        r"choose a mesh.fsdp that divides 36",
    ):
        sharding.tree_shardings(mesh, params)


# Configs by name, from anywhere.


def test_shipped_configs_are_found_by_name_from_any_directory(tmp_path):
    assert set(shipped_config_names()) >= {"tiny", "small", "medium", "large", "xl"}
    for spec in ("small", "small.py", "configs/small.py"):
        assert config_path(spec).resolve() == PACKAGE / "configs" / "small.py"
    with pytest.raises(FileNotFoundError, match="config file nope does not exist; .* shipped configs: .*tiny"):
        config_path("nope")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-m", "gpt2jax.main", "--config", "tiny", "--dry_run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert '"n_params"' in result.stdout
    assert not ABSL_LOG_LINE.search(result.stderr), result.stderr[-2000:]  # library logging is quiet


def test_verbosity_brings_library_logging_back():
    result = subprocess.run(
        [sys.executable, "-m", "gpt2jax.main", "--config", "tiny", "--dry_run", "--verbosity=1"],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert ABSL_LOG_LINE.search(result.stderr), result.stderr[-2000:]


# One formatter.


def test_the_code_is_formatted_and_linted():
    """ruff (a test extra) with the settings in pyproject.toml."""
    paths = ["gpt2jax", "tests", "scripts", "bench", "experiments"]
    ruff = [sys.executable, "-m", "ruff"]
    formatted = subprocess.run([*ruff, "format", "--check", *paths], cwd=REPO, capture_output=True, text=True)
    assert formatted.returncode == 0, formatted.stdout[-3000:]
    linted = subprocess.run([*ruff, "check", *paths], cwd=REPO, capture_output=True, text=True)
    assert linted.returncode == 0, linted.stdout[-3000:]
