"""What the XE and SCST loops share: batches, device placement, progress and metric writing."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger("vlprobe_jax")


def epoch_order(num_images: int, seed: int, epoch: int) -> np.ndarray:
  """The image order of one epoch: a permutation that depends only on (seed, epoch).

  Resuming at any step therefore continues with exactly the batches the run would have seen.
  """
  return np.random.default_rng([seed, epoch]).permutation(num_images)


def batch_indices(num_images: int, images_per_batch: int, seed: int, step: int,
                  process_index: int | None = None, process_count: int | None = None) -> np.ndarray:
  """This process's image indices of global step `step`.

  The global batch of `images_per_batch` images comes from an epoch permutation (whole batches;
  the remainder is dropped); on several hosts each process takes its own contiguous slice of it,
  so together they feed the global batch and the gradients (summed over all devices) are those
  of one big batch.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if images_per_batch % process_count:
    raise ValueError(f"images_per_batch={images_per_batch} does not split over {process_count} "
                     "processes; choose a multiple of the number of hosts.")
  steps_per_epoch = max(num_images // images_per_batch, 1)
  epoch, position = divmod(step, steps_per_epoch)
  order = epoch_order(num_images, seed, epoch)
  batch = order[position * images_per_batch:(position + 1) * images_per_batch]
  per_process = images_per_batch // process_count
  return batch[process_index * per_process:(process_index + 1) * per_process]


def steps_per_epoch(num_images: int, images_per_batch: int) -> int:
  return max(num_images // images_per_batch, 1)


def replicate(tree: Any, devices: list | None = None) -> Any:
  """Puts one copy of `tree` on every local device (leading device axis)."""
  devices = devices or jax.local_devices()
  sharding = device_sharding(devices)
  return jax.tree_util.tree_map(
      lambda x: jax.device_put(jnp.broadcast_to(x, (len(devices),) + jnp.shape(x)), sharding), tree)


def device_sharding(devices: list) -> jax.sharding.NamedSharding:
  """Splits axis 0 over `devices`: the layout pmap takes its inputs in."""
  mesh = jax.sharding.Mesh(np.asarray(devices), ("devices",))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("devices"))


def unreplicate(tree: Any) -> Any:
  """The first device's copy of a replicated tree, fetched to the host (numpy)."""
  return jax.device_get(jax.tree_util.tree_map(lambda x: x[0], tree))


def shard(batch: Any, num_devices: int) -> Any:
  """Every leaf [B, ...] -> [num_devices, B / num_devices, ...]; B must divide evenly."""
  def split(x):
    if x.shape[0] % num_devices:
      raise ValueError(f"A batch of {x.shape[0]} does not split over {num_devices} devices; "
                       "choose images_per_batch divisible by the number of devices.")
    return x.reshape((num_devices, x.shape[0] // num_devices) + x.shape[1:])
  return jax.tree_util.tree_map(split, batch)


def device_keys(rng: jax.Array, step: int, num_devices: int) -> jax.Array:
  """Per-device keys of one step: fold_in(step), then split across devices."""
  return jax.random.split(jax.random.fold_in(rng, step), num_devices)


class MetricWriter:
  """Scalars to `<dir>/metrics.jsonl` (one JSON object per write) and to TensorBoard."""

  def __init__(self, directory: str):
    os.makedirs(directory, exist_ok=True)
    self._jsonl = open(os.path.join(directory, "metrics.jsonl"), "a")
    try:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(directory, "tensorboard"))
    except ImportError:  # TensorBoard is optional; the JSON lines always exist.
      self._tb = None

  def write(self, step: int, scalars: dict[str, Any]) -> None:
    scalars = {k: float(np.asarray(v)) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for key, value in scalars.items():
        self._tb.add_scalar(key, value, step)
      self._tb.flush()

  def close(self) -> None:
    self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


class Progress:
  """A one-line progress report: stage, step/total, steps/s, ETA and chosen measurements."""

  def __init__(self, stage: str, total_steps: int, first_step: int = 0, stream=None):
    self.stage, self.total = stage, total_steps
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
    print(line, file=self._stream, flush=True)
    return line


def format_seconds(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  minutes, seconds = divmod(seconds, 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def host_batches(arrays: dict[str, np.ndarray], batch_size: int) -> Iterator[tuple[int, dict]]:
  """Fixed-size batches over all rows, the last one padded by repeating row 0.

  Yields (number of real rows, batch); fixed shapes mean one compilation for the whole split.
  """
  total = len(next(iter(arrays.values())))
  for start in range(0, total, batch_size):
    stop = min(start + batch_size, total)
    index = np.arange(start, start + batch_size)
    index[index >= total] = 0
    yield stop - start, {k: v[index] for k, v in arrays.items()}
