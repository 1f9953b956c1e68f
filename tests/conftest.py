"""Tests run on 8 fake CPU devices, so sharded code paths run everywhere, as on 8 GPUs."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
