"""Batches for the training loops, prepared ahead on a host thread and put on the devices.

`BatchIterator` walks an image-indexed dict of arrays (numpy arrays, or the lazy columns of
`feature_store` and `features.ImageColumn`, which read or decode rows when indexed) in a
per-epoch order drawn from a seed, and keeps up to `prefetch` batches ready in a bounded queue.
The thread does the slow host work (reading memory-mapped rows, decoding images) and the
`jax.device_put`, so the consumer's step overlaps it; the time the consumer still waits is
recorded (`wait_seconds`) so a benchmark can report data time against step time.

Multi-host: `batch_size` is global. Every process computes the same global order and takes its
own contiguous slice of each global batch (`process_index`), so the processes see disjoint
images that together cover the epoch and all take the same number of steps.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Sequence

import jax
import numpy as np


class _Failure:
  """Carries an exception from the producer thread to the consumer."""

  def __init__(self, error: BaseException):
    self.error = error


_DONE = object()


class BatchIterator:
  """Shuffled, prefetched, device-ready batches of `arrays`.

  Attributes:
    steps_per_epoch: global batches per epoch.
    epoch: epoch of the batch last yielded (-1 before the first).
    step: global step of the batch last yielded (-1 before the first).
    wait_seconds: total time the consumer waited for a batch.
    last_wait_seconds: the wait for the batch last yielded.
  """

  def __init__(self, arrays: dict, batch_size: int, *, seed: int, shuffle: bool = True,
               drop_remainder: bool = True, devices: Sequence[jax.Device] | None = None,
               sharding: jax.sharding.Sharding | None = None, prefetch: int = 2,
               process_index: int | None = None, process_count: int | None = None,
               num_epochs: int | None = None, start_step: int = 0):
    """Checks the sizes; starts nothing until iterated.

    Args:
      arrays: name -> [N, ...] array or lazy column, all with the same N (one row per image).
      batch_size: global batch size (all processes and devices together).
      seed: the order of epoch e is a permutation drawn from (seed, e).
      shuffle: False keeps the rows in order (evaluation).
      drop_remainder: drop the last short batch of an epoch; else pad it by repeating rows and
        add "valid": [batch] bool, False on the padding.
      devices: yield pmap-style arrays [len(devices), per_device_batch, ...] placed on these
        local devices.
      sharding: or yield global jax.Arrays [batch, ...] with this sharding (jit-style).
        With neither, numpy arrays [local_batch, ...] are yielded.
      prefetch: batches made ahead of the consumer (the queue bound).
      process_index, process_count: this host's slice; default `jax.process_index()` and
        `jax.process_count()`.
      num_epochs: stop after this many epochs; None runs forever.
      start_step: the global step to start at (resuming a run): its epoch and position follow
        from the seed, so the resumed order is the uninterrupted one.
    """
    if devices is not None and sharding is not None:
      raise ValueError("pass devices (pmap layout) or sharding (global arrays), not both.")
    lengths = {name: len(array) for name, array in arrays.items()}
    if not lengths or len(set(lengths.values())) != 1:
      raise ValueError(f"arrays must be non-empty and of one length; found lengths {lengths}.")
    self.arrays = dict(arrays)
    self.num_images = next(iter(lengths.values()))
    self.process_index = jax.process_index() if process_index is None else process_index
    self.process_count = jax.process_count() if process_count is None else process_count
    if batch_size % self.process_count:
      raise ValueError(f"batch_size {batch_size} must be a multiple of the process count "
                       f"{self.process_count}.")
    self.batch_size = batch_size
    self.local_batch = batch_size // self.process_count
    self.devices = list(devices) if devices is not None else None
    if self.devices is not None and self.local_batch % len(self.devices):
      raise ValueError(f"the per-process batch {self.local_batch} must be a multiple of the "
                       f"{len(self.devices)} devices.")
    self.sharding = sharding
    if self.devices is not None:
      # The leading axis split over the local devices: what pmap takes without a copy.
      mesh = jax.sharding.Mesh(np.array(self.devices), ("devices",))
      self._device_sharding = jax.sharding.NamedSharding(
          mesh, jax.sharding.PartitionSpec("devices"))
    self.seed, self.shuffle, self.drop_remainder = seed, shuffle, drop_remainder
    self.prefetch = max(1, prefetch)
    self.num_epochs, self.start_step = num_epochs, start_step
    self.steps_per_epoch = (self.num_images // batch_size if drop_remainder
                            else -(-self.num_images // batch_size))
    if self.steps_per_epoch == 0:
      raise ValueError(f"{self.num_images} images make no batch of {batch_size} with "
                       "drop_remainder=True; lower batch_size or set drop_remainder=False.")
    self.epoch = self.step = -1
    self.wait_seconds = self.last_wait_seconds = 0.0
    self._thread = None
    self._stop = threading.Event()
    self._queue = None

  def epoch_order(self, epoch: int) -> np.ndarray:
    """[N] int64 the image order of `epoch` (the same on every process)."""
    if not self.shuffle:
      return np.arange(self.num_images)
    return np.random.default_rng([self.seed, epoch]).permutation(self.num_images)

  def local_indices(self, step: int) -> tuple[np.ndarray, np.ndarray]:
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

  def _make_batch(self, step: int) -> dict:
    rows, valid = self.local_indices(step)
    batch = {name: np.asarray(array[rows]) for name, array in self.arrays.items()}
    if not self.drop_remainder:
      batch["valid"] = valid
    return self._place(batch)

  def _place(self, batch: dict) -> dict:
    if self.devices is not None:
      count = len(self.devices)
      return {name: jax.device_put(x.reshape((count, -1) + x.shape[1:]), self._device_sharding)
              for name, x in batch.items()}
    if self.sharding is not None:
      return {name: jax.make_array_from_process_local_data(self.sharding, x)
              for name, x in batch.items()}
    return batch

  def _produce(self, first_step: int, last_step: int | None, stop: threading.Event,
               out: queue.Queue) -> None:
    def put(item) -> bool:
      while not stop.is_set():
        try:
          out.put(item, timeout=0.05)
          return True
        except queue.Full:
          continue
      return False

    try:
      step = first_step
      while last_step is None or step < last_step:
        if stop.is_set() or not put((step, self._make_batch(step))):
          return
        step += 1
      put(_DONE)
    except BaseException as error:  # pylint: disable=broad-except
      put(_Failure(error))

  def __iter__(self) -> Iterator[dict]:
    """Yields batches from `start_step`; iterating again starts over from `start_step`."""
    self.close()
    stop, out = threading.Event(), queue.Queue(maxsize=self.prefetch)
    last_step = None if self.num_epochs is None else self.num_epochs * self.steps_per_epoch
    self._stop, self._queue = stop, out
    self._thread = threading.Thread(target=self._produce, name="BatchIterator", daemon=True,
                                    args=(self.start_step, last_step, stop, out))
    self._thread.start()
    return self._consume(stop, out)

  def _consume(self, stop: threading.Event, out: queue.Queue) -> Iterator[dict]:
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
        self.epoch = self.step // self.steps_per_epoch
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
