"""Orbax checkpoints of a stage: the latest few (for resume) and the best (by a validation score).

Layout under a stage directory (e.g. `<workdir>/xe/`):
  checkpoints/latest/<step>/   the last `keep` saved states, for resuming an interrupted run;
  checkpoints/best/<step>/     the state with the best validation score so far;
  checkpoints/best_score.json  that score and its step;
  checkpoints/meta.json        what the checkpoints are of (model sizes, vocabulary size), checked
                               on open so an incompatible workdir fails with a clear message.
Orbax writes each step to a temporary directory and renames it when complete, so a run killed
mid-save never leaves a half-written checkpoint that a resume would pick up. A save is waited for
and a failed one stops the run at once (`CheckpointSaveError`, with the free disk space). A
latest checkpoint that cannot be read (a file deleted or cut short) is reported in one line,
moved aside as `<step>.damaged`, and the one before it is used.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

_log = logging.getLogger(__name__)


class IncompatibleCheckpoint(ValueError):
  """The workdir holds checkpoints of a different model or vocabulary."""


class CheckpointSaveError(RuntimeError):
  """A checkpoint could not be written (disk full, no permission, ...)."""


class NoUsableCheckpoint(RuntimeError):
  """Every checkpoint of a kind is damaged."""


def write_json_atomic(path: str, payload: Any) -> None:
  """Writes JSON to `path` through a temporary file and a rename (never half-written)."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(payload, f, indent=2, sort_keys=True, default=str)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def read_json(path: str) -> Any:
  """JSON from `path`; a damaged file is reported naming it."""
  with open(path, encoding="utf-8") as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as error:
      raise ValueError(f"{path} is not valid JSON ({error}); it was damaged. Delete it to let "
                       "the run rewrite it.") from error


def free_space(path: str) -> str:
  """'12.3 GiB free on <mount of path>' for messages about failed writes."""
  probe = path
  while probe and not os.path.exists(probe):
    probe = os.path.dirname(probe)
  try:
    usage = shutil.disk_usage(probe or ".")
  except OSError:
    return "free space unknown"
  return f"{usage.free / 2**30:.1f} GiB free of {usage.total / 2**30:.1f} GiB"


class StageCheckpoints:
  """Latest + best checkpoints of one training stage.

  Args:
    directory: the stage's checkpoint directory (created if missing).
    meta: a JSON-able description of what is saved (model sizes, vocab size); compared with the
      stored one on open.
    keep: how many latest checkpoints to keep (the best is kept besides them).
  """

  def __init__(self, directory: str, meta: dict[str, Any], keep: int = 2):
    self.directory = os.path.abspath(directory)
    os.makedirs(self.directory, exist_ok=True)
    self._check_meta(meta)
    self.latest = ocp.CheckpointManager(
        os.path.join(self.directory, "latest"),
        options=ocp.CheckpointManagerOptions(max_to_keep=max(1, keep), create=True))
    self.best = ocp.CheckpointManager(
        os.path.join(self.directory, "best"),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))
    self._best_path = os.path.join(self.directory, "best_score.json")
    # The best so far, read once here (before this run writes anything) and then kept in memory:
    # with several processes only process 0 writes the file, and another process reading it
    # back could see the previous value and take a different branch (then orbax waits forever
    # for a save that process never starts).
    self._best = read_json(self._best_path) if os.path.exists(self._best_path) else None

  def _check_meta(self, meta: dict[str, Any]) -> None:
    path = os.path.join(self.directory, "meta.json")
    meta = json.loads(json.dumps(meta, sort_keys=True, default=str))
    if os.path.exists(path):
      stored = read_json(path)
      if stored != meta:
        differences = sorted(k for k in set(stored) | set(meta) if stored.get(k) != meta.get(k))
        details = "; ".join(f"{k}: checkpoint has {stored.get(k)!r}, config has {meta.get(k)!r}"
                            for k in differences)
        raise IncompatibleCheckpoint(
            f"The checkpoints in {self.directory} were written for a different model: {details}. "
            "Use another workdir (--config.workdir=...), or delete that directory to start over.")
    elif jax.process_index() == 0:
      write_json_atomic(path, meta)

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def _save(self, manager: ocp.CheckpointManager, step: int, state: Any, kind: str) -> None:
    """Saves and waits; any failure stops the run with the path and the cause."""
    try:
      manager.save(step, args=ocp.args.StandardSave(state), force=True)
      manager.wait_until_finished()
    except Exception as error:  # orbax raises ValueError, OSError, RuntimeError, ...
      where = os.path.join(str(manager.directory), str(step))
      cause = str(error).splitlines()[0] if str(error) else type(error).__name__
      if len(cause) > 320:  # orbax nests the OS error (the useful part) at the end.
        cause = f"{cause[:120]} ... {cause[-180:]}"
      raise CheckpointSaveError(
          f"Could not save the {kind} checkpoint of step {step} to {where}: {cause} "
          f"({free_space(where)}). The run stopped so that no progress is lost silently; free "
          "space or fix the path, then rerun the same command: it resumes from the last good "
          "checkpoint.") from error

  def save_latest(self, step: int, state: Any) -> None:
    self._save(self.latest, step, state, "latest")

  def restore_latest(self, target: Any) -> Any:
    """The newest readable latest checkpoint; damaged ones are reported and moved aside."""
    return self._restore_newest(self.latest, target, "latest")

  def _restore_newest(self, manager: ocp.CheckpointManager, target: Any, kind: str) -> Any:
    abstract = _abstract(target)
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        return manager.restore(step, args=ocp.args.StandardRestore(abstract))
      except Exception as error:  # A damaged checkpoint fails in many ways inside orbax.
        path = os.path.join(str(manager.directory), str(step))
        cause = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
        print(f"[checkpoints] the {kind} checkpoint {path} is damaged ({cause}); moved aside to "
              f"{path}.damaged, trying the one before it", flush=True)
        if jax.process_index() == 0:
          os.replace(path, f"{path}.damaged")
        manager.reload()
    raise NoUsableCheckpoint(f"No readable {kind} checkpoint in {manager.directory}: every one "
                             "is damaged. Delete that directory to start the stage over.")

  def best_score(self) -> float | None:
    return None if self._best is None else self._best["score"]

  def best_step(self) -> int | None:
    return None if self._best is None else self._best["step"]

  def maybe_save_best(self, step: int, state: Any, score: float, higher_is_better=True) -> bool:
    """Saves `state` as the best if `score` beats the best so far; returns whether it did.

    With several processes, process 0's decision is the one every process follows (they all
    evaluate the same params, but a save is a collective that must not depend on rounding).
    """
    best = self.best_score()
    improved = best is None or (score > best if higher_is_better else score < best)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      improved = bool(multihost_utils.broadcast_one_to_all(np.int32(improved)))
    if not improved:
      return False
    self._save(self.best, step, state, "best")
    self._best = {"score": float(score), "step": int(step)}
    if jax.process_index() == 0:
      write_json_atomic(self._best_path, self._best)
    return True

  def has_best(self) -> bool:
    return self.best.latest_step() is not None

  def restore_best(self, target: Any) -> Any:
    if self.best.latest_step() is None:
      raise FileNotFoundError(f"No best checkpoint in {self.directory}/best; the stage has not "
                              "finished an evaluation yet.")
    return self._restore_newest(self.best, target, "best")

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self.latest.close()
    self.best.close()


def _abstract(target: Any) -> Any:
  return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
