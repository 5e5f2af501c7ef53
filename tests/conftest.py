"""Test-wide settings: CPU only, and quick XLA compiles (tests are tiny; compile time dominates).

* `--xla_backend_optimization_level=0`: LLVM's optimisations of the CPU code are off. The
  programs are the same (XLA's own HLO passes all run, float semantics unchanged); they compile
  about 40% faster and the tests' tiny arrays do not notice the slower code. Set your own
  `--xla_backend_optimization_level` in XLA_FLAGS to test at another level.
* One XLA compilation cache for the session (`JAX_COMPILATION_CACHE_DIR`, a fresh temporary
  folder unless given): the pytest workers and the launch.py runs the tests start share what
  they compiled, and nothing is written to the user's own cache (~/.cache/vlprobe_jax/xla).

Subprocesses inherit both through the environment; `tests/helpers.forced_devices_env` keeps the
flag when a test forces a number of CPU devices.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_backend_optimization_level=0").strip()
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  # Made by the first process that loads this file (pytest itself, before its workers start);
  # the workers inherit the variable and so the folder.
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="vlprobe-test-xla-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position (after the settings)
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture
def full_float32_matmuls():
  """Golden parity is about a port's math: on GPUs the default float32 matmul is TF32-like
  (H200: scores 0.004 points off the golden ones; 1e-5 points at "highest"), so compare at full
  precision. A no-op on CPU. Test modules opt in with `pytest.mark.usefixtures`."""
  with jax.default_matmul_precision("highest"):
    yield
