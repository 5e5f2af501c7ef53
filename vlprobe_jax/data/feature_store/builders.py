"""Building feature stores from the files people have: self-critical's fc `.npy` folder, LXMERT
obj36 / ROSITA region TSVs, images through a CLIP (or SigLIP) image tower, and resized images
for the pixel scorers (see `store.py` for the format). Every build is resumable: rerunning the
same command skips the images already stored.
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


RESIZES = ("crop", "square")


def load_square_image(source, size: int, where: str = "") -> np.ndarray:
  """An image file (path or bytes) -> [size, size, 3] uint8 RGB, the whole image resized.

  SigLIP's and BLIP's transform (their image processors resize to (size, size), bicubic, the
  aspect ratio not kept); normalisation is left to the model.

  Raises:
    features.FeatureError: the image cannot be decoded.
  """
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  where = where or (source if isinstance(source, str) else "<image bytes>")
  try:
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
      return np.asarray(image.convert("RGB").resize((size, size), Image.BICUBIC), np.uint8)
  except (OSError, ValueError, SyntaxError) as error:
    raise features.FeatureError(f"{where}: cannot decode the image ({error}); expected a JPEG "
                                "or PNG. Re-download it.") from None


def image_loader(resize: str):
  """"crop" (CLIP: shorter side, centre crop) or "square" (SigLIP, BLIP) -> load(path, size)."""
  if resize not in RESIZES:
    raise ValueError(f"resize must be one of {RESIZES}; found {resize!r}. 'crop' is CLIP's "
                     "transform, 'square' SigLIP's and BLIP's.")
  return features.load_image if resize == "crop" else load_square_image


def _image_batches(image_dir: str, done_ids, batch_size: int, image_ids, load, image_size,
                   policy: features.ErrorPolicy):
  """(batch ids, [B, S, S, 3] uint8 pixels, images done so far, total) of the images not yet
  stored; undecodable images go to `policy`."""
  images = features.list_images(image_dir)
  if image_ids is not None:
    images = {i: images[i] for i in image_ids if i in images}
  todo = sorted(i for i in images if i not in done_ids)
  for start in range(0, len(todo), batch_size):
    batch_ids, pixels = [], []
    for image_id in todo[start:start + batch_size]:
      try:
        pixels.append(load(images[image_id], image_size))
        batch_ids.append(image_id)
      except features.FeatureError as error:
        policy.handle(error)
    yield batch_ids, (np.stack(pixels) if pixels else None), min(start + batch_size,
                                                                 len(todo)), len(todo)


def build_pixel_store(image_dir: str, out: str, *, image_size: int, resize: str = "square",
                      image_ids=None, shard_size: int = DEFAULT_SHARD_SIZE["pixels"],
                      on_error: str = "stop", progress_every_s: float = 10.0) -> FeatureStore:
  """Builds (or resumes) a store of resized images for the pixel scorers.

  Decoding and resizing COCO's JPEGs costs more than the scorers' image side on an
  accelerator; a pixels store does it once. The scorers' on-device transform then finds the
  images at its input size (a no-op resize) and only normalises them.

  Args:
    image_dir: searched recursively for COCO-named images (`COCO_train2014_000000000009.jpg`).
    image_size: S, the scorer's input size (SigLIP base 224, BLIP 384).
    resize: "square" (SigLIP, BLIP: the whole image to S x S) or "crop" (CLIP).
    image_ids: restrict to these ids (e.g. the Karpathy split's), or None for every image.
  """
  load = image_loader(resize)
  source = f"{os.path.abspath(image_dir)} (resize {resize} to {image_size})"
  writer = StoreWriter(out, "pixels", shard_size, source=source)
  if writer.manifest.get("source") != source:
    raise ValueError(f"{out} holds images from {writer.manifest.get('source')}; this build "
                     f"would add {source}. Resume with the same options, or choose another --out.")
  policy = features.ErrorPolicy(on_error, f"images in {image_dir}")
  progress = None
  for batch_ids, pixels, done, total in _image_batches(image_dir, writer.done_ids, 64,
                                                       image_ids, load, image_size, policy):
    progress = progress or Progress(f"pixels {out}", total, "images", progress_every_s)
    for image_id, image in zip(batch_ids, pixels if pixels is not None else []):
      writer.add(image_id, pixels=image)
    progress.update(done, writer.written)
  writer.finish()
  policy.log_summary()
  if progress is not None:
    progress.update(progress.total, writer.written, force=True)
  return FeatureStore(out, "pixels")


def build_clip_store(image_dir: str, out: str, embed_fn, *, image_size: int = 224,
                     batch_size: int = 64, image_ids=None, resize: str = "crop",
                     shard_size: int = DEFAULT_SHARD_SIZE["clip"], on_error: str = "stop",
                     progress_every_s: float = 10.0) -> FeatureStore:
  """Builds (or resumes) a CLIP image-embedding store over a folder of COCO images.

  Args:
    image_dir: searched recursively for COCO-named images (`COCO_train2014_000000000009.jpg`).
    embed_fn: pixels [B, image_size, image_size, 3] uint8 RGB -> [B, D] embeddings (the
      caller's CLIP vision tower; normalisation of the pixels is its job).
    image_ids: restrict to these ids (e.g. the Karpathy split's), or None for every image.
    resize: how images reach image_size: "crop" (CLIP) or "square" (SigLIP's embeddings,
      `siglip_embed_fn`).
  """
  load = image_loader(resize)
  writer = StoreWriter(out, "clip", shard_size, source=os.path.abspath(image_dir))
  policy = features.ErrorPolicy(on_error, f"images in {image_dir}")
  progress = None
  done, total = 0, 0
  for batch_ids, pixels, done, total in _image_batches(image_dir, writer.done_ids, batch_size,
                                                       image_ids, load, image_size, policy):
    progress = progress or Progress(f"clip {out}", total, "images", progress_every_s)
    if not batch_ids:
      continue
    embeddings = np.asarray(embed_fn(pixels), np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(batch_ids):
      raise ValueError(f"embed_fn returned shape {embeddings.shape} for {len(batch_ids)} "
                       "images; expected [batch, D].")
    for image_id, embedding in zip(batch_ids, embeddings):
      writer.add(image_id, embedding=embedding)
    progress.update(done, writer.written)
  writer.finish()
  policy.log_summary()
  if progress is not None:
    progress.update(total, writer.written, force=True)
  return FeatureStore(out, "clip")


def _scorer_embed_fn(name: str, checkpoint: str):
  import scorers  # pylint: disable=g-import-not-at-top

  spec = scorers.get(name)
  config, params = spec.load(checkpoint)

  def embed_fn(pixels: np.ndarray) -> np.ndarray:
    return np.asarray(spec.image_inputs(params, config, {"pixels": pixels})["image_embeds"])

  return embed_fn


def clip_embed_fn(checkpoint: str):
  """The default `--embed-fn`: the CLIP scorer's own image side, through the scorer contract.

  Returns embed_fn(pixels [B, S, S, 3] uint8) -> [B, D] float32, the unit-norm "image_embeds"
  that `scorers.get("clip").image_inputs` gives the scorer, so the store can stand in for it.
  """
  return _scorer_embed_fn("clip", checkpoint)


def siglip_embed_fn(checkpoint: str):
  """SigLIP's image side (a Hugging Face SiglipModel directory), as `clip_embed_fn` for CLIP;
  build with `--resize square` (SigLIP's transform)."""
  return _scorer_embed_fn("siglip", checkpoint)
