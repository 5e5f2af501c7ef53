"""Orbax checkpoints of a stage: the latest (for resume) and the best (by a validation metric).

Layout under a stage directory (e.g. `<workdir>/xe/`):
  checkpoints/latest/<step>/   the last saved state, for resuming an interrupted run;
  checkpoints/best/<step>/     the state with the best validation score so far;
  checkpoints/meta.json        what the checkpoints are of (model sizes, vocabulary size), checked
                               on restore so an incompatible workdir fails with a clear message.
Orbax writes each step to a temporary directory and renames it when complete, so a run killed
mid-save never leaves a half-written checkpoint that a resume would pick up.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class IncompatibleCheckpoint(ValueError):
  """The workdir holds checkpoints of a different model or vocabulary."""


def write_json_atomic(path: str, payload: Any) -> None:
  """Writes JSON to `path` through a temporary file and a rename (never half-written)."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True, default=str)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


class StageCheckpoints:
  """Latest + best checkpoints of one training stage.

  Args:
    directory: the stage's checkpoint directory (created if missing).
    meta: a JSON-able description of what is saved (model sizes, vocab size); compared with the
      stored one on open.
  """

  def __init__(self, directory: str, meta: dict[str, Any]):
    self.directory = os.path.abspath(directory)
    os.makedirs(self.directory, exist_ok=True)
    self._check_meta(meta)
    options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
    self.latest = ocp.CheckpointManager(os.path.join(self.directory, "latest"), options=options)
    self.best = ocp.CheckpointManager(os.path.join(self.directory, "best"), options=options)
    self._best_path = os.path.join(self.directory, "best_score.json")

  def _check_meta(self, meta: dict[str, Any]) -> None:
    path = os.path.join(self.directory, "meta.json")
    meta = json.loads(json.dumps(meta, sort_keys=True, default=str))
    if os.path.exists(path):
      with open(path) as f:
        stored = json.load(f)
      if stored != meta:
        differences = sorted(k for k in set(stored) | set(meta) if stored.get(k) != meta.get(k))
        details = "; ".join(f"{k}: checkpoint has {stored.get(k)!r}, config has {meta.get(k)!r}"
                            for k in differences)
        raise IncompatibleCheckpoint(
            f"The checkpoints in {self.directory} were written for a different model: {details}. "
            "Use another workdir (--config.workdir=...), or delete that directory to start over.")
    else:
      write_json_atomic(path, meta)

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def save_latest(self, step: int, state: Any) -> None:
    self.latest.save(step, args=ocp.args.StandardSave(state))

  def restore_latest(self, target: Any) -> Any:
    step = self.latest.latest_step()
    return self.latest.restore(step, args=ocp.args.StandardRestore(_abstract(target)))

  def best_score(self) -> float | None:
    if not os.path.exists(self._best_path):
      return None
    with open(self._best_path) as f:
      return json.load(f)["score"]

  def maybe_save_best(self, step: int, state: Any, score: float, higher_is_better=True) -> bool:
    """Saves `state` as the best if `score` beats the best so far; returns whether it did."""
    best = self.best_score()
    if best is not None and (score <= best if higher_is_better else score >= best):
      return False
    self.best.save(step, args=ocp.args.StandardSave(state), force=True)
    self.best.wait_until_finished()
    write_json_atomic(self._best_path, {"score": float(score), "step": int(step)})
    return True

  def has_best(self) -> bool:
    return self.best.latest_step() is not None

  def restore_best(self, target: Any) -> Any:
    step = self.best.latest_step()
    if step is None:
      raise FileNotFoundError(f"No best checkpoint in {self.directory}/best; the stage has not "
                              "finished an evaluation yet.")
    return self.best.restore(step, args=ocp.args.StandardRestore(_abstract(target)))

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self.latest.close()
    self.best.close()


def _abstract(target: Any) -> Any:
  return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
