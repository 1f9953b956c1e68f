"""Tests run on 8 fake CPU devices, so sharded code paths run everywhere, as on 8 GPUs."""

import os

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Synthetic data prepared once per test module and shared by its runs."""
    return tmp_path_factory.mktemp("data")
