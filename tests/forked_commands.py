"""``python -m MODULE ARGS`` for many commands, each in a process forked from one that imported JAX once.

``python tests/forked_commands.py JOBS.json``: JOBS is a list of ``{"argv": [MODULE, *ARGS], "env": {...},
"stdout": PATH, "stderr": PATH}``; each job's exit code goes into ``JOBS.json.codes`` as a list in the
same order. Each child is what ``python -m`` would be from the second line of its main module on: its own
environment, argv, stdout and stderr on file descriptors 1 and 2, the module run as ``__main__``, and an
uncaught exception or ``SystemExit`` ending it as it ends the interpreter (traceback, exit code, atexit,
flushes).
Only third-party libraries are imported before the fork, none of which starts a thread or a JAX backend
as it loads: gpt2jax itself (whose ``cli`` package reads ``__main__`` as it loads) is imported in the
child. test_house.py's ~60 command lines took 1.5 to 2.5 s of CPU each as fresh interpreters on a
loaded 2-core EPYC, almost all of it importing JAX, Flax, Optax, Orbax and SciPy.
"""

import atexit
import gc
import json
import os
import runpy
import sys

import absl.app  # noqa: F401
import absl.flags  # noqa: F401
import flax.nnx  # noqa: F401
import jax  # noqa: F401
import jax.numpy  # noqa: F401
import matplotlib.ticker  # noqa: F401 (not pyplot: the plot command picks its backend before that)
import ml_collections  # noqa: F401
import numpy  # noqa: F401
import optax  # noqa: F401
import orbax.checkpoint  # noqa: F401
import scipy.optimize  # noqa: F401
import scipy.sparse  # noqa: F401

MAX_RUNNING = os.cpu_count() or 1


def _become(job: dict) -> None:
    """In the forked child: the job's environment, argv and output files, then its module as ``__main__``."""
    for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
        file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(file, fd)
        os.close(file)
    os.environ.clear()
    os.environ.update(job["env"])
    module, *args = job["argv"]
    sys.argv = [module, *args]
    sys.path[0] = os.getcwd()  # where python -m looks first (this script's folder was)
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as stop:  # as the interpreter reads it: None is 0, a message goes to stderr and is 1
        code = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
        if not isinstance(stop.code, int | None):
            print(stop.code, file=sys.stderr)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    # The interpreter's own ending less its teardown of every module (a second of CPU a child here):
    # the atexit functions, the flushes, the exit code.
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(jobs_path: str) -> None:
    with open(jobs_path) as file:
        jobs = json.load(file)
    codes: list[int | None] = [None] * len(jobs)
    running: dict[int, int] = {}  # pid -> job index
    gc.freeze()  # the collector leaves the preloaded objects alone: a child copies fewer pages
    for index, job in enumerate(jobs):
        while len(running) >= MAX_RUNNING:
            pid, status = os.wait()
            codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
        pid = os.fork()
        if pid == 0:
            _become(job)
        running[pid] = index
    while running:
        pid, status = os.wait()
        codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
    with open(jobs_path + ".codes", "w") as file:
        json.dump(codes, file)


if __name__ == "__main__":
    main(sys.argv[1])
