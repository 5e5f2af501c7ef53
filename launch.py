"""Runs a vlprobe-jax experiment: flags -> config -> validate -> the config's entry point.

  python launch.py --config=configs/scst_lxmert.py            # the main job (synthetic world)
  python launch.py --config=configs/xe_fc.py:runlocal         # a seconds-long smoke run
  python launch.py --config=configs/scst.py:scorer=clip --config.scst.lr=1e-5 --workdir=/tmp/w
  python launch.py --config=configs/analysis.py:runs=workdir/scst_lxmert,workdir/scst_clip
  python launch.py --config=configs/scst_lxmert.py --show_config   # every field and its value
  python launch.py --config=configs/scst_lxmert.py --multihost   # every host of a TPU pod slice
  python launch.py --config=configs/scst_lxmert.py --multihost \
      --coordinator_address=10.0.0.2:8476 --num_processes=2 --process_id=0  # elsewhere: ids 0..N-1

Every config file's docstring says what it produces and how long it takes. Any field can be
overridden with --config.<field>=<value>; --show_config lists the fields. Unknown fields and bad
values are refused before anything runs, one line each.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/scst_lxmert.py[:arg=value,...]. "
    "Override any field with --config.<field>=<value>; --show_config lists the fields.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Overrides config.workdir.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Call jax.distributed.initialize() first (Cloud TPU pod slices, "
    "multi-node GPU); each process then reads its own shard of the data. On Cloud TPU the "
    "coordinator, process count and id are found by themselves; elsewhere give the three flags "
    "below (the same address and count on every process, a different id on each).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "With --multihost: host:port of process 0 (e.g. 10.0.0.2:8476).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "With --multihost: how many processes take part.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                   "With --multihost: this process's index, 0 .. num_processes-1.")
_CPU_COLLECTIVES = flags.DEFINE_enum(
    "cpu_collectives", "gloo", ["gloo", "mpi", "none"],
    "With --multihost: the cross-process collectives of the CPU backend (JAX's default, none, "
    "cannot reduce across processes; GPUs and TPUs use their own).")
_LOG_ALL_PROCESSES = flags.DEFINE_bool(
    "log_all_processes", False, "With several processes, let every process print its progress "
    "lines (by default only process 0 prints after the first line; errors always show).")
_SHOW_CONFIG = flags.DEFINE_bool(
    "show_config", False, "Print every field of the config (after overrides) and exit.")

# Entry point name (config.entry) -> "module:function", imported only when chosen.
ENTRY_POINTS = {
    "stages": "vlprobe_jax.stages:run",
    "analysis": "vlprobe_jax.reporting:run_standalone",
    "bench_reward": "vlprobe_jax.bench.run:run",
    "rehearsal": "vlprobe_jax.bench.rehearsal:run",
}


def _fail(message: str, code: int = 2):
  print(f"launch.py: error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with a one-line message for a bad config file or field override."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is not None and not os.path.isfile(spec.split(":")[0]):
    _fail(f"config file {spec.split(':')[0]!r} not found; the configs are in configs/ "
          "(e.g. --config=configs/scst_lxmert.py).")
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    # config_flags puts the config file's traceback into the message; its last error line says it.
    lines = str(error).strip().splitlines() or [type(error).__name__]
    said = [line for line in lines if re.match(r"^\w*(Error|Exception): ", line)]
    _fail(f"{(said or lines)[-1]} (run `python launch.py --help` for the flags)")
  except Exception as error:  # pylint: disable=broad-except (config_flags raises many kinds)
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    loaded = _config_without_overrides(argv)
    for argument in overrides:
      field = argument[len("--config."):].partition("=")[0]
      if loaded is not None and not _has_field(loaded, field):
        parent, _, _ = field.rpartition(".")
        node = _field(loaded, parent) if parent else loaded
        known = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "(not a block)"
        _fail(f"{argument}: the config has no field {field!r}. Fields of "
              f"{parent or 'the config'}: {known}. (--show_config lists every field.)")
    _fail(f"could not read the config ({type(error).__name__}: {error}).")
  raise AssertionError("unreachable")


def _config_without_overrides(argv: list[str]):
  """The config file of `--config=...` as it is before the overrides, or None."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None:
    return None
  try:
    from ml_collections.config_flags import config_flags as loader  # pylint: disable=g-import-not-at-top
    return loader.ConfigFileFlagParser(name="config").parse(spec)
  except Exception:  # pylint: disable=broad-except (the file itself is broken: reported as is)
    return None


def _field(config, dotted: str):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def _has_field(config, dotted: str) -> bool:
  try:
    _field(config, dotted)
    return True
  except (KeyError, AttributeError, TypeError):
    return False


def _quiet_libraries() -> None:
  """Progress lines only: no absl/orbax INFO lines, no transformers notice about PyTorch."""
  os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
  os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING)
  for name in ("absl", "jax._src.xla_bridge", "orbax", "transformers"):
    logging.getLogger(name).setLevel(logging.WARNING if name == "absl" else logging.ERROR)
  # orbax warns through absl when its background finalisation of the previous save is still
  # running (seen on a busy machine); the run waits for every save anyway (checkpoints.py).
  logging.getLogger("absl").addFilter(
      lambda record: "Waiting for previous save to complete" not in record.getMessage())


def _use_compilation_cache(jax) -> None:
  """Compiled steps are kept on disk, so a rerun (a resume, another stage, a smoke run) skips
  XLA compilation: JAX_COMPILATION_CACHE_DIR, default ~/.cache/vlprobe_jax/xla."""
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir",
                      os.path.join(os.path.expanduser("~"), ".cache", "vlprobe_jax", "xla"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _user_errors() -> tuple[type[BaseException], ...]:
  """Errors that describe a problem with the input, shown without a traceback."""
  from scorers import checkpoint_files, common  # pylint: disable=g-import-not-at-top
  from vlprobe_jax import checkpoints, run_record, training  # pylint: disable=g-import-not-at-top
  from vlprobe_jax.data import features  # pylint: disable=g-import-not-at-top
  return (run_record.ConfigChanged, training.NonFiniteError, checkpoints.CheckpointSaveError,
          checkpoints.NoUsableCheckpoint, checkpoints.IncompatibleCheckpoint,
          checkpoint_files.CheckpointFileError, common.CheckpointMismatch,
          common.NonFiniteWeights, features.FeatureError, FileNotFoundError)


def _initialize_distributed(jax) -> None:
  """jax.distributed.initialize() with the flags given; the CPU backend gets real collectives."""
  if _CPU_COLLECTIVES.value != "none":
    jax.config.update("jax_cpu_collectives_implementation", _CPU_COLLECTIVES.value)
  given = {"coordinator_address": _COORDINATOR.value, "num_processes": _NUM_PROCESSES.value,
           "process_id": _PROCESS_ID.value}
  jax.distributed.initialize(**{k: v for k, v in given.items() if v is not None})


def main(argv):
  del argv
  if _CONFIG.value is None:
    _fail("--config is required, e.g. --config=configs/scst_lxmert.py")
  _quiet_libraries()
  import jax  # pylint: disable=g-import-not-at-top

  _use_compilation_cache(jax)

  config = _CONFIG.value
  given = [f"--{flag.name}" for flag in (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID)
           if flag.value is not None]
  if given and not (_MULTIHOST.value or config.get("multihost")):
    _fail(f"{', '.join(given)} only mean something with --multihost; add it.")
  if _MULTIHOST.value or config.get("multihost"):
    _initialize_distributed(jax)
  if _WORKDIR.value:
    with config.unlocked():
      config.workdir = _WORKDIR.value
  from vlprobe_jax import validation  # pylint: disable=g-import-not-at-top
  try:
    validation.validate(config)
  except validation.ConfigError as error:
    _fail("the config is not usable:\n  " + str(error).replace("\n", "\n  "))
  if _SHOW_CONFIG.value:
    print(config)
    return 0
  module_name, function_name = ENTRY_POINTS[config.entry].split(":")
  out_dir = config.get("workdir") or config.get("out_dir") or "-"
  print(f"[launch] devices: {jax.device_count()} x {jax.devices()[0].platform} "
        f"(process {jax.process_index()} of {jax.process_count()}); {config.entry} in {out_dir}",
        flush=True)
  if jax.process_index() > 0 and not _LOG_ALL_PROCESSES.value:
    # One progress stream per run: process 0 prints, the others keep only stderr (errors).
    sys.stdout = open(os.devnull, "w", encoding="utf-8")  # pylint: disable=consider-using-with
  started = time.time()
  try:
    entry = getattr(__import__(module_name, fromlist=[function_name]), function_name)
    summary = entry(config)
  except _user_errors() as error:
    _fail(str(error), code=1)
  _report(summary, time.time() - started)
  return 0


def _report(summary: dict, seconds: float) -> None:
  """One line; the full summary goes to `summary.json` beside the outputs (process 0)."""
  import jax  # pylint: disable=g-import-not-at-top

  path = summary.get("summary_path")
  where = summary.get("workdir") or summary.get("out_dir")
  if path is None and where and jax.process_index() == 0:
    path = os.path.join(where, "summary.json")
    os.makedirs(where, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
      json.dump(summary, f, indent=2, default=str)
  headline = summary.get("headline", "")
  print(f"[launch] done in {seconds:.0f} s{'; ' + headline if headline else ''}"
        f"{'; summary: ' + path if path else ''}", flush=True)


if __name__ == "__main__":
  sys.exit(app.run(main, flags_parser=_parse_flags))
