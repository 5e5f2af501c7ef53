"""A workdir remembers the config it was run with.

`<workdir>/config.json` holds the config the run's results come from. Rerunning the workdir with
a config that differs in a field that affects results (a learning rate, a seed, a batch size,
the data) is refused with every such field listed as old -> new, because the finished and
resumed stages would silently mix two experiments. `accept_config_change=True` continues with the
change: config.json then holds the new config and `config_history.jsonl` one line per accepted
change (time and fields, old -> new), so the record is a history, not an overwrite. Fields that
do not affect results (`FREE_FIELDS`: logging and checkpoint cadence, output paths, which stages
run, which scorers score the test captions) change freely. Only process 0 writes.
"""

from __future__ import annotations

import fnmatch
import json
import os
import time
from typing import Any

import jax

from vlprobe_jax import checkpoints

# Dotted field names (fnmatch patterns) whose value does not change what the stages compute.
FREE_FIELDS = (
    "workdir", "stages", "scorers", "multihost", "trust_pickle", "accept_config_change",
    "*.log_every_steps", "*.checkpoint_every_steps", "*.keep_checkpoints",
    "eval.batch_size", "eval.meteor", "eval.spice_dir", "data.cache_dir", "analysis.*",
)


class ConfigChanged(ValueError):
  """The workdir's results come from a different config."""


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f"{prefix}{key}."))
    return out
  return {prefix[:-1]: tree}


def _is_free(field: str) -> bool:
  return any(fnmatch.fnmatchcase(field, pattern) for pattern in FREE_FIELDS)


def changes(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
  """Fields present in both configs whose values differ and that affect results."""
  flat_old, flat_new = _flatten(old), _flatten(new)
  return {field: (flat_old[field], flat_new[field]) for field in sorted(flat_old)
          if field in flat_new and not _is_free(field) and flat_old[field] != flat_new[field]}


def _jsonable(config) -> dict:
  return json.loads(json.dumps(config.to_dict(), sort_keys=True, default=str))


def check_and_record(config, workdir: str) -> None:
  """Refuses a changed config (see the module docstring), else records it in `workdir`.

  Raises:
    ConfigChanged: fields that affect results differ from the recorded config and
      `config.accept_config_change` is not set.
  """
  path = os.path.join(workdir, "config.json")
  new = _jsonable(config)
  changed = {}
  if os.path.exists(path):
    changed = changes(checkpoints.read_json(path), new)
    if changed and not config.get("accept_config_change", False):
      listed = "; ".join(f"{field}: {old!r} -> {value!r}" for field, (old, value) in
                         changed.items())
      raise ConfigChanged(
          f"{workdir} holds results of another config; changed: {listed}. Use another workdir "
          "(--config.workdir=...), or continue this one with the change (recorded in "
          "config_history.jsonl) with --config.accept_config_change=True.")
  if jax.process_index() != 0:
    return
  if changed:
    entry = {"time": time.strftime("%Y-%m-%d %H:%M:%S"),
             "changes": {field: {"old": old, "new": value}
                         for field, (old, value) in changed.items()}}
    with open(os.path.join(workdir, "config_history.jsonl"), "a", encoding="utf-8") as f:
      f.write(json.dumps(entry, default=str) + "\n")
    print(f"[launch] continuing {workdir} with a changed config: "
          + "; ".join(f"{f} {o!r} -> {n!r}" for f, (o, n) in changed.items()), flush=True)
  checkpoints.write_json_atomic(path, new)
