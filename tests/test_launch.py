"""launch.py and the configs: bad input gives a clear message, and every config builds."""

import glob
import os
import subprocess
import sys

import pytest

from configs import common
from vlprobe_jax import stages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(*args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "launch.py", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_unknown_config_field_is_an_error():
  result = _launch("--config=configs/xe_fc.py:runlocal", "--config.xe.learning_rate=1e-3")
  assert result.returncode != 0
  assert "learning_rate" in result.stderr


def test_unknown_config_argument_lists_known_ones():
  with pytest.raises(ValueError, match=r"Unknown config argument 'dataset'.*Known arguments: "
                                       r"data, runlocal"):
    common.parse_arg("dataset=coco", data="synthetic", runlocal=False)
  with pytest.raises(ValueError, match="expected a bool"):
    common.parse_arg("runlocal=maybe", data="synthetic", runlocal=False)


def test_missing_data_path_names_the_field(tmp_path):
  result = _launch("--config=configs/xe_fc.py:data=coco", f"--workdir={tmp_path}")
  assert result.returncode != 0
  assert "config.data.fc_store is empty" in result.stderr


def test_unknown_stage_is_reported():
  with pytest.raises(ValueError, match="unknown stage.*'tarin'.*known stages"):
    stages.parse_stages("data,tarin")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))))
def test_every_config_builds_with_a_docstring(path):
  name = os.path.splitext(os.path.basename(path))[0]
  if name in ("__init__", "common"):
    return
  module = __import__(f"configs.{name}", fromlist=["get_config"])
  assert module.__doc__ and "launch.py" in module.__doc__, f"{name}: docstring needs the command"
  config = module.get_config(None)
  assert config is not None


def test_help_lists_the_flags():
  result = _launch("--help", timeout=120)
  assert "--config" in result.stdout and "multihost" in result.stdout
