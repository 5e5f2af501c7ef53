"""What a run reports as it goes: one-line progress with an ETA, and metrics to JSON lines and
TensorBoard (written by process 0 only)."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import numpy as np

from vlprobe_jax import tensorboard


class MetricWriter:
  """Scalars to `<dir>/metrics.jsonl` (one JSON object per write) and to TensorBoard.

  Args:
    directory: the stage directory.
    resume_step: the step a resumed run restarts from: rows of later steps (written after the
      last checkpoint, about to be replayed) are dropped, so every step has one row.
    enabled: False on processes other than 0; then nothing is written.
  """

  def __init__(self, directory: str, resume_step: int = 0, enabled: bool = True):
    self.enabled = enabled
    self._jsonl = self._tb = None
    if not enabled:
      return
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "metrics.jsonl")
    _drop_rows_after(path, resume_step)
    self._jsonl = open(path, "a", encoding="utf-8")
    self._tb = tensorboard.EventWriter(os.path.join(directory, "tensorboard"))

  def write(self, step: int, scalars: dict[str, Any]) -> None:
    if not self.enabled:
      return
    scalars = {k: float(np.asarray(v)) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
    self._jsonl.flush()
    self._tb.add_scalars(step, scalars)
    self._tb.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def _drop_rows_after(path: str, step: int) -> None:
  """Rewrites `path` (atomically) without the rows of steps after `step`."""
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  kept = [line for line in lines if line.strip() and _step_of(line) <= step]
  if len(kept) == len(lines):
    return
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(kept)
  os.replace(tmp, path)


def _step_of(line: str) -> int:
  try:
    return int(json.loads(line).get("step", 0))
  except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
    return 1 << 62  # A damaged (half-written) row: dropped with the replayed ones.


class Progress:
  """A one-line progress report: stage, step/total, steps/s, ETA and chosen measurements."""

  def __init__(self, stage: str, total_steps: int, first_step: int = 0, stream=None,
               enabled: bool = True):
    self.stage, self.total, self.enabled = stage, total_steps, enabled
    self._stream = stream or sys.stdout
    self._t0, self._s0 = time.time(), first_step

  def report(self, step: int, values: dict[str, float] | None = None) -> str:
    elapsed = max(time.time() - self._t0, 1e-9)
    rate = (step - self._s0) / elapsed
    remaining = (self.total - step) / rate if rate > 0 else float("nan")
    parts = [f"[{self.stage}] step {step}/{self.total}", f"{rate:.1f} steps/s",
             f"ETA {format_seconds(remaining)}"]
    parts += [f"{k} {float(v):.4g}" for k, v in (values or {}).items()]
    line = " | ".join(parts)
    if self.enabled:
      print(line, file=self._stream, flush=True)
    return line


def format_seconds(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  minutes, seconds = divmod(seconds, 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"
