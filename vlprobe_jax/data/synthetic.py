"""The embedded default data: a procedurally generated world of shapes and their captions.

No weights and no COCO can be downloaded in CI, so `make_world(config)` builds a small world
in which the whole method runs on a laptop: 1 to 3 shapes (circle, square, triangle, cross,
star; 8 colours; small or large) on a textured background (grass, sky, sand, water, snow),
never overlapping, each with its tight pixel box; 5 distinct captions per image from a grammar
with synonyms, counts and spatial relations that are true of the rendered scene, e.g. "a small
red circle above a blue box on the grass". Captioner and region features are computed from the
rendered pixels (`image_features`), never from the scene labels.

The stages are separate functions: `sample_scenes` (labels and geometry), `render` (pixels and
object boxes), `caption_scene` (references), `region_boxes` (detector-like slots), and
`make_world`, which ties them together per split with its own seeds, so the same config always
gives byte-identical arrays and captions.

Timing: the default world (4,000 + 250 + 250 images at 64 x 64, 8 regions) takes 17 s of CPU
time on one core of the development machine, features included (about 2/3 of it); BENCHMARKS.md
has the main job's stage times. It needs about 0.25 GB, most of it the float16 region features.
"""

from __future__ import annotations

import dataclasses
import itertools

import ml_collections
import numpy as np

from vlprobe_jax.data import image_features
from vlprobe_jax.data import vocab as vocab_lib
from vlprobe_jax.data.dataset import Dataset, Split

SHAPES = ("circle", "square", "triangle", "cross", "star")
# Per shape: (singular, plural) nouns; the first is the canonical name.
SHAPE_NOUNS = {
    "circle": (("circle", "circles"), ("ball", "balls"), ("disc", "discs")),
    "square": (("square", "squares"), ("box", "boxes"), ("block", "blocks")),
    "triangle": (("triangle", "triangles"),),
    "cross": (("cross", "crosses"),),
    "star": (("star", "stars"),),
}
COLOURS = {
    "red": (215, 35, 35), "orange": (245, 140, 25), "yellow": (240, 215, 35),
    "green": (40, 165, 55), "blue": (35, 75, 215), "purple": (135, 55, 175),
    "white": (245, 245, 245), "black": (25, 25, 25),
}
COLOUR_NAMES = tuple(COLOURS)
SIZES = ("small", "large")
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
BACKGROUNDS = {
    # name: (base RGB, phrases after the objects, scene nouns before "with").
    "grass": ((70, 135, 45), ("on the grass", "on a lawn", "in a field"), ("a field", "a lawn")),
    "sky": ((120, 175, 235), ("in the sky",), ("the sky",)),
    "sand": ((215, 190, 140), ("on the sand", "on the beach"), ("a beach",)),
    "water": ((35, 95, 155), ("on the water", "in the water"), ("a lake", "the sea")),
    "snow": ((235, 240, 248), ("on the snow", "in the snow"), ("a snowy hill",)),
}
BACKGROUND_NAMES = tuple(BACKGROUNDS)
# Relation name -> phrases; "above"/"left" mean the first object is above / left of the second.
RELATION_PHRASES = {
    "above": ("above", "over"), "below": ("below", "under", "beneath"),
    "left": ("to the left of", "left of"), "right": ("to the right of", "right of"),
    "next": ("next to", "beside"),
}
COUNT_WORDS = {2: "two", 3: "three"}
OPENERS = ("a picture of", "an image of", "a photo of", "there is")
# Object colours not drawn on a background because they would be hard to see there.
HIDDEN_COLOURS = {"grass": ("green",), "sky": (), "sand": ("yellow", "white"),
                  "water": ("blue", "purple"), "snow": ("white",)}
LABELS_PER_IMAGE = 5
# Words that name what is visible (shapes, colours, sizes), for analyses of visual words.
VISUAL_WORDS = frozenset(
    [w for nouns in SHAPE_NOUNS.values() for pair in nouns for w in pair] + list(COLOURS)
    + [w for words in SIZE_WORDS.values() for w in words])
# Bump when a change here alters the generated world, so caches keyed on it are rebuilt.
GENERATOR_VERSION = 1


def default_world_config() -> ml_collections.ConfigDict:
  """The default world: 4,000 / 250 / 250 images of 64 x 64 pixels."""
  return ml_collections.ConfigDict(dict(
      seed=0, num_train=4000, num_val=250, num_test=250, image_size=64,
      min_objects=1, max_objects=3,
      captions_per_image=5,   # distinct references per image; labels use the first 5
      count_threshold=5,      # words with count <= threshold in train captions become UNK
      max_length=16,          # label length; captions longer than this are not generated
      num_regions=8,          # fixed region slots: objects, whole image, then grid boxes
  ))


@dataclasses.dataclass
class Scenes:
  """Scene labels of N images with up to K object slots (-1 / 0 in empty slots).

  Attributes:
    background: [N] int index into BACKGROUND_NAMES.
    num_objects: [N] int.
    shape, colour, size: [N, K] int indices into SHAPES, COLOUR_NAMES, SIZES; -1 if empty.
    center: [N, K, 2] float32 pixel x, y of the shape's centre.
    radius: [N, K] float32 half extent in pixels (every shape fits in this circle).
    rgb: [N, K, 3] float32 the drawn colour (the named colour plus jitter).
    boxes: [N, K, 4] float32 tight pixel boxes x1, y1, x2, y2 of the rendered shapes (set by
      `render`; x2, y2 are exclusive edges).
  """
  background: np.ndarray
  num_objects: np.ndarray
  shape: np.ndarray
  colour: np.ndarray
  size: np.ndarray
  center: np.ndarray
  radius: np.ndarray
  rgb: np.ndarray
  boxes: np.ndarray

  def objects(self, i: int) -> list[dict]:
    """The objects of image i as dicts (shape/colour/size names, x, y, radius, box)."""
    return [dict(shape=SHAPES[self.shape[i, k]], colour=COLOUR_NAMES[self.colour[i, k]],
                 size=SIZES[self.size[i, k]], x=float(self.center[i, k, 0]),
                 y=float(self.center[i, k, 1]), radius=float(self.radius[i, k]),
                 box=self.boxes[i, k].tolist()) for k in range(self.num_objects[i])]


@dataclasses.dataclass
class WorldSplit(Split):
  """A `Split` that also keeps the scene labels, for `describe`, probes and tests."""
  scenes: Scenes | None = None


# ----------------------------------------------------------------------------- scenes


def sample_scenes(rng: np.random.Generator, n: int, config) -> Scenes:
  """Samples backgrounds and non-overlapping objects that lie fully inside the image.

  A large shape that finds no room becomes small; one that still finds none is dropped (never
  with the default sizes and up to 3 objects, where small shapes always fit).
  """
  size_px, k_max = config.image_size, config.max_objects
  obj_rgb = np.array(list(COLOURS.values()), np.float32)
  allowed = [np.array([c for c, name in enumerate(COLOUR_NAMES) if name not in HIDDEN_COLOURS[b]])
             for b in BACKGROUND_NAMES]
  radius_range = {0: (0.09 * size_px, 0.12 * size_px), 1: (0.17 * size_px, 0.22 * size_px)}
  gap = 2.0
  scenes = Scenes(
      background=rng.integers(0, len(BACKGROUND_NAMES), n),
      num_objects=np.zeros((n,), np.int64),
      shape=np.full((n, k_max), -1, np.int64), colour=np.full((n, k_max), -1, np.int64),
      size=np.full((n, k_max), -1, np.int64), center=np.zeros((n, k_max, 2), np.float32),
      radius=np.zeros((n, k_max), np.float32), rgb=np.zeros((n, k_max, 3), np.float32),
      boxes=np.zeros((n, k_max, 4), np.float32))
  wanted = rng.integers(config.min_objects, config.max_objects + 1, n)
  for i in range(n):
    placed = 0
    for _ in range(wanted[i]):
      size = int(rng.integers(0, 2))
      for attempt in range(60):
        if attempt == 30:
          size = 0  # a large shape did not fit: try a small one
        r = rng.uniform(*radius_range[size])
        c = rng.uniform(r + 1.0, size_px - r - 1.0, 2)
        others = scenes.center[i, :placed]
        if np.all(np.linalg.norm(others - c, axis=-1) >= scenes.radius[i, :placed] + r + gap):
          break
      else:
        continue  # no room left for this object
      scenes.shape[i, placed] = rng.integers(0, len(SHAPES))
      colour = rng.choice(allowed[scenes.background[i]])
      scenes.colour[i, placed] = colour
      scenes.size[i, placed] = size
      scenes.center[i, placed] = c
      scenes.radius[i, placed] = r
      scenes.rgb[i, placed] = np.clip(obj_rgb[colour] + rng.uniform(-15, 15, 3), 0, 255)
      placed += 1
    scenes.num_objects[i] = placed
  return scenes


# ----------------------------------------------------------------------------- rendering


def _box_sdf(px, py, half_w, half_h):
  qx, qy = np.abs(px) - half_w, np.abs(py) - half_h
  outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
  return outside + np.minimum(np.maximum(qx, qy), 0)


def shape_distance(shape: str, px: np.ndarray, py: np.ndarray, r: np.ndarray) -> np.ndarray:
  """Approximate signed distance (pixels, < 0 inside) to a shape centred at 0 with extent r."""
  if shape == "circle":
    return np.hypot(px, py) - r
  if shape == "square":
    return _box_sdf(px, py, 0.8 * r, 0.8 * r)
  if shape == "triangle":  # apex up, base at y = 0.7 r; max of the three edge half-planes
    s = np.hypot(1.7, 1.0)
    left = (-1.7 * px - (py + r)) / s
    right = (1.7 * px - (py + r)) / s
    return np.maximum(np.maximum(left, right), py - 0.7 * r)
  if shape == "cross":
    return np.minimum(_box_sdf(px, py, 0.95 * r, 0.33 * r), _box_sdf(px, py, 0.33 * r, 0.95 * r))
  if shape == "star":  # five points; radius interpolates between points and notches
    angle = np.arctan2(px, -py) % (2 * np.pi / 5) / (2 * np.pi / 5)
    star_r = r * (0.45 + 0.55 * np.abs(2 * angle - 1))
    return 0.6 * (np.hypot(px, py) - star_r)
  raise ValueError(f"synthetic.shape_distance: unknown shape {shape!r}; expected one of {SHAPES}.")


def render_backgrounds(rng: np.random.Generator, background: np.ndarray,
                       size: int) -> np.ndarray:
  """[N] background indices -> [N, size, size, 3] float32 textured backgrounds (0..255)."""
  n = len(background)
  f32 = lambda *v: np.array(v, np.float32)  # pylint: disable=unnecessary-lambda-assignment
  yy = np.arange(size, dtype=np.float32)[None, :, None, None] / size
  xx = np.arange(size, dtype=np.float32)[None, None, :, None] / size
  fine = rng.standard_normal((n, size, size, 1), dtype=np.float32)
  # Smooth blotches: an 8 x 8 random field upsampled bilinearly.
  position = np.clip((np.arange(size, dtype=np.float32) + 0.5) * (8 / size) - 0.5, 0, 7)
  upsample = np.maximum(0.0, 1.0 - np.abs(position[:, None] - np.arange(8, dtype=np.float32)))
  coarse = upsample @ rng.standard_normal((n, 8, 8), dtype=np.float32) @ upsample.T
  coarse = 1.5 * coarse[..., None]  # bilinear averaging shrinks the spread; restore it
  phase = rng.uniform(0, 2 * np.pi, (n, 1, 1, 1)).astype(np.float32)
  out = np.empty((n, size, size, 3), np.float32)
  for b, name in enumerate(BACKGROUND_NAMES):
    sel = np.flatnonzero(background == b)
    base = f32(*BACKGROUNDS[name][0])
    f, c, p = fine[sel], coarse[sel], phase[sel]
    if name == "grass":  # patchy green with blade-like vertical streaks
      streaks = np.sin(xx * (40 * np.pi) + p + 3 * c)
      texture = (c * f32(6, 12, 6) + f * f32(8, 14, 6) + streaks * f32(2, 8, 2))
    elif name == "sky":  # lighter towards the horizon, faint clouds
      texture = yy * f32(45, 36, 14) + 18 * np.maximum(c, 0) + 3 * f
    elif name == "sand":  # fine grain
      texture = 6 * c + f * f32(12, 11, 8)
    elif name == "water":  # horizontal waves
      waves = np.sin(yy * (30 * np.pi) + p + 2 * c + 4 * xx)
      texture = waves * f32(9, 14, 18) + 5 * f
    else:  # snow: bluish shadows
      texture = c * f32(5, 5, 3) - np.maximum(-c, 0) * f32(6, 4, 0) + 3 * f
    out[sel] = base + texture
  return out


def render(rng: np.random.Generator, scenes: Scenes, size: int) -> np.ndarray:
  """Draws the scenes (anti-aliased by the signed distance) and fills `scenes.boxes`.

  Each shape is drawn inside a square window around it that holds the largest shape, so the
  cost does not grow with the image area.

  Returns:
    [N, size, size, 3] uint8 RGB.
  """
  images = render_backgrounds(rng, scenes.background, size)
  window = min(size, int(np.ceil(2 * scenes.radius.max(initial=0.0))) + 4)
  steps = np.arange(window)
  for k in range(scenes.shape.shape[1]):
    for s, shape in enumerate(SHAPES):
      idx = np.flatnonzero(scenes.shape[:, k] == s)
      if not len(idx):
        continue
      centre = scenes.center[idx, k]  # [M, 2] x, y
      origin = np.clip(np.floor(centre).astype(np.int64) - window // 2, 0, size - window)
      rows = origin[:, 1, None, None] + steps[None, :, None]  # [M, window, 1]
      cols = origin[:, 0, None, None] + steps[None, None, :]  # [M, 1, window]
      distance = shape_distance(shape, (cols + 0.5 - centre[:, 0, None, None]).astype(np.float32),
                                (rows + 0.5 - centre[:, 1, None, None]).astype(np.float32),
                                scenes.radius[idx, k, None, None])
      alpha = np.clip(0.5 - distance, 0.0, 1.0)  # [M, window, window]
      image = idx[:, None, None]
      patch = images[image, rows, cols]
      patch += alpha[..., None] * (scenes.rgb[idx, k, None, None, :] - patch)
      images[image, rows, cols] = patch
      inside = alpha > 0.5
      in_cols, in_rows = inside.any(1), inside.any(2)
      scenes.boxes[idx, k] = np.stack(
          [origin[:, 0] + in_cols.argmax(1), origin[:, 1] + in_rows.argmax(1),
           origin[:, 0] + window - in_cols[:, ::-1].argmax(1),
           origin[:, 1] + window - in_rows[:, ::-1].argmax(1)], axis=-1)
  images += 3 * rng.standard_normal(images.shape[:3] + (1,), dtype=np.float32)  # sensor noise
  np.clip(np.rint(images, out=images), 0, 255, out=images)
  return images.astype(np.uint8)


def region_boxes(scenes: Scenes, size: int, num_regions: int) -> np.ndarray:
  """Detector-like region slots: each object's box, the whole image, then grid cells.

  Returns:
    [N, num_regions, 4] float32 pixel boxes x1, y1, x2, y2; every slot is a real region.
  """
  fillers = []
  for grid in itertools.count(2):  # 2 x 2 quadrants, then 3 x 3, ... until enough
    step = size / grid
    fillers += [(c * step, r * step, (c + 1) * step, (r + 1) * step)
                for r in range(grid) for c in range(grid)]
    if len(fillers) >= num_regions:
      break
  n = len(scenes.background)
  boxes = np.zeros((n, num_regions, 4), np.float32)
  for i in range(n):
    k = scenes.num_objects[i]
    boxes[i, :k] = scenes.boxes[i, :k]
    boxes[i, k] = (0, 0, size, size)
    boxes[i, k + 1:] = fillers[:num_regions - k - 1]
  return boxes


# ----------------------------------------------------------------------------- captions


def relations(objects: list[dict], margin: float) -> list[tuple[str, int, int]]:
  """True relations (name, i, j): object i is <name> object j ("above", "left", "next", ...).

  "above"/"below" need a vertical gap of at least `margin` pixels that is at least half the
  horizontal one (and the same for "left"/"right"); "next" needs a mostly horizontal offset.
  """
  out = []
  for i, j in itertools.permutations(range(len(objects)), 2):
    dx = objects[j]["x"] - objects[i]["x"]
    dy = objects[j]["y"] - objects[i]["y"]
    if abs(dy) >= margin and abs(dy) >= 0.5 * abs(dx):
      out.append(("above" if dy > 0 else "below", i, j))
    if abs(dx) >= margin and abs(dx) >= 0.5 * abs(dy):
      out.append(("left" if dx > 0 else "right", i, j))
    if abs(dx) >= abs(dy):
      out.append(("next", i, j))
  return out


def _pick(rng: np.random.Generator, options):
  return options[int(rng.integers(0, len(options)))]


def _with_article(words: list[str]) -> list[str]:
  return (["an"] if words[0][0] in "aeiou" else ["a"]) + words


def _noun_phrases(rng, objects, use_colour, use_size) -> list[list[str]]:
  """Groups objects by the mentioned attributes; one phrase per group, counted if plural."""
  groups: dict[tuple, list[dict]] = {}
  for obj in objects:
    key = (obj["size"] if use_size else None, obj["colour"] if use_colour else None, obj["shape"])
    groups.setdefault(key, []).append(obj)
  phrases = []
  for (size, colour, shape), members in groups.items():
    singular, plural = _pick(rng, SHAPE_NOUNS[shape])
    words = ([_pick(rng, SIZE_WORDS[size])] if size else []) + ([colour] if colour else [])
    if len(members) == 1:
      phrases.append(_with_article(words + [singular]))
    else:
      phrases.append([COUNT_WORDS[len(members)]] + words + [plural])
  order = rng.permutation(len(phrases))
  return [phrases[o] for o in order]


def _one_caption(rng, objects, background, rels) -> list[str]:
  """One caption: a list of the objects, or a relation between two of them."""
  _, bg_phrases, bg_nouns = BACKGROUNDS[background]
  kind = rng.random()
  if rels and kind < 0.5:
    name, i, j = _pick(rng, rels)
    left = _noun_phrases(rng, [objects[i]], rng.random() < 0.85, rng.random() < 0.5)[0]
    use_colour, use_size = rng.random() < 0.85, rng.random() < 0.5
    right = _noun_phrases(rng, [objects[j]], use_colour, use_size)[0]
    # "the" only where the phrase picks out one object of the scene.
    same = [o for o in objects if o["shape"] == objects[j]["shape"]
            and (not use_colour or o["colour"] == objects[j]["colour"])
            and (not use_size or o["size"] == objects[j]["size"])]
    if len(same) == 1 and rng.random() < 0.3:
      right = ["the"] + right[1:]
    body = left + _pick(rng, RELATION_PHRASES[name]).split() + right
  else:
    phrases = _noun_phrases(rng, objects, rng.random() < 0.85, rng.random() < 0.5)
    body = phrases[0]
    if len(phrases) == 2:
      body = body + ["and"] + phrases[1]
    elif len(phrases) == 3:
      body = body + ["with"] + phrases[1] + ["and"] + phrases[2]
  if rng.random() < 0.2:  # "a beach with ..."
    return _pick(rng, bg_nouns).split() + ["with"] + body
  opener = []
  if rng.random() < 0.5:
    opener = _pick(rng, OPENERS).split()
    if opener == ["there", "is"] and body[0] in COUNT_WORDS.values():
      opener = ["there", "are"]
  tail = _pick(rng, bg_phrases).split() if rng.random() < 0.6 else []
  return opener + body + tail


def caption_scene(rng: np.random.Generator, objects: list[dict], background: str,
                  num_captions: int, max_length: int, margin: float) -> list[str]:
  """`num_captions` distinct captions (space-joined words) of at most `max_length` words."""
  rels = relations(objects, margin)
  captions: list[str] = []
  for _ in range(100 * num_captions):
    words = _one_caption(rng, objects, background, rels)
    text = " ".join(words)
    if len(words) <= max_length and text not in captions:
      captions.append(text)
      if len(captions) == num_captions:
        return captions
  raise ValueError(f"synthetic: could not write {num_captions} distinct captions of at most "
                   f"max_length={max_length} words for a scene with {len(objects)} objects; "
                   "raise config.max_length or lower config.captions_per_image.")


# ----------------------------------------------------------------------------- the world


def _check_config(config) -> None:
  if not 1 <= config.min_objects <= config.max_objects:
    raise ValueError(f"synthetic config: need 1 <= min_objects <= max_objects; found "
                     f"{config.min_objects}, {config.max_objects}.")
  if config.num_regions < config.max_objects + 1:
    raise ValueError(f"synthetic config: num_regions={config.num_regions} leaves no slot for "
                     f"the whole image with max_objects={config.max_objects}; set num_regions "
                     f">= {config.max_objects + 1}.")
  if config.image_size < 32 or config.image_size % 8:
    raise ValueError(f"synthetic config: image_size={config.image_size}; expected a multiple of "
                     "8 (the feature grids) of at least 32 (to draw distinguishable shapes), "
                     "e.g. 64.")
  if config.captions_per_image < 1 or config.max_length < 4:
    raise ValueError(f"synthetic config: need captions_per_image >= 1 and max_length >= 4; found "
                     f"{config.captions_per_image} and {config.max_length}.")


def _make_split(name: str, index: int, n: int, first_id: int, config) -> WorldSplit:
  """Everything but the labels (they need the train vocabulary)."""
  scene_seed, render_seed, caption_seed = np.random.SeedSequence([config.seed, index]).spawn(3)
  scenes = sample_scenes(np.random.default_rng(scene_seed), n, config)
  size = config.image_size
  pixels = render(np.random.default_rng(render_seed), scenes, size)
  rng = np.random.default_rng(caption_seed)
  references = [caption_scene(rng, scenes.objects(i), BACKGROUND_NAMES[scenes.background[i]],
                              config.captions_per_image, config.max_length, size / 16)
                for i in range(n)]
  boxes = region_boxes(scenes, size, config.num_regions)
  return WorldSplit(
      name=name, image_ids=np.arange(first_id, first_id + n, dtype=np.int64),
      fc_feats=image_features.fc_features(pixels),
      labels=np.zeros((n, LABELS_PER_IMAGE, config.max_length), np.int32),
      references=references, pixels=pixels,
      region_feats=image_features.region_features(pixels, boxes).astype(np.float16),
      region_boxes=boxes / np.float32(size), region_mask=np.ones(boxes.shape[:2], np.int32),
      image_wh=np.full((n, 2), size, np.int32), scenes=scenes)


def make_world(config: ml_collections.ConfigDict | None = None) -> Dataset:
  """Builds the synthetic dataset (train/val/test), deterministic in `config.seed`.

  Args:
    config: fields of `default_world_config()` (missing fields take the defaults).

  Returns:
    A `Dataset` whose splits are `WorldSplit`s with every `Split` field filled; the vocabulary
    is built from the train captions with `count_threshold`.
  """
  merged = default_world_config()
  if config is not None:
    unknown = sorted(set(config.keys()) - set(merged.keys()))
    if unknown:
      raise ValueError(f"synthetic config: unknown fields {unknown}; the fields are "
                       f"{sorted(merged.keys())}.")
    merged.update(dict(config))
  config = merged
  _check_config(config)
  sizes = [("train", config.num_train), ("val", config.num_val), ("test", config.num_test)]
  splits, first_id = {}, 0
  for index, (name, n) in enumerate(sizes):
    splits[name] = _make_split(name, index, n, first_id, config)
    first_id += n
  train_words = [c.split() for refs in splits["train"].references for c in refs]
  vocab = vocab_lib.build_vocab(train_words, config.count_threshold)
  for split in splits.values():
    split.labels = vocab_lib.encode_labels(
        vocab, [[c.split() for c in refs] for refs in split.references], LABELS_PER_IMAGE,
        config.max_length)
  description = (f"synthetic world seed={config.seed}: {config.num_train}/{config.num_val}/"
                 f"{config.num_test} images of {config.image_size}px, {config.min_objects}-"
                 f"{config.max_objects} shapes, {config.num_regions} regions, "
                 f"{vocab.size - 1} words")
  return Dataset(vocab=vocab, splits=splits, description=description)
