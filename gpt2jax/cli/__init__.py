"""The commands, and the one error path they share.

Each module here is one command and stays thin: it parses flags and calls the library.
``train`` (also ``python -m gpt2jax.main``), ``evaluate``, ``lm_eval``, ``sample``, ``export``, ``bench``
and ``prepare`` run as ``python -m gpt2jax.cli.NAME`` or as the console script
``gpt2jax-NAME``; the scaling tools are subcommands of ``python -m gpt2jax.scaling``
(``gpt2jax-scaling``): ``sweep``, ``fit``, ``backtest``, ``plot``, ``report`` and ``budget``.

Every command reports an error a user can cause (a bad flag value, missing data, a
mismatched checkpoint, a full disk, the NaN stop) in one sentence on stderr and exits 1;
a malformed command line exits 2. Any other exception is a bug, or an input nothing checks
yet: it is one sentence too, naming its type, exit 1. ``GPT2JAX_TRACEBACK=1`` re-raises
instead, for a developer who wants the traceback. SIGTERM (kill's default, and what SLURM
sends first) and SIGINT (Ctrl-C) are recorded by ``errors.request_stop``: training, prepare and
a sweep stop at the next point they choose (between steps, between start-up phases; training
saves the step it stopped at), commands that only read stop where they are, and ``finally``
clauses run (locks are released); the command ends in one line, exit 143 or 130, never in a
KeyboardInterrupt's traceback. A second signal ends the process at once. A signal the process was
started ignoring (SIGINT, for a script's ``cmd &``) stays ignored. A warning is one line,
``warning: ...``.

Libraries' logging is quiet unless asked for: absl's (Orbax, TFDS: about 50 INFO lines a
checkpoint, and an ERROR traceback for a failure the command reports anyway) is off, and
Python's (JAX) shows warnings only. ``--verbosity=0`` (absl commands) brings both back.
"""

from __future__ import annotations

import argparse
import logging
import os
import runpy
import signal
import sys
import threading
import warnings

from gpt2jax import xla_flags
from gpt2jax.errors import (
    Stopped,
    check_stop,
    clear_stop,
    first_line,
    request_stop,
    stopping_anywhere,
    stopping_at_checkpoints,
)

# Errors a user causes: their own sentence is the message; anything else is named as unexpected.
USER_ERRORS = (ValueError, OSError, RuntimeError)
USER_ERROR_EXIT = 1
USAGE_EXIT = 2
TRACEBACK_VARIABLE = "GPT2JAX_TRACEBACK"


def user_error_message(error: BaseException) -> str:
    """One sentence for a user error; an OSError names its file, as its str does, without the errno."""
    if isinstance(error, OSError) and error.strerror and error.filename:
        return f"{error.strerror}: {error.filename}"
    return str(error)


def _one_sentence(error: Exception) -> str:
    if isinstance(error, USER_ERRORS):
        return user_error_message(error)
    return (
        f"unexpected {type(error).__name__}: {first_line(error, limit=300)} (an input gpt2jax does not check "
        f"yet, or a bug: run again with {TRACEBACK_VARIABLE}=1 for the traceback, and report it)."
    )


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def _quiet_unraisable(unraisable) -> None:
    # A damaged checkpoint fails one TensorStore read; the reads still in flight then complete into
    # Orbax's closed event loop and raise where nothing can catch them. The failure is reported once.
    stray = unraisable.exc_type is Exception or str(unraisable.exc_value) == "Event loop is closed"
    if not stray:
        sys.__unraisablehook__(unraisable)


def quiet_library_logging() -> None:
    """absl's logger off, Python's root logger at WARNING (see the module docstring)."""
    logging.getLogger("absl").setLevel(logging.CRITICAL + 1)
    logging.getLogger().setLevel(logging.WARNING)
    sys.unraisablehook = _quiet_unraisable


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def install_stop_handlers() -> None:
    """``errors.request_stop`` for SIGTERM and SIGINT, where they still have Python's default handlers,
    when the process is a command (``python -m gpt2jax.X``, a ``gpt2jax-X`` script), not a program
    that imports the package (a test runner keeps its own Ctrl-C).

    Called as this package loads, before a command imports absl, JAX and its config (2 s and
    more on a loaded machine): a stop sent then was Python's default, a KeyboardInterrupt's
    traceback for Ctrl-C.
    """
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    command = (spec is not None and spec.name.startswith("gpt2jax.")) or os.path.basename(sys.argv[0]).startswith(
        "gpt2jax-"
    )
    if not command or threading.current_thread() is not threading.main_thread():
        return
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) in (signal.SIG_DFL, signal.default_int_handler):
            signal.signal(signum, request_stop)


def _handle_stops() -> dict:
    """Installs ``request_stop`` for every stop signal the process does not ignore, and returns the handlers
    it replaced. A signal ignored when the process started (SIGINT, for a script's ``cmd &``) stays
    ignored for the whole command, as Python leaves it. Installed over it after the imports, it had
    been dropped while they ran and honoured after them: a Ctrl-C 3.7 s into a loaded start was
    lost, and the run trained to its end and exited 0."""
    return {
        signum: signal.signal(signum, request_stop)
        for signum in STOP_SIGNALS
        if signal.getsignal(signum) is not signal.SIG_IGN
    }


install_stop_handlers()


def refuse_a_shadowed_package() -> None:
    """Ends the command in one sentence when ``gpt2jax`` was imported as a folder of the current directory
    that is not the package (a clone's root, from the clone's parent: ``python -m`` puts the current
    directory first), which made the clone's ``data/`` shadow ``gpt2jax.data``: "cannot import name
    'hellaswag' from 'gpt2jax.data' (unknown location)"."""
    package = sys.modules.get("gpt2jax")
    if package is not None and getattr(package, "__file__", None) is None:
        folder = next(iter(package.__path__), "?")
        print(
            f"error: python took {folder}, a folder of the current directory that is not the package, for gpt2jax "
            "(a clone's root?); run the command from another directory, the clone's root for instance.",
            file=sys.stderr,
        )
        sys.exit(USER_ERROR_EXIT)


refuse_a_shadowed_package()


def guarded(main, stops_at_checkpoints: bool = False):
    """``main`` with its errors turned into one sentence and exit code 1, unless GPT2JAX_TRACEBACK is set.

    A stop (SIGTERM, Ctrl-C) ends ``main`` where it is (``errors.stopping_anywhere``), or with
    ``stops_at_checkpoints`` only where it checks (training, prepare, a sweep), and it ends the
    command with 128 + the signal's number even where the code it interrupted finished anyway:
    a SIGTERM is never answered by 0.
    """

    def run(*args, **kwargs):
        warnings.formatwarning = _one_line_warning
        previous = _handle_stops()  # see the module docstring
        try:
            check_stop(lambda name: f"stopped by {name} as the command loaded, before it started; nothing was written.")
            with stopping_at_checkpoints() if stops_at_checkpoints else stopping_anywhere():
                result = main(*args, **kwargs)
            check_stop()
            return result
        except Stopped as stop:
            print(stop.message or f"stopped by {stop.name}.", file=sys.stderr)
            sys.exit(stop.code)
        except Exception as error:
            if os.environ.get(TRACEBACK_VARIABLE):
                raise
            print(f"error: {_one_sentence(error)}", file=sys.stderr)
            sys.exit(USER_ERROR_EXIT)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            clear_stop()

    return run


def usage_error(message: str) -> None:
    """A malformed command line: one line on stderr, exit code 2."""
    print(f"error: {message.rstrip('.')}; pass --help for the flags.", file=sys.stderr)
    sys.exit(USAGE_EXIT)


def run_absl(main, stops_at_checkpoints: bool = False) -> None:
    """Runs an absl command: its flags parsed by absl, its user errors reported in one sentence."""
    from absl import app

    def main_with_usage(argv):
        from absl import flags

        if not flags.FLAGS["verbosity"].present:
            quiet_library_logging()
        try:
            return main(argv)
        except app.UsageError as error:
            usage_error(str(error))

    app.run(
        guarded(main_with_usage, stops_at_checkpoints),
        flags_parser=lambda argv: _parse_absl_flags(argv, main.__module__),
    )


HELP_FLAGS = ("--help", "-h", "-?", "--helpshort")


def command_help(module_name: str) -> str:
    """What ``--help`` prints for an absl command: its docstring and its own flags.

    absl's own ``--help`` lists the flags of the ``__main__`` module, which for
    ``python -m gpt2jax.main`` is a two-line alias that defines none.
    """
    from absl import flags

    module = sys.modules[module_name]
    own_flags = flags.FLAGS.module_help(module_name).split("\n", 2)[-1]
    config_note = ""
    if "config" in {flag.name for flag in flags.FLAGS.flags_by_module_dict().get(module_name, [])}:
        config_note = (
            "\n  --config.SECTION.KEY=VALUE: override any key of the config, e.g. "
            "--config.train.learning_rate=3e-4 (the keys: gpt2jax/config.py and GPTConfig in gpt2jax/model.py)."
        )
    return f"{(module.__doc__ or '').strip()}\n\nflags:\n{own_flags}{config_note}\n  --helpfull: every flag, absl's included."


def _parse_absl_flags(argv, module_name: str):
    """absl's parser, with its errors (and ml_collections' for an unknown --config.KEY) made one sentence."""
    from absl import flags

    if any(arg in HELP_FLAGS for arg in argv[1:]):
        print(command_help(module_name))
        sys.exit(0)
    try:
        return flags.FLAGS(_with_config_paths(argv))
    except (FileNotFoundError, IsADirectoryError, flags.Error) as error:
        usage_error(str(error))
    except ValueError as error:  # a config file that does not load (config.load_config_module)
        print(f"error: {error}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
    except (AttributeError, KeyError) as error:
        usage_error(_unknown_key_message(error, argv))


def _unknown_key_message(error: BaseException, argv: list[str]) -> str:
    """ml_collections' KeyError (wrapped in an AttributeError) as one sentence naming the flag."""
    message = error
    while isinstance(message, BaseException) and message.args:
        message = message.args[0]
    key, _, suggestion = str(message).partition("\n")
    key = key.strip("'\"")
    flags_given = [arg.split("=")[0] for arg in argv[1:] if arg.startswith("--config.")]
    culprit = next((flag for flag in flags_given if key in flag.split(".")[1:]), None)
    where = f" in {culprit}" if culprit else ""
    suggestion = suggestion.strip().rstrip("?")
    hint = f" ({suggestion[:1].lower()}{suggestion[1:]}?)" if suggestion else ""
    return f"unknown config key {key!r}{where}{hint}; see gpt2jax/config.py for the keys a config has."


def _with_config_paths(argv: list[str]) -> list[str]:
    """``--config NAME`` (or ``--config=NAME[:ARGS]``) with NAME made the file ``config.config_path`` finds,
    loaded once by ``config.load_config_module`` so that a syntax error or a missing get_config is one sentence."""
    from gpt2jax.config import config_path, load_config_module

    def resolved(value: str) -> str:
        path, colon, rest = value.partition(":")
        found = config_path(path)
        load_config_module(found)
        return str(found) + colon + rest

    out = list(argv[:1])
    args = iter(argv[1:])
    for arg in args:
        if arg == "--config":
            out += [arg, resolved(next(args, ""))]
        elif arg.startswith("--config="):
            out.append("--config=" + resolved(arg.removeprefix("--config=")))
        else:
            out.append(arg)
    return out


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a malformed command line reported as absl commands report it."""

    def error(self, message):
        usage_error(f"{self.prog}: {message}")


def run_as_scaling_subcommand(module_name: str) -> None:
    """``python -m gpt2jax.cli.NAME ARGS`` as ``python -m gpt2jax.scaling NAME ARGS``. By name, not by
    import: ``cli.scaling`` imports the subcommand modules, so importing it from one is a cycle."""
    sys.argv[1:1] = [module_name.rpartition(".")[2]]
    runpy.run_module("gpt2jax.cli.scaling", run_name="__main__", alter_sys=True)


def run_argparse(main, argv=None, stops_at_checkpoints: bool = False) -> None:
    """Runs ``main(argv)`` of an argparse command, its user errors reported in one sentence."""
    quiet_library_logging()
    guarded(main, stops_at_checkpoints)(argv)


def initialize_distributed(mesh_config=None) -> None:
    """Joins a multi-process run when a launcher describes one, before jax touches a device.

    First sets XLA's GPU flags for the mesh the run will make (``mesh_config``, the run
    config's ``mesh`` where the command has one; ``xla_flags.configure``).

    ``jax.distributed.initialize()`` finds SLURM, Open MPI and cloud TPU launchers by
    itself; JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID describe a
    run started by hand (one process per host, or several on one host for tests).
    """
    xla_flags.configure(mesh_config=mesh_config)  # on a GPU run, before jax starts its backend
    import jax

    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        jax.distributed.initialize()
