"""Runs a vlprobe-jax experiment: flags -> config -> stages.

  python launch.py --config=configs/scst_lxmert.py            # the main job (synthetic world)
  python launch.py --config=configs/xe_fc.py:runlocal         # a seconds-long smoke run
  python launch.py --config=configs/scst_clip.py --config.scst.lr=1e-5 --config.workdir=/tmp/w
  python launch.py --config=configs/analysis.py:runs=workdir/scst_lxmert,workdir/scst_clip

Every config file's docstring says what it produces and how long it takes. Any config field can be
overridden with --config.<field>=<value>; unknown fields are an error.
"""

from __future__ import annotations

import json
import logging
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/scst_lxmert.py[:arg=value,...].",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Overrides config.workdir.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Call jax.distributed.initialize() first (Cloud TPU pod slices, "
    "multi-node GPU); each process then reads its own shard of the data.")


def main(argv):
  del argv
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=configs/scst_lxmert.py")
  logging.getLogger("absl").setLevel(logging.WARNING)
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU" notices
  import jax  # pylint: disable=g-import-not-at-top

  if _MULTIHOST.value or _CONFIG.value.get("multihost"):
    jax.distributed.initialize()
  config = _CONFIG.value
  if _WORKDIR.value:
    with config.unlocked():
      config.workdir = _WORKDIR.value
  print(f"[launch] devices: {jax.device_count()} x {jax.devices()[0].platform} "
        f"(process {jax.process_index()} of {jax.process_count()}); "
        f"workdir {config.get('workdir') or config.get('out_dir') or '-'}", flush=True)
  if "runs" in config and "captions" in config:  # configs/analysis.py
    from vlprobe_jax import reporting  # pylint: disable=g-import-not-at-top
    summary = reporting.run_standalone(config)
  elif config.get("entry") == "bench_reward":
    from vlprobe_jax import bench  # pylint: disable=g-import-not-at-top
    summary = bench.run(config)
  else:
    from vlprobe_jax import stages  # pylint: disable=g-import-not-at-top
    summary = stages.run(config)
  print("[launch] done: " + json.dumps(summary, default=str)[:2000], flush=True)


if __name__ == "__main__":
  sys.exit(app.run(main))
