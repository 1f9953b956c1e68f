"""Tests run on 8 fake CPU devices, so sharded code paths run everywhere, as on 8 GPUs."""

import os

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Synthetic data prepared once per test module and shared by its runs."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_steps():
    """Each module's compiled executables are dropped when it ends. One process runs every test, and
    XLA:CPU keeps each executable's code mapped until its cache lets it go; two full runs of the
    suite on this machine aborted inside XLA late in the run, and none did once modules let go."""
    yield
    import gc

    import jax

    jax.clear_caches()
    gc.collect()
