"""The one training loop: resume, steps, logging, periodic eval, checkpoints, progress.

XE (`xe.py`), SCST (`scst.py`) and scorer pretraining (`scorer_pretrain.py`) each describe
themselves as a `Task` (their state, batches, pure step and eval) and call `train(task)`, which
  * resumes from the stage's latest checkpoint (else the task's initial state), or says the
    stage is finished and returns its result when it is;
  * runs the steps, feeding each the prefetched batch of its global step;
  * every `log_every_steps` fetches the step's measurements (the only host sync), writes them
    to metrics.jsonl / TensorBoard and prints a progress line with the ETA;
  * every `eval_every_steps` evaluates, keeps the best checkpoint by the eval score;
  * every `checkpoint_every_steps` saves the latest checkpoint;
  * stops the run if any measurement became NaN or Inf: the step that did it is tracked on the
    device (`_first_nonfinite`, no extra host sync per step) and checked before every log,
    eval and save, so a non-finite state is never saved.
Only process 0 writes logs and prints; every process takes part in checkpoint saves.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from vlprobe_jax import checkpoints
from vlprobe_jax import devices as devices_lib
from vlprobe_jax import progress as progress_lib
from vlprobe_jax.data import pipeline

AXIS = devices_lib.PMAP_AXIS  # The pmap axis of the captioner steps.


class TrainState(train_state.TrainState):
  """Params + optimizer state + step (Flax's TrainState; no extra fields)."""


class NonFiniteError(RuntimeError):
  """A measurement of a training step became NaN or Inf."""


def make_optimizer(lr: float, grad_clip: float, decay_every_steps: int | None = None,
                   decay_rate: float = 1.0) -> optax.GradientTransformation:
  """The captioner's optimizer: clip by value, then Adam with an optional staircase decay."""
  if decay_every_steps:
    lr = optax.exponential_decay(lr, transition_steps=decay_every_steps, decay_rate=decay_rate,
                                 staircase=True)
  parts = [optax.clip(grad_clip)] if grad_clip else []
  return optax.chain(*parts, optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8))


@dataclasses.dataclass
class Evaluation:
  """One evaluation of a task: `score` picks the best checkpoint (higher is better)."""
  score: float
  scalars: dict[str, float]
  summary: str  # e.g. 'val CIDEr 1.237'
  example: str = ""  # e.g. one caption, shown after the summary


@dataclasses.dataclass
class StageResult:
  """What `train` returns: the best params (the final ones for tasks without eval)."""
  params: Any | None  # None when the run stopped early (max_steps_this_run)
  finished: bool
  best_score: float | None = None
  best_step: int | None = None


class Task(Protocol):
  """What a stage plugs into `train`. Steps are counted from 0; `done` = step + 1."""
  stage: str  # "xe": the eval and summary lines' label
  label: str  # "xe", "scst:lxmert": the progress lines' label
  stage_dir: str  # where checkpoints/, metrics.jsonl and tensorboard/ go
  total_steps: int
  log_every_steps: int
  eval_every_steps: int  # 0: no eval in the loop; the result is the final params
  checkpoint_every_steps: int
  keep_checkpoints: int  # how many latest checkpoints to keep (the best is kept besides)
  checkpoint_meta: dict  # what the checkpoints are of; checked on restore
  eval_name: str  # 'val CIDEr': what the eval score is, for the summary lines

  def initial_state(self) -> TrainState:
    """The host state a fresh run starts from (random init, or the stage it continues)."""

  def batches(self, start_step: int, stop_step: int) -> pipeline.BatchIterator:
    """The batches of steps start_step .. stop_step - 1, device-ready."""

  def place(self, state: TrainState) -> Any:
    """Host state -> the state the step takes (e.g. replicated over the devices)."""

  def fetch(self, placed: Any) -> Any:
    """The inverse of `place` for states and measurements: host numpy trees."""

  def train_step(self, placed: Any, batch: Any, step: int) -> tuple[Any, dict]:
    """One step: (placed state, measurements still on the device)."""

  def progress_values(self, scalars: dict[str, float], done: int) -> dict[str, float]:
    """The few numbers of a progress line; may add host scalars (e.g. the epoch) to `scalars`."""

  def evaluate(self, state: TrainState, done: int) -> Evaluation:
    """Evaluates the host state after `done` steps."""


@jax.jit
def _first_nonfinite(first: jax.Array, measurements: dict, step: jax.Array) -> jax.Array:
  """`step` if `first` < 0 and a measurement is NaN/Inf, else `first` (stays on the device)."""
  finite = jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(measurements)])
  return jnp.where((first < 0) & ~jnp.all(finite), step, first)


def _local(tree: Any) -> Any:
  """One device's copy of each leaf (measurements are equal on every device)."""
  return jax.tree_util.tree_map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array)
                                else x, tree)


def train(task: Task, *, max_steps_this_run: int | None = None) -> StageResult:
  """Runs (or resumes, or reports finished) `task`; see the module docstring.

  Args:
    task: the stage.
    max_steps_this_run: stop after this many steps (tests use it to simulate an interruption).

  Raises:
    NonFiniteError: a measurement became NaN or Inf; names the stage, the step, the quantity
      and the last good checkpoint.
  """
  is_main = jax.process_index() == 0
  ckpt = checkpoints.StageCheckpoints(os.path.join(task.stage_dir, "checkpoints"),
                                      task.checkpoint_meta, keep=task.keep_checkpoints)
  try:
    state = task.initial_state()
    if ckpt.latest_step() is not None:
      state = ckpt.restore_latest(state)
    start, total = int(state.step), task.total_steps
    if start >= total:
      return _finished(task, ckpt, state, is_main)
    if start and is_main:
      print(f"[{task.stage}] resuming at step {start}/{total} from {ckpt.directory}", flush=True)
    stop = total if max_steps_this_run is None else min(total, start + max_steps_this_run)
    state = _run_steps(task, ckpt, state, start, stop, is_main)
    if stop < total:
      return StageResult(params=None, finished=False)
    return _finished(task, ckpt, state, is_main, just_now=True)
  finally:
    ckpt.close()


def _run_steps(task: Task, ckpt: checkpoints.StageCheckpoints, state: TrainState, start: int,
               stop: int, is_main: bool) -> TrainState:
  """Steps start .. stop - 1; returns the host state after the last one."""
  placed = task.place(state)
  batches = task.batches(start, stop)
  writer = progress_lib.MetricWriter(task.stage_dir, resume_step=start, enabled=is_main)
  progress = progress_lib.Progress(task.label, task.total_steps, start, enabled=is_main)
  first_bad = jnp.asarray(-1, jnp.int32)
  measurements: dict = {}

  def check(done: int) -> None:
    bad = int(first_bad)
    if bad >= 0:
      _stop_nonfinite(task, ckpt, measurements, bad, done)

  try:
    for step, batch in zip(range(start, stop), batches):
      placed, measurements = task.train_step(placed, batch, step)
      first_bad = _first_nonfinite(first_bad, _local(measurements), jnp.asarray(step + 1))
      done, row = step + 1, {}  # One metrics row per step: train and eval scalars together.
      if done % task.log_every_steps == 0 or done == stop:
        check(done)
        row = {k: float(v) for k, v in task.fetch(measurements).items()}
        progress.report(done, task.progress_values(row, done))
      if task.eval_every_steps and (done % task.eval_every_steps == 0
                                    or done == task.total_steps):
        check(done)
        host = task.fetch(placed)
        evaluation = task.evaluate(host, done)
        row.update(evaluation.scalars)
        improved = ckpt.maybe_save_best(done, host.params, evaluation.score)
        if is_main:
          example = f' | e.g. "{evaluation.example}"' if evaluation.example else ""
          print(f"[{task.stage}] step {done}: {evaluation.summary}"
                f"{' (best so far)' if improved else ''}{example}", flush=True)
      if row:
        writer.write(done, row)
      if done % task.checkpoint_every_steps == 0 or done == stop:
        check(done)
        ckpt.save_latest(done, task.fetch(placed))
    return task.fetch(placed)
  finally:
    batches.close()
    writer.close()


def _stop_nonfinite(task: Task, ckpt: checkpoints.StageCheckpoints, measurements: dict,
                    bad_step: int, done: int) -> None:
  scalars = task.fetch(measurements)
  quantities = sorted(k for k, v in scalars.items() if not np.all(np.isfinite(v)))
  what = ", ".join(f"{k} = {float(scalars[k])}" for k in quantities) or "a measurement"
  ckpt.wait()
  last = ckpt.latest_step()
  where = (f"the last good checkpoint is step {last} in {ckpt.directory}" if last is not None
           else "no checkpoint was saved")
  raise NonFiniteError(
      f"[{task.stage}] stopped: a non-finite value at step {bad_step} (at step {done}: {what}); "
      f"{where}. Look for NaN or Inf in the inputs (feature stores), or lower the learning rate; "
      "the run resumes from that checkpoint when restarted.")


def _finished(task: Task, ckpt: checkpoints.StageCheckpoints, state: TrainState, is_main: bool,
              just_now: bool = False) -> StageResult:
  """The result of a finished stage: its best params (final params when it has no eval)."""
  total = task.total_steps
  if not task.eval_every_steps:
    params = state.params
    best_score = best_step = None
    summary = ""
  else:
    ckpt.wait()
    params = ckpt.restore_best(jax.tree_util.tree_map(np.asarray, state.params))
    best_score, best_step = ckpt.best_score(), ckpt.best_step()
    summary = f"; best {task.eval_name} {best_score:.3f} at step {best_step}"
  if is_main and not just_now:
    print(f"[{task.stage}] finished: {total}/{total} steps in {task.stage_dir}{summary}",
          flush=True)
  return StageResult(params=params, finished=True, best_score=best_score, best_step=best_step)
