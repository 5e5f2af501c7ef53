"""Test-wide settings: CPU only, and quick XLA compiles (tests are tiny; compile time dominates)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position (after the settings)
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture
def full_float32_matmuls():
  """Golden parity is about a port's math: on GPUs the default float32 matmul is TF32-like
  (H200: scores 0.004 points off the golden ones; 1e-5 points at "highest"), so compare at full
  precision. A no-op on CPU. Test modules opt in with `pytest.mark.usefixtures`."""
  with jax.default_matmul_precision("highest"):
    yield
