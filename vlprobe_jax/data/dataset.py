"""What every data source (synthetic world, COCO) hands to the stages.

A `Dataset` is a vocabulary plus named splits ("train", "val", "test"). A `Split` holds, per
image, the captioner features, the label rows, the raw references for the metrics and, when the
source has them, the image-side inputs of the scorers (pixels for CLIP, regions for the
BERT-style models). Arrays are numpy on the host; the stages move batches to the device.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from vlprobe_jax.data.vocab import Vocab


@dataclasses.dataclass
class Split:
  """One split.

  Attributes:
    name: "train", "val" or "test".
    image_ids: [N] int64 image ids (COCO ids, or 0..N-1 in the synthetic world).
    fc_feats: [N, D] float32 captioner features (D = 2048).
    labels: [N, C, L] int32 word ids, C captions per image, 0-padded, L = max caption length.
    references: per image, its reference captions as lower-case space-joined words (not
      truncated, no UNK): what the captioning metrics compare against.
    pixels: [N, H, W, 3] uint8 RGB images, or None.
    region_feats: [N, R, 2048] float32 (or float16) region features, or None.
    region_boxes: [N, R, 4] float32 boxes x1/W, y1/H, x2/W, y2/H, or None.
    region_mask: [N, R] int32, 1 for real regions, or None.
    image_wh: [N, 2] int32 image width and height, or None.
  """
  name: str
  image_ids: np.ndarray
  fc_feats: np.ndarray
  labels: np.ndarray
  references: list[list[str]]
  pixels: np.ndarray | None = None
  region_feats: np.ndarray | None = None
  region_boxes: np.ndarray | None = None
  region_mask: np.ndarray | None = None
  image_wh: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.image_ids)

  def scorer_images(self, index: np.ndarray | slice = slice(None),
                    feats_dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """The image side of the scorers for the images at `index` (see `scorers.registry`).

    `feats_dtype=None` keeps the region features in the store's dtype (float16 stores: half the
    bytes to copy and transfer; the SCST step casts them to float32 on the device).
    """
    out = {}
    if self.pixels is not None:
      out["pixels"] = self.pixels[index]
    if self.region_feats is not None:
      feats = self.region_feats[index]
      out["region_feats"] = np.asarray(feats) if feats_dtype is None else np.asarray(
          feats, feats_dtype)
      out["region_boxes"] = self.region_boxes[index]
      out["region_mask"] = self.region_mask[index]
    return out


@dataclasses.dataclass
class Dataset:
  vocab: Vocab
  splits: dict[str, Split]
  # A short text describing where the data came from, written into the run's metadata.
  description: str = ""

  def __getitem__(self, name: str) -> Split:
    if name not in self.splits:
      raise KeyError(f"No split {name!r}; this dataset has {sorted(self.splits)}.")
    return self.splits[name]
