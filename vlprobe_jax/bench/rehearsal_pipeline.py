"""The host input pipeline alone: images per second from the feature stores to device-ready
batches, as the SCST step on COCO reads them, against what the accelerator step consumes.

What one SCST batch needs on COCO (`scst.SCSTTask.gather`): the fc features of its images (held
in RAM, `Split.fc_feats`) and their regions read from the memory-mapped region store
(`Split.scorer_images(rows, feats_dtype=None)`: features in the store's dtype, boxes, masks), made on the
`BatchIterator`'s thread and put on the devices, `prefetch` batches ahead. Variants measured:

  project      the project's path, as the SCST stage runs it (one thread; the regions in the
               store's dtype, cast to float32 in the step on the device)
  float32_feed the path before 2026-11-30: regions cast to float32 on the host whatever the
               store holds (a float16 store: twice the bytes, and a slow host cast)
  threads=N    N threads each making whole batches (N BatchIterators over interleaved steps)
  cold         the region shards dropped from the page cache first (`posix_fadvise DONTNEED`):
               every row read from the disk

The GPU step's need: 31,780 captions/s at 6 captions per image (5 samples + greedy) is about
5,300 images/s (BENCHMARKS.md, LXMERT reward on one H200).
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable

import jax
import numpy as np

from vlprobe_jax.data import pipeline
from vlprobe_jax.data.dataset import Split

GPU_IMAGES_PER_S = 31_780 / 6


def drop_page_cache(store_path: str) -> bool:
  """Asks the kernel to drop a store's shards from the page cache; False where it cannot."""
  if not hasattr(os, "posix_fadvise"):
    return False
  for path in glob.glob(os.path.join(store_path, "*.npy")):
    with open(path, "rb") as f:
      os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
  return True


def _gather_fn(split: Split, feed: str) -> Callable[[np.ndarray], dict]:
  fc = split.fc_feats

  def project(rows):  # scst.SCSTTask.gather with cache_image_inputs=False
    return {"fc_feats": fc[rows], "image_inputs": split.scorer_images(rows, feats_dtype=None)}

  def float32_feed(rows):
    return {"fc_feats": fc[rows], "image_inputs": split.scorer_images(rows)}

  return {"project": project, "float32_feed": float32_feed}[feed]


def measure(split: Split, *, batch_size: int, steps: int, prefetch: int = 2, threads: int = 1,
            feed: str = "project", seed: int = 0, warmup: int = 2) -> dict:
  """Images per second through `threads` BatchIterators to the local devices.

  The consumer does nothing but wait for each batch to be on the device, so this is the most
  the pipeline can feed. Batches are the training loop's (`EpochRows`, shuffled).
  """
  devices = jax.local_devices()
  rows = pipeline.EpochRows(len(split), batch_size, seed=seed)
  gather = _gather_fn(split, feed)
  total = warmup + steps
  iterators = [pipeline.BatchIterator(
      _every(rows.source(gather), t, threads), start_step=0,
      stop_step=len(range(t, total, threads)), devices=devices, prefetch=prefetch)
      for t in range(threads)]
  streams = [iter(it) for it in iterators]
  start, nbytes = None, 0
  try:
    for step in range(total):
      if step == warmup:
        start = time.perf_counter()
      batch = next(streams[step % threads])
      jax.block_until_ready(batch)
      if step >= warmup:
        nbytes += sum(x.nbytes for x in jax.tree_util.tree_leaves(batch))
  finally:
    for it in iterators:
      it.close()
  seconds = time.perf_counter() - start
  images = steps * batch_size
  return {"feed": feed, "threads": threads, "prefetch": prefetch, "batch": batch_size,
          "steps": steps, "images_per_s": images / seconds, "MB_per_s": nbytes / seconds / 1e6,
          "bytes_per_image": nbytes / images,
          "region_dtype": str(np.dtype(split.region_feats.dtype)) if split.region_feats is not None
                          else None}


def _every(source, offset: int, stride: int):
  """The source's steps offset, offset + stride, ... as steps 0, 1, ... of one iterator."""
  return lambda step: source(offset + step * stride)


def gpu_need() -> dict:
  return {"captions_per_s": 31_780, "captions_per_image": 6,
          "images_per_s": GPU_IMAGES_PER_S}
