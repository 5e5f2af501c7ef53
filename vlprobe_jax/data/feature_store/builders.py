"""Building feature stores from the files people have: self-critical's fc `.npy` folder, LXMERT
obj36 / ROSITA region TSVs, and images through a CLIP image tower (see `store.py` for the
format). Every build is resumable: rerunning the same command skips the images already stored.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from vlprobe_jax.data import features
from vlprobe_jax.data.feature_store.store import (DEFAULT_SHARD_SIZE, FeatureStore, Progress,
                                                  StoreWriter)

log = logging.getLogger(__name__)


def build_fc_store(source: str, out: str, *, feature_dim: int = 2048,
                   shard_size: int = DEFAULT_SHARD_SIZE["fc"], on_error: str = "stop",
                   progress_every_s: float = 10.0) -> FeatureStore:
  """Builds (or resumes) an fc store from self-critical's `<cocoid>.npy` folder."""
  writer = StoreWriter(out, "fc", shard_size, source=os.path.abspath(source))
  reader = features.FcFolderReader(source, feature_dim=feature_dim, on_error=on_error,
                                   skip_ids=frozenset(writer.done_ids))
  progress = Progress(f"fc {out}", len(reader), "images", progress_every_s)
  for done, (image_id, fc) in enumerate(reader, start=1):
    writer.add(image_id, fc=fc)
    progress.update(done, writer.written)
  writer.finish()
  reader.policy.log_summary()
  progress.update(len(reader), writer.written, force=True)
  return FeatureStore(out, "fc")


def region_arrays(record: features.RegionRecord, max_regions: int, dtype: str,
                  policy: features.ErrorPolicy) -> dict[str, np.ndarray] | None:
  """One TSV record -> the fixed-size arrays of a regions store (None when skipped)."""
  count = len(record.boxes)
  if count > max_regions:
    policy.handle(features.FeatureError(
        f"{record.source}: {count} regions; expected at most {max_regions}. Rebuild with "
        f"--max-regions {count} (or more) to keep them all."))
    return None
  feats = np.zeros((max_regions, record.features.shape[1]), dtype)
  boxes = np.zeros((max_regions, 4), np.float32)
  mask = np.zeros((max_regions,), np.int32)
  objects_id = np.full((max_regions,), -1, np.int32)
  objects_conf = np.zeros((max_regions,), np.float32)
  feats[:count] = record.features
  boxes[:count] = record.normalized_boxes()
  mask[:count] = 1
  objects_id[:count] = record.objects_id
  objects_conf[:count] = record.objects_conf
  return {"feats": feats, "boxes": boxes, "mask": mask,
          "image_wh": np.array([record.image_w, record.image_h], np.int32),
          "objects_id": objects_id, "objects_conf": objects_conf}


def build_region_store(sources: list[str], out: str, *, layout: str = "auto",
                       max_regions: int = 36, feature_dim: int = 2048, dtype: str = "float32",
                       shard_size: int = DEFAULT_SHARD_SIZE["regions"], on_error: str = "stop",
                       progress_every_s: float = 10.0) -> FeatureStore:
  """Builds (or resumes) a regions store from obj36 or ROSITA TSVs (several files allowed)."""
  if dtype not in ("float32", "float16"):
    raise ValueError(f"dtype must be 'float32' or 'float16'; found {dtype!r}.")
  writer = StoreWriter(out, "regions", shard_size,
                       source=", ".join(os.path.abspath(s) for s in sources))
  policy = features.ErrorPolicy(on_error, "TSV rows")
  # The ids stored before this run (a resumed build) are passed over without decoding; a
  # duplicate within the sources reaches the writer, which reports it.
  stored = frozenset(writer.done_ids)
  readers = [features.RegionTsvReader(path, layout, feature_dim=feature_dim, on_error=policy,
                                      skip_ids=stored) for path in sources]
  total = sum(reader.bytes_total for reader in readers)
  progress = Progress(f"regions {out}", total / 2**20, "MiB", progress_every_s)
  finished_bytes = 0
  for reader in readers:
    for record in reader:
      arrays = region_arrays(record, max_regions, dtype, policy)
      if arrays is not None:
        writer.add(record.image_id, source=record.source, **arrays)
      progress.update((finished_bytes + reader.bytes_read) / 2**20, writer.written)
    finished_bytes += reader.bytes_total
  writer.finish()
  policy.log_summary()
  progress.update(total / 2**20, writer.written, force=True)
  return FeatureStore(out, "regions")


def build_clip_store(image_dir: str, out: str, embed_fn, *, image_size: int = 224,
                     batch_size: int = 64, image_ids=None,
                     shard_size: int = DEFAULT_SHARD_SIZE["clip"], on_error: str = "stop",
                     progress_every_s: float = 10.0) -> FeatureStore:
  """Builds (or resumes) a CLIP image-embedding store over a folder of COCO images.

  Args:
    image_dir: searched recursively for COCO-named images (`COCO_train2014_000000000009.jpg`).
    embed_fn: pixels [B, image_size, image_size, 3] uint8 RGB -> [B, D] embeddings (the
      caller's CLIP vision tower; normalisation of the pixels is its job).
    image_ids: restrict to these ids (e.g. the Karpathy split's), or None for every image.
  """
  images = features.list_images(image_dir)
  if image_ids is not None:
    images = {i: images[i] for i in image_ids if i in images}
  writer = StoreWriter(out, "clip", shard_size, source=os.path.abspath(image_dir))
  policy = features.ErrorPolicy(on_error, f"images in {image_dir}")
  todo = sorted(i for i in images if i not in writer.done_ids)
  progress = Progress(f"clip {out}", len(todo), "images", progress_every_s)
  for start in range(0, len(todo), batch_size):
    batch_ids, pixels = [], []
    for image_id in todo[start:start + batch_size]:
      try:
        pixels.append(features.load_image(images[image_id], image_size))
        batch_ids.append(image_id)
      except features.FeatureError as error:
        policy.handle(error)
    if not batch_ids:
      continue
    embeddings = np.asarray(embed_fn(np.stack(pixels)), np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(batch_ids):
      raise ValueError(f"embed_fn returned shape {embeddings.shape} for {len(batch_ids)} "
                       "images; expected [batch, D].")
    for image_id, embedding in zip(batch_ids, embeddings):
      writer.add(image_id, embedding=embedding)
    progress.update(min(start + batch_size, len(todo)), writer.written)
  writer.finish()
  policy.log_summary()
  progress.update(len(todo), writer.written, force=True)
  return FeatureStore(out, "clip")


def clip_embed_fn(checkpoint: str):
  """The default `--embed-fn`: the CLIP scorer's own image side, through the scorer contract.

  Returns embed_fn(pixels [B, S, S, 3] uint8) -> [B, D] float32, the unit-norm "image_embeds"
  that `scorers.get("clip").image_inputs` gives the scorer, so the store can stand in for it.
  """
  import scorers  # pylint: disable=g-import-not-at-top

  clip = scorers.get("clip")
  config, params = clip.load(checkpoint)

  def embed_fn(pixels: np.ndarray) -> np.ndarray:
    return np.asarray(clip.image_inputs(params, config, {"pixels": pixels})["image_embeds"])

  return embed_fn
