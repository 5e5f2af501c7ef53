"""Test-wide settings: CPU only, and quick XLA compiles (tests are tiny; compile time dominates)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
