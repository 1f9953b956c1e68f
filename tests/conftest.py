"""Tests run on 8 fake CPU devices, so sharded code paths run everywhere, as on 8 GPUs."""

import importlib.util
import mmap
import os
from pathlib import Path

import pytest

# XLA:CPU runs each fake device's share of a step on its own thread and meets the others at every
# all-reduce; a participant later than the terminate timeout (40 s by default) aborts the whole
# process. On a loaded 2-core machine one of 8 device threads can be starved that long, so tests
# give it half an hour: a real deadlock still ends the run, at CI's own limit. (It was not what
# aborted the suite in test_train.py: that happened with this flag too; see OWN_PROCESS_MODULES.)
COLLECTIVE_TIMEOUT_FLAG = "xla_cpu_collective_call_terminate_timeout_seconds"


def _jaxlib_knows(flag: str) -> bool:
    """Whether the installed jaxlib declares ``flag`` (XLA aborts on a flag it does not know)."""
    root = Path(importlib.util.find_spec("jaxlib").origin).parent
    for library in root.glob("*.so"):
        with open(library, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if data.find(flag.encode()) >= 0:
                return True
    return False


# The tests' programs are tiny and run a few steps: compiling them is most of their time, and LLVM's
# optimisations most of the compile (XLA's own HLO passes, which decide fusion, layout and buffers, run
# at every level). At level 0 test_train.py's gradient accumulation runs took 30 s instead of 95 s (83 s
# of it compiling), their losses bit-identical, and the module 591 s of CPU instead of 870 s; but a step
# runs 2.5 to 8 times slower, and test_gpu_sweep.py's driver, hundreds of steps, took 312 s of CPU at
# level 0 against 261 s. Level 1 compiles nearly as fast (a smoke point's init 2.4 s, against 2.3 s at 0
# and 16.7 s at the default 3) and steps as fast as 3 (50 steps 3.9 s, 9.9 s at 0, 4.0 s at 3; 2-core
# EPYC, 2026-12-07). So this process, whose tests compile much and step little, runs at 0, and every
# process a test starts at 1: XLA reads XLA_FLAGS once, when its first backend starts.
from tests.helpers import CHILD_CODEGEN_FLAG, IN_PROCESS_CODEGEN_FLAG  # noqa: E402

_flags = ["--xla_force_host_platform_device_count=8"]
if _jaxlib_knows(COLLECTIVE_TIMEOUT_FLAG):
    _flags.append(f"--{COLLECTIVE_TIMEOUT_FLAG}=1800")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
USER_XLA_FLAGS = os.environ.get("XLA_FLAGS")  # a run's own flags win, here and in the children
if USER_XLA_FLAGS is None:
    os.environ["XLA_FLAGS"] = " ".join([*_flags, IN_PROCESS_CODEGEN_FLAG])
    import jax

    jax.devices()  # this process's backend starts with level 0
    os.environ["XLA_FLAGS"] = " ".join([*_flags, CHILD_CODEGEN_FLAG])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Synthetic data prepared once per test module and shared by its runs."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_steps():
    """Each module's compiled executables are dropped when it ends: one process runs every test, and
    XLA:CPU keeps each executable's code mapped until its cache lets it go."""
    yield
    import gc

    import jax

    jax.clear_caches()
    gc.collect()


# Modules whose tests train in this process and run in pytest processes of their own. Late in full
# runs of the suite, one process that had run every module before test_train.py aborted inside XLA
# while test_train.py trained on 8 fake devices (CI twice, this machine 4 runs of 5; never when the
# module ran alone), with no message, and no limit of threads, files, maps or memory near.
OWN_PROCESS_MODULES = ("test_train.py",)
CHILD_ENV = "GPT2JAX_TEST_CHILD"
# A test marked ``@pytest.mark.own_process("NAME")`` runs in the module's child process NAME, the others in
# its child "rest": one child for test_train.py's 20 minutes (CI, 2026-12-07) left the other worker idle
# through its last ones, two are shared out by pytest-xdist like any other test.
OWN_PROCESS_MARK = "own_process"


class OwnProcess(pytest.Item):
    """Some of one module's selected tests, run by ``python -m pytest`` in a child process; fails with its output."""

    def __init__(self, *, nodeids: list[str], **kwargs):
        super().__init__(**kwargs)
        self.nodeids = nodeids

    def runtest(self):
        import subprocess
        import sys

        env = {**os.environ, CHILD_ENV: "1"}
        env.pop("XLA_FLAGS")  # a pytest process: its conftest sets this process's flags again
        if USER_XLA_FLAGS is not None:
            env["XLA_FLAGS"] = USER_XLA_FLAGS
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *self.nodeids],
            cwd=self.config.rootpath,
            env=env,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"{len(self.nodeids)} test(s) of {self.path.name}, in their own process, exited "
                f"{result.returncode}:\n{result.stdout[-20000:]}\n{result.stderr[-5000:]}"
            )

    def reportinfo(self):
        return self.path, None, f"{self.path.name}: {len(self.nodeids)} tests in their own process ({self.name})"


def own_process_children(items) -> dict[str, list]:
    """The items of one module by the child process their ``own_process`` mark names ("rest" unmarked), in order."""
    children: dict[str, list] = {}
    for item in items:
        mark = item.get_closest_marker(OWN_PROCESS_MARK)
        children.setdefault(mark.args[0] if mark else "rest", []).append(item)
    return children


# CI runs the suite on two pytest-xdist workers (``-n auto --dist loadgroup``, pyproject.toml):
# a module's tests stay together on one worker, so a module-scoped fixture (a trained workdir, a
# prepared corpus) is built once, and the modules that take longest start first, so that none is
# left to run alone at the end (a 7-minute module started last adds 7 minutes to the run).
LONGEST_FIRST = (
    "test_train.py",
    "test_readme.py",
    "test_house.py",
    "test_bench.py",
    "test_scaling_fit.py",
    "test_faults.py",
    "test_stops.py",
    "test_offload.py",
    "test_gpu_sweep.py",
    "test_sweep.py",
    "test_tuning.py",
    "test_hellaswag.py",
    "test_sharding.py",
    "test_distributed.py",
)


class GroupByModule:
    """Each test in its module's xdist group unless it names its own."""

    @pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
    def pytest_collection_modifyitems(self, items):
        for item in items:
            # test_train.py's nodeids go to a child pytest as they are: no group suffix on them
            if item.path.name not in OWN_PROCESS_MODULES and not any(item.iter_markers("xdist_group")):
                item.add_marker(pytest.mark.xdist_group(item.path.name))


def pytest_configure(config):
    config.pluginmanager.register(GroupByModule())
    config.addinivalue_line("markers", f"{OWN_PROCESS_MARK}(name): the child process of OWN_PROCESS_MODULES it runs in")


def pytest_xdist_node_collection_finished(node, ids):
    """Stops, in one sentence, a run whose module groups were lost: pytest-xdist's loadgroup reads a test's group
    from the ``@group`` suffix it writes into the nodeid, and pytest 9.2 no longer keeps a nodeid written that
    way, so every module spread over both workers and CI built test_offload.py's, test_hellaswag.py's and
    test_distributed.py's module fixtures once on each (pyproject.toml holds pytest below 9.2)."""
    grouped = [nodeid for nodeid in ids if Path(nodeid.split("::")[0]).name not in OWN_PROCESS_MODULES]
    if node.config.getvalue("dist") == "loadgroup" and grouped and not any("@" in nodeid for nodeid in grouped):
        pytest.exit(
            f"pytest-xdist tagged none of the {len(grouped)} tests with its module's group, so --dist loadgroup would "
            "split every module over the workers; use a pytest this pytest-xdist supports (below 9.2).",
            returncode=4,
        )


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected
def pytest_collection_modifyitems(session, config, items):
    if os.environ.get(CHILD_ENV):
        return
    for name in OWN_PROCESS_MODULES:
        moved = [item for item in items if item.path.name == name]
        if not moved:
            continue
        items[:] = [item for item in items if item.path.name != name]
        module = moved[0].getparent(pytest.Module)
        for child, tests in own_process_children(moved).items():
            nodeids = [item.nodeid for item in tests]
            items.append(OwnProcess.from_parent(module, name=f"in_its_own_process[{child}]", nodeids=nodeids))
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each module's order kept
