"""What every command-line entry point shares: clear errors and multi-host start-up."""

import os
import sys

# Errors a user causes (bad config value, missing data, mismatched checkpoint) and
# the NaN stop end in one sentence instead of a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, RuntimeError)


def run_absl(main) -> None:
    from absl import app

    def guarded(argv):
        try:
            main(argv)
        except USER_ERRORS as error:
            if os.environ.get("GPT2JAX_TRACEBACK"):
                raise
            sys.exit(f"error: {error}")

    app.run(guarded, flags_parser=_parse_flags)


def _parse_flags(argv):
    """absl's parser, with ml_collections' errors for an unknown --config.KEY made one sentence."""
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        sys.exit(f"error: {error}\nPass --help for the flags.")
    except (AttributeError, KeyError) as error:
        bad = [arg.split("=")[0] for arg in argv[1:] if arg.startswith("--config.")]
        sys.exit(f"error: unknown config key {str(error).strip(chr(34) + chr(39))!r} "
                 f"among {bad}; see gpt2jax/config.py for the keys a config has.")


def initialize_distributed() -> None:
    """Joins a multi-process run when a launcher describes one, before jax touches a device.

    ``jax.distributed.initialize()`` finds SLURM, Open MPI and cloud TPU launchers by
    itself; JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID describe a
    run started by hand (one process per host, or several on one host for tests).
    """
    import jax

    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        jax.distributed.initialize()
