"""Looking at the synthetic world: a text account of one image and a PNG grid of images."""

from __future__ import annotations

import numpy as np

from vlprobe_jax.data.dataset import Split
from vlprobe_jax.data.synthetic import BACKGROUND_NAMES, relations


def describe(split: Split, i: int) -> str:
  """A human-readable account of image i: its scene (when known), regions and references."""
  lines = [f"{split.name} image #{i} (id {int(split.image_ids[i])})"]
  scenes = getattr(split, "scenes", None)
  if scenes is not None:
    lines.append(f"  background: {BACKGROUND_NAMES[scenes.background[i]]}")
    objects = scenes.objects(i)
    for k, obj in enumerate(objects):
      lines.append(f"  object {k}: {obj['size']} {obj['colour']} {obj['shape']} at "
                   f"x={obj['x']:.1f} y={obj['y']:.1f} r={obj['radius']:.1f}, box "
                   f"{[round(v) for v in obj['box']]}")
    size = split.pixels.shape[1] if split.pixels is not None else 64
    for name, a, b in relations(objects, size / 16):
      lines.append(f"  object {a} {name} object {b}")
  if split.region_boxes is not None:
    boxes = ", ".join("[" + " ".join(f"{v:.2f}" for v in box) + "]"
                      for box, used in zip(split.region_boxes[i], split.region_mask[i]) if used)
    lines.append(f"  regions (x1/W y1/H x2/W y2/H): {boxes}")
  lines += [f"  ref: {ref}" for ref in split.references[i]]
  return "\n".join(lines)


def save_preview(split: Split, path: str, n: int = 16) -> None:
  """Writes a PNG grid of the first `n` images, each titled with its first reference."""
  # The object-oriented API: no pyplot state, no global backend switch.
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  if split.pixels is None:
    raise ValueError(f"save_preview: split {split.name!r} has no pixels to show.")
  n = min(n, len(split))
  cols = int(np.ceil(np.sqrt(n)))
  rows = int(np.ceil(n / cols))
  fig = Figure(figsize=(3 * cols, 3.3 * rows), layout="tight")
  axes = fig.subplots(rows, cols, squeeze=False).ravel()
  for i, ax in enumerate(axes):
    ax.axis("off")
    if i < n:
      ax.imshow(split.pixels[i], interpolation="nearest")
      words = split.references[i][0].split()
      ax.set_title(" ".join(words[:6]) + "\n" + " ".join(words[6:]), fontsize=8)
  fig.savefig(path, dpi=80)
