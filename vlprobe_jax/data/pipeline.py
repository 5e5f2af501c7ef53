"""The one input pipeline: batches made on a host thread, ahead of the step, put on the devices.

`BatchIterator` turns a *source* (a function `step -> host batch`, a dict of numpy arrays) into
device-ready batches, `prefetch` of them made ahead in a bounded queue on a thread that does the
slow host work (reading memory-mapped store rows, decoding, tokenizing) and the `device_put`, so
the consumer's step overlaps it. The time the consumer still waits is recorded (`wait_seconds`).
XE, SCST, scorer pretraining and the benchmark all read their batches through it.

Sources:
  * `EpochRows` + `gather`: the training loops' image batches. Epoch e visits the images in a
    permutation drawn from (seed, e); global step s is batch s mod steps_per_epoch of epoch
    s // steps_per_epoch, so resuming at any step continues with exactly the batches the run
    would have seen. With several processes every process computes the same global batch and
    takes its own contiguous slice (`process_index`), so together they feed the global batch.
  * any `step -> batch` function (scorer pretraining draws image-caption pairs from a seeded rng).

`host_batches` is the fixed-size batching of evaluation (no shuffle, last batch padded).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

from vlprobe_jax import devices as devices_lib

Source = Callable[[int], Any]


class EpochRows:
  """Which image rows each global step reads: shuffled epochs, whole batches, a process slice.

  Args:
    num_images: rows in the split.
    batch_size: global batch size (all processes and devices together).
    seed: the order of epoch e is a permutation drawn from (seed, e).
    shuffle: False keeps the rows in order (evaluation).
    drop_remainder: drop the last short batch of an epoch; else pad it by repeating rows (the
      second value of `local_rows` marks the real ones).
    process_index, process_count: this host's slice; default `jax.process_index()` and
      `jax.process_count()`.
  """

  def __init__(self, num_images: int, batch_size: int, *, seed: int, shuffle: bool = True,
               drop_remainder: bool = True, process_index: int | None = None,
               process_count: int | None = None):
    self.process_index = jax.process_index() if process_index is None else process_index
    self.process_count = jax.process_count() if process_count is None else process_count
    if batch_size < 1 or batch_size % self.process_count:
      raise ValueError(f"batch_size {batch_size} must be a positive multiple of the process "
                       f"count {self.process_count}.")
    self.num_images, self.batch_size = num_images, batch_size
    self.local_batch = batch_size // self.process_count
    self.seed, self.shuffle, self.drop_remainder = seed, shuffle, drop_remainder
    self.steps_per_epoch = (num_images // batch_size if drop_remainder
                            else -(-num_images // batch_size))
    if self.steps_per_epoch == 0:
      raise ValueError(f"{num_images} images make no batch of {batch_size} with "
                       "drop_remainder=True; lower the batch size or set drop_remainder=False.")

  def epoch_order(self, epoch: int) -> np.ndarray:
    """[N] int64 the image order of `epoch` (the same on every process)."""
    if not self.shuffle:
      return np.arange(self.num_images)
    return np.random.default_rng([self.seed, epoch]).permutation(self.num_images)

  def local_rows(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of this process for global `step`, and which of them are real (not padding)."""
    epoch, position = divmod(step, self.steps_per_epoch)
    order = self.epoch_order(epoch)
    rows = order[position * self.batch_size:(position + 1) * self.batch_size]
    valid = np.ones(self.batch_size, bool)
    if len(rows) < self.batch_size:  # Only without drop_remainder: pad by wrapping around.
      valid[len(rows):] = False
      rows = np.resize(rows, self.batch_size) if len(rows) else np.resize(order, self.batch_size)
    mine = slice(self.process_index * self.local_batch, (self.process_index + 1) * self.local_batch)
    return rows[mine], valid[mine]

  def source(self, gather: Callable[[np.ndarray], Any] | dict) -> Source:
    """`step -> batch`: this process's rows of the step, gathered by `gather(rows)`.

    `gather` may be a (nested) dict of arrays or lazy columns indexed by row; without
    `drop_remainder` the batch gets "valid": [local batch] bool, False on the padding.
    """
    if isinstance(gather, dict):
      arrays = gather
      gather = lambda rows: jax.tree_util.tree_map(lambda x: np.asarray(x[rows]), arrays)

    def make(step: int):
      rows, valid = self.local_rows(step)
      batch = gather(rows)
      if not self.drop_remainder:
        batch = dict(batch, valid=valid)
      return batch

    return make


class _Failure:
  """Carries an exception from the producer thread to the consumer."""

  def __init__(self, error: BaseException):
    self.error = error


_DONE = object()


class BatchIterator:
  """Prefetched, device-ready batches of `source(step)` for steps start_step, start_step + 1, ...

  Attributes:
    step: global step of the batch last yielded (-1 before the first).
    wait_seconds: total time the consumer waited for a batch.
    last_wait_seconds: the wait for the batch last yielded.
  """

  def __init__(self, source: Source, *, start_step: int = 0, stop_step: int | None = None,
               devices: Sequence[jax.Device] | None = None,
               sharding: jax.sharding.Sharding | None = None, prefetch: int = 2):
    """Starts nothing until iterated.

    Args:
      source: `step -> batch`, a (nested) dict of numpy arrays with the local batch first.
      start_step: the first step (resuming a run).
      stop_step: the step to stop before; None runs forever.
      devices: yield pmap-style arrays [len(devices), per_device_batch, ...] placed on these
        local devices.
      sharding: or yield global jax.Arrays [batch, ...] with this sharding (jit-style).
        With neither, the source's numpy batches are yielded as they are.
      prefetch: batches made ahead of the consumer (the queue bound).
    """
    if devices is not None and sharding is not None:
      raise ValueError("pass devices (pmap layout) or sharding (global arrays), not both.")
    self.source, self.start_step, self.stop_step = source, start_step, stop_step
    self.devices = list(devices) if devices is not None else None
    self.sharding = sharding
    if self.devices is not None:
      self._device_sharding = devices_lib.device_sharding(self.devices)
    self.prefetch = max(1, prefetch)
    self.step = -1
    self.wait_seconds = self.last_wait_seconds = 0.0
    self._thread = None
    self._stop = threading.Event()
    self._queue = None

  def _place(self, batch: Any) -> Any:
    if self.devices is not None:
      count = len(self.devices)

      def put(x):
        if x.shape[0] % count:
          raise ValueError(f"a batch of {x.shape[0]} rows does not split over {count} devices; "
                           "use a batch size that is a multiple of the device count.")
        return jax.device_put(x.reshape((count, -1) + x.shape[1:]), self._device_sharding)

      return jax.tree_util.tree_map(put, batch)
    if self.sharding is not None:
      return jax.tree_util.tree_map(
          lambda x: jax.make_array_from_process_local_data(self.sharding, x), batch)
    return batch

  def _produce(self, stop: threading.Event, out: queue.Queue) -> None:
    def put(item) -> bool:
      while not stop.is_set():
        try:
          out.put(item, timeout=0.05)
          return True
        except queue.Full:
          continue
      return False

    try:
      step = self.start_step
      while self.stop_step is None or step < self.stop_step:
        if stop.is_set() or not put((step, self._place(self.source(step)))):
          return
        step += 1
      put(_DONE)
    except BaseException as error:  # pylint: disable=broad-except
      put(_Failure(error))

  def __iter__(self) -> Iterator[Any]:
    """Yields batches from `start_step`; iterating again starts over from `start_step`."""
    self.close()
    stop, out = threading.Event(), queue.Queue(maxsize=self.prefetch)
    self._stop, self._queue = stop, out
    self._thread = threading.Thread(target=self._produce, name="BatchIterator", daemon=True,
                                    args=(stop, out))
    self._thread.start()
    return self._consume(stop, out)

  def _consume(self, stop: threading.Event, out: queue.Queue) -> Iterator[Any]:
    try:
      while True:
        start = time.perf_counter()
        item = out.get()
        self.last_wait_seconds = time.perf_counter() - start
        self.wait_seconds += self.last_wait_seconds
        if item is _DONE:
          return
        if isinstance(item, _Failure):
          raise item.error
        self.step, batch = item
        yield batch
    finally:
      if self._stop is stop:
        self.close()

  def close(self, timeout: float = 10.0) -> None:
    """Stops and joins the producer thread; pending batches are dropped."""
    thread, self._thread = self._thread, None
    if thread is None:
      return
    self._stop.set()
    while thread.is_alive():
      try:
        while True:
          self._queue.get_nowait()
      except queue.Empty:
        pass
      thread.join(timeout=0.05)
      timeout -= 0.05
      if timeout <= 0:
        raise RuntimeError("the BatchIterator thread did not stop within its timeout; a batch "
                           "is stuck reading its arrays.")

  def __enter__(self) -> "BatchIterator":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def host_batches(arrays: dict[str, np.ndarray], batch_size: int) -> Iterator[tuple[int, dict]]:
  """Fixed-size batches over all rows in order, the last one padded by repeating row 0.

  Yields (number of real rows, batch); fixed shapes mean one compilation for the whole split.
  """
  total = len(next(iter(arrays.values())))
  for start in range(0, total, batch_size):
    stop = min(start + batch_size, total)
    index = np.arange(start, start + batch_size)
    index[index >= total] = 0
    yield stop - start, {k: v[index] for k, v in arrays.items()}
