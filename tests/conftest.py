"""Test session setup: 8 fake CPU devices (for sharded == single-device checks), offline hub."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest


@pytest.fixture(scope="session", autouse=True)
def persistent_compile_cache(tmp_path_factory):
    """One JAX compilation cache for the whole session, as every dss job has one: the many tests
    that train or score the tiny config compile each program once, not once per test."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.set_cache_dir(str(tmp_path_factory.mktemp("jax_compile")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # as dss.cli sets it
    yield
    compilation_cache.set_cache_dir(None)
