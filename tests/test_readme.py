"""The README's commands run as written, in order, from a fresh directory, and its first screen
is what the budget command prints.

Three liberties, each to fit CI's minutes and machine: the tiny training runs 20 steps, not
400; any other training command runs as its dry run (the same config checks, mesh and compile,
no data to download); a command with mesh flags gets eight fake CPU devices. `pip install` and
the test suite itself are not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO

README = REPO / "README.md"
# What the commands read by relative path: the configs, the experiments and the README itself.
READ_BY_PATH = ("configs", "experiments", "README.md")
TINY_STEPS = ("--config.train.steps=20", "--config.train.eval_every=20", "--config.train.checkpoint_every=20")
SKIPPED = ("pip install", "python -m pytest")


def readme_commands(text: str) -> list[str]:
    """The commands of the README's ```bash blocks, continuation lines joined and comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            command = re.sub(r"\s+#\s.*$", "", line).strip()
            if command:
                commands.append(command)
    return commands


def as_run_here(command: str) -> str | None:
    """``command`` with this test's liberties, or None for one it does not run."""
    if command.startswith(SKIPPED):
        return None
    if command.startswith("python -m gpt2jax.main") and "--dry_run" not in command:
        tiny = re.search(r"--config (configs/tiny\.py|tiny)\b", command)
        return " ".join([command, *TINY_STEPS]) if tiny else f"{command} --dry_run"
    return command


def _environment(command: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), GPT2JAX_TRACEBACK="1")
    env.pop("XLA_FLAGS", None)
    if "--config.mesh." in command:
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    return env


def test_the_readme_shows_commands_and_this_test_runs_each_or_says_why_not():
    commands = readme_commands(README.read_text())
    assert len(commands) >= 15
    assert sum(as_run_here(command) is None for command in commands) == 2  # pip install, pytest
    assert any(command.startswith("python -m gpt2jax.scaling budget") for command in commands)


def test_every_readme_command_runs_as_written(tmp_path):
    for name in READ_BY_PATH:
        (tmp_path / name).symlink_to(REPO / name)
    for command in readme_commands(README.read_text()):
        run = as_run_here(command)
        if run is None:
            continue
        result = subprocess.run(
            run, shell=True, cwd=tmp_path, env=_environment(run), capture_output=True, text=True, timeout=900
        )
        assert result.returncode == 0, f"{run}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        assert "Traceback" not in result.stderr, f"{run}\n{result.stderr[-3000:]}"


def test_the_readmes_first_screen_is_the_budget_commands_own_output(tmp_path):
    text = README.read_text()
    command = next(c for c in readme_commands(text) if c.startswith("python -m gpt2jax.scaling budget"))
    shown = text.split(f"{command}\n```\n\n```\n", 1)[1].split("\n  ...\n```", 1)[0].splitlines()
    printed = subprocess.run(
        [sys.executable, *command.split()[1:]],
        cwd=tmp_path,
        env=_environment(command),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout.splitlines()
    assert len(shown) >= 12
    assert printed[: len(shown)] == shown


@pytest.mark.parametrize(
    "command, expected",
    [
        ("pip install -e '.[test]'", None),
        (
            "python -m gpt2jax.main --config tiny --workdir runs/t",
            "python -m gpt2jax.main --config tiny --workdir runs/t " + " ".join(TINY_STEPS),
        ),
        (
            "python -m gpt2jax.main --config small --workdir runs/s",
            "python -m gpt2jax.main --config small --workdir runs/s --dry_run",
        ),
        ("python -m gpt2jax.main --config small --dry_run", "python -m gpt2jax.main --config small --dry_run"),
        ("python -m gpt2jax.scaling fit --results r.csv", "python -m gpt2jax.scaling fit --results r.csv"),
    ],
)
def test_the_liberties_taken(command, expected):
    assert as_run_here(command) == expected


def test_commands_are_read_across_continuations_and_without_comments():
    text = "```bash\npython -m a --x 1 \\\n    --y 2   # note\n\npython -m b  # two\n```\n```\nnot bash\n```\n"
    assert readme_commands(text) == ["python -m a --x 1      --y 2", "python -m b"]
