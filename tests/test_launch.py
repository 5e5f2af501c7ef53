"""launch.py, the configs and `validate`: bad input is refused in one line before anything runs,
every config builds and names its entry point, the aliases equal configs/scst.py, and the
training path never imports torch."""

import glob
import os
import subprocess
import sys

import pytest

import scorers
from configs import common
from configs import scst as scst_config
from vlprobe_jax import validation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.splitext(os.path.basename(p))[0]
                 for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                 if not p.endswith(("__init__.py", "common.py")))


def _launch(*args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "launch.py", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_unknown_config_field_is_one_line_naming_the_field():
  result = _launch("--config=configs/xe_fc.py:runlocal", "--config.xe.bogus=1")
  assert result.returncode == 2
  assert "Traceback" not in result.stderr, result.stderr
  (line,) = [l for l in result.stderr.splitlines() if l.strip()]
  assert "--config.xe.bogus=1" in line and "no field 'xe.bogus'" in line and "lr" in line


def test_bad_values_are_refused_before_anything_runs(tmp_path):
  result = _launch("--config=configs/scst_lxmert.py:runlocal", f"--workdir={tmp_path}",
                   "--config.scst.baseline=median", "--config.xe.images_per_batch=0")
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert "config.scst.baseline='median': expected one of 'greedy', 'mean'" in result.stderr
  assert "config.xe.images_per_batch=0: expected an integer >= 1" in result.stderr
  assert not os.listdir(tmp_path)  # Refused before the workdir was touched.


@pytest.mark.parametrize("overrides, message", [
    ({"scst.baseline": "median"}, "config.scst.baseline='median': expected one of"),
    ({"xe.images_per_batch": -4}, "config.xe.images_per_batch=-4: expected an integer >= 1"),
    ({"xe.images_per_batch": 0}, "config.xe.images_per_batch=0: expected an integer >= 1"),
    ({"xe.images_per_batch": 5000}, "at most the 60 training images"),
    ({"scst.num_samples": 1}, "config.scst.num_samples=1: the mean baseline"),
    ({"scst.temperature": 0.0}, "config.scst.temperature=0.0: expected a number > 0"),
    ({"scst.lr": float("nan")}, "config.scst.lr=nan: expected a number > 0"),
    ({"stages": ("data", "tarin")}, "unknown 'tarin'; expected names from data, scorers"),
    ({"scorers": ("lxmert", "flava")}, "unknown 'flava'"),
    ({"scst.scorer": "flava"}, "config.scst.scorer='flava': expected one of"),
    ({"eval.method": "sample"}, "config.eval.method='sample': expected one of 'greedy', 'beam'"),
    ({"xe.init_from": "/no/such/dir"}, "config.xe.init_from='/no/such/dir': the XE stage"),
])
def test_validate_names_field_value_and_what_is_allowed(overrides, message):
  config = scst_config.get_config("runlocal")
  with config.unlocked():
    for field, value in overrides.items():
      *parents, leaf = field.split(".")
      node = config
      for name in parents:
        node = node[name]
      node[leaf] = value
  with pytest.raises(validation.ConfigError) as error:
    validation.validate(config)
  assert message in str(error.value)
  assert len(str(error.value).splitlines()) == 1, str(error.value)


def test_greedy_baseline_allows_one_sample_and_names_are_normalised():
  config = scst_config.get_config("runlocal")
  config.scst.baseline, config.scst.num_samples = "greedy", 1
  config.stages = ("xe,eval",)  # How `--config.stages=xe,eval` arrives.
  assert validation.validate(config).stages == ("xe", "eval")


def test_coco_data_paths_are_checked(tmp_path):
  config = scst_config.get_config("data=coco")
  with pytest.raises(validation.ConfigError) as error:
    validation.validate(config)
  assert "config.data.karpathy_json=''" in str(error.value)
  assert "config.data.fc_store=''" in str(error.value)
  config.data.karpathy_json, config.data.fc_store = str(tmp_path / "none.json"), str(tmp_path)
  with pytest.raises(validation.ConfigError, match="none.json.*does not exist"):
    validation.validate(config)


def test_unknown_config_argument_lists_known_ones():
  with pytest.raises(ValueError, match=r"Unknown config argument 'dataset'.*Known arguments: "
                                       r"data, runlocal"):
    common.parse_arg("dataset=coco", data="synthetic", runlocal=False)
  with pytest.raises(ValueError, match="expected a bool"):
    common.parse_arg("runlocal=maybe", data="synthetic", runlocal=False)
  with pytest.raises(ValueError, match="known scorers: blip_itm, clip"):
    scst_config.get_config("scorer=flava")


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_builds_validates_and_names_its_entry(name):
  module = __import__(f"configs.{name}", fromlist=["get_config"])
  assert module.__doc__ and "launch.py" in module.__doc__, f"{name}: docstring needs the command"
  config = module.get_config()
  assert config.entry in validation.ENTRY_POINTS
  if config.entry != "analysis":  # The analysis needs finished runs to point at.
    validation.validate(config)


@pytest.mark.parametrize("scorer", scorers.names())
def test_scst_aliases_equal_the_parametrised_config(scorer):
  alias = __import__(f"configs.scst_{scorer}", fromlist=["get_config"])
  for arg in (None, "runlocal", "data=coco,cross_score"):
    assert alias.get_config(arg) == scst_config.get_config(f"scorer={scorer}," + (arg or ""))


def test_coco_scst_samples_up_to_twenty_words():
  # self-critical.pytorch `opts.py`: --max_length default 20 is the model's seq_length, which
  # `configs/fc_rl.yml` does not change (only prepro cuts the XE labels at 16).
  config = scst_config.get_config("data=coco")
  assert config.scst.max_length == 20 and config.data.max_length == 16
  assert scst_config.get_config(None).scst.max_length == 16  # The synthetic world's captions.


def test_help_says_how_to_list_the_fields():
  result = _launch("--help", timeout=120)
  assert "--config" in result.stdout and "multihost" in result.stdout
  assert "--show_config" in result.stdout


def test_show_config_lists_fields_and_runs_nothing(tmp_path):
  result = _launch("--config=configs/scst.py:scorer=clip,runlocal", f"--workdir={tmp_path}",
                   "--show_config", "--config.scst.lr=0.001", timeout=120)
  assert result.returncode == 0, result.stderr
  assert "scorer: clip" in result.stdout and "lr: 0.001" in result.stdout
  assert not os.listdir(tmp_path)


def test_training_path_never_imports_torch():
  code = ("import sys, launch, scorers\n"
          "from vlprobe_jax import stages, xe, scst, scoring, scorer_pretrain, reporting\n"
          "for name in scorers.names():\n"
          "  spec = scorers.get(name); spec.tokenizer(spec.tiny_config())\n"
          "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)\n"
          "print('ok')")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]
