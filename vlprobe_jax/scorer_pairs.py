"""What the tiny scorers see while pretraining: image-caption pairs, negatives, fixed-width ids.

`PairSampler` draws rows of one split, deterministically from a numpy rng: positives (one of the
image's references) and three kinds of negatives, none of them one of the image's references:
  * "random": a reference of another image;
  * "related": a reference of an image with the same background or an object of the same
    colour and shape (needs the synthetic world's `split.scenes`; else a random negative);
  * "swap": one of the image's references with one colour, shape or size word replaced by a
    word of the same kind and another category ("red" -> "blue", "ball" -> "star", never
    "ball" -> "circle"), keeping "a"/"an" right, so exactly one word differs.
The last two make the score depend on the visual words, which the paper's analysis probes.

`TextEncoder` tokenizes with the scorer's real tokenizer at one fixed width, so the train step
compiles once. `PairBatches` is the pretraining source of the one input pipeline
(`data.pipeline.BatchIterator`): step -> batch, all drawn from one seeded rng.
"""

from __future__ import annotations

import numpy as np

from vlprobe_jax.data import synthetic

KINDS = ("positive", "random", "related", "swap")


def swap_classes() -> dict[str, tuple[str, str]]:
  """Visual word -> (kind, category): a swap replaces a word by one of the same kind and of
  another category ("red" -> "blue", "ball" -> "square" but never "circle", "tiny" -> "big")."""
  classes = {colour: ("colour", colour) for colour in synthetic.COLOUR_NAMES}
  for shape, nouns in synthetic.SHAPE_NOUNS.items():
    for singular, plural in nouns:
      classes[singular] = ("shape", shape)
      classes[plural] = ("shapes", shape)
  for size, words in synthetic.SIZE_WORDS.items():
    classes.update({word: ("size", size) for word in words})
  return classes


class PairSampler:
  """Samples (image, caption, match, kind) rows of one split, deterministically from an rng.

  Kinds: "positive" (one of the image's references), "random" (a reference of another image),
  "related" (a reference of an image with the same background or an object of the same colour
  and shape; needs `split.scenes`, else random), "swap" (a reference with one visual word
  replaced, see `swap_classes`). No negative is one of its image's references.
  """

  def __init__(self, split, words=None):
    self.split = split
    self.references = split.references
    self._refsets = [set(refs) for refs in self.references]
    known = set(words) if words is not None else None
    classes = swap_classes()
    self.classes = {w: c for w, c in classes.items() if known is None or w in known}
    self._related = self._related_index(getattr(split, "scenes", None))

  def _related_index(self, scenes):
    """Per image, the lists of other images that share one of its keys (background, object)."""
    if scenes is None:
      return None
    groups: dict[tuple, list[int]] = {}
    keys = []
    for i in range(len(self.split)):
      own = [("background", int(scenes.background[i]))]
      own += sorted({("object", int(scenes.shape[i, k]), int(scenes.colour[i, k]))
                     for k in range(scenes.num_objects[i])})
      keys.append(own)
      for key in own:
        groups.setdefault(key, []).append(i)
    groups = {key: np.asarray(members) for key, members in groups.items()}
    return [[groups[key] for key in own if len(groups[key]) > 1] for own in keys]

  def swap(self, caption: str, rng: np.random.Generator) -> str | None:
    """`caption` with one visual word replaced (a/an agreement kept), or None if none can be."""
    words = caption.split()
    options = []
    for pos, word in enumerate(words):
      if word not in self.classes:
        continue
      kind, category = self.classes[word]
      after_article = pos > 0 and words[pos - 1] in ("a", "an")
      for other, (other_kind, other_category) in self.classes.items():
        # Keep "a"/"an" right without touching a second word: same initial vowel-ness.
        if other_kind == kind and other_category != category and (
            not after_article or (other[0] in "aeiou") == (word[0] in "aeiou")):
          options.append((pos, other))
    if not options:
      return None
    pos, other = options[int(rng.integers(len(options)))]
    return " ".join(words[:pos] + [other] + words[pos + 1:])

  def _other_caption(self, i: int, pool: np.ndarray | None, rng: np.random.Generator) -> str:
    n = len(self.split)
    for _ in range(20):
      j = int(rng.choice(pool)) if pool is not None else int((i + rng.integers(1, n)) % n)
      if j == i:
        continue
      refs = self.references[j]
      caption = refs[int(rng.integers(len(refs)))]
      if caption not in self._refsets[i]:
        return caption
    raise ValueError(f"vlprobe_jax/scorer_pairs.py: no caption of another image differs from the "
                     f"references of {self.split.name} image {i}; the split needs images with "
                     "distinct captions.")

  def swap_negative(self, i: int, caption: str, rng: np.random.Generator) -> tuple[str, str]:
    """`caption` of image i with a word swapped, and "swap"; if no swap gives a caption that
    is not one of the image's references (rare), a random negative and "random"."""
    for _ in range(5):
      swapped = self.swap(caption, rng)
      if swapped is None:
        break
      if swapped not in self._refsets[i]:
        return swapped, "swap"
    return self._other_caption(i, None, rng), "random"

  def caption(self, i: int, kind: str, rng: np.random.Generator) -> tuple[str, str]:
    """A caption of `kind` for image i; returns (caption, the kind actually used)."""
    refs = self.references[i]
    ref = refs[int(rng.integers(len(refs)))]
    if kind == "positive":
      return ref, kind
    if kind == "swap":
      return self.swap_negative(i, ref, rng)
    if kind == "related" and self._related is not None and self._related[i]:
      pools = self._related[i]
      return self._other_caption(i, pools[int(rng.integers(len(pools)))], rng), kind
    return self._other_caption(i, None, rng), "random"

  def sample(self, rng: np.random.Generator, batch: int, weights: dict[str, float],
             paired: bool = True):
    """Rows of image-caption pairs, half of them positives.

    Args:
      rng: the host rng (all randomness comes from it).
      batch: the number of rows (even when `paired`).
      weights: relative weights of the negative kinds ("random", "related", "swap").
      paired: every image appears twice, with a positive and with a negative, and a random
        negative is the positive of another image of the batch, so that neither the image nor
        the text alone says anything about the label. Otherwise each row is a distinct image,
        positive or negative with probability 1/2.

    Returns (images [batch] int, captions list[str], match [batch] int32, kinds list[str]).
    """
    total = sum(weights.get(k, 0.0) for k in KINDS[1:])
    probs = np.asarray([weights.get(k, 0.0) / total for k in KINDS[1:]])
    n = len(self.split)
    if paired:
      half = batch // 2
      images = rng.choice(n, size=half, replace=n < half)
      positives = [self.caption(int(i), "positive", rng)[0] for i in images]
      rows = [(int(i), c, "positive") for i, c in zip(images, positives)]
      for j, i in enumerate(images):
        kind = KINDS[1 + int(rng.choice(3, p=probs))]
        other = positives[(j + 1) % half]
        if kind == "random" and half > 1 and other not in self._refsets[int(i)]:
          rows.append((int(i), other, kind))
        else:
          rows.append((int(i),) + self.caption(int(i), kind, rng))
    else:
      images = rng.choice(n, size=batch, replace=n < batch)
      rows = []
      for i in images:
        kind = "positive" if rng.random() < 0.5 else KINDS[1 + int(rng.choice(3, p=probs))]
        rows.append((int(i),) + self.caption(int(i), kind, rng))
    images = np.asarray([r[0] for r in rows])
    captions, kinds = [r[1] for r in rows], [r[2] for r in rows]
    match = np.asarray([k == "positive" for k in kinds], np.int32)
    return images, captions, match, kinds


class TextEncoder:
  """The scorer's real tokenizer, padded to one fixed width (one compile for all batches)."""

  def __init__(self, spec, scorer_config, splits):
    self.tokenizer = spec.tokenizer(scorer_config)
    self.fmt = spec.text_format(scorer_config)
    longest = 2
    for split in splits:
      texts = [self.fmt.text(c) for refs in split.references for c in refs]
      ids = self.tokenizer(texts, truncation=True, max_length=self.fmt.max_length)["input_ids"]
      longest = max([longest] + [len(x) for x in ids])
    # Room for a swapped word of more pieces than the one it replaces.
    self.width = min(self.fmt.max_length, longest + 2)

  def __call__(self, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = self.tokenizer([self.fmt.text(c) for c in captions], truncation=True,
                             max_length=self.width, padding="max_length", return_tensors="np")
    mask = np.asarray(encoded["attention_mask"], np.int32)
    ids = np.where(mask > 0, np.asarray(encoded["input_ids"], np.int32), self.fmt.pad_id)
    return ids, mask


class PairBatches:
  """`step -> batch` of scorer pretraining, every draw from one rng seeded with `seed`.

  Batches depend on the draws before them, so steps must come in order; asked for an earlier
  step (a resumed run), it replays the draws from step 0 (host work only, no model).

  Batch: "text_ids", "text_mask" [N, T] int32, "images" (the N rows' raw image side,
  `Split.scorer_images`), "match" [N] int32 (1 = the caption fits its image; all 1 for a
  contrastive scorer, whose caption i belongs to image i).
  """

  def __init__(self, split, words, encoder: TextEncoder, *, batch_size: int, seed: int,
               contrastive: bool, negatives: dict[str, float], paired: bool):
    self.split, self.encoder = split, encoder
    self.sampler = PairSampler(split, words)
    self.batch_size, self.seed, self.contrastive = batch_size, seed, contrastive
    self.negatives, self.paired = negatives, paired
    self._rng, self._next = np.random.default_rng(seed), 0

  def _draw(self):
    rng, n = self._rng, len(self.split)
    if self.contrastive:  # Distinct images, each with one of its references.
      images = rng.choice(n, size=self.batch_size, replace=False)
      captions = [self.sampler.caption(int(j), "positive", rng)[0] for j in images]
      match = np.ones((self.batch_size,), np.int32)
    else:
      images, captions, match, _ = self.sampler.sample(rng, self.batch_size, self.negatives,
                                                       self.paired)
    return images, captions, match

  def __call__(self, step: int) -> dict:
    if step < self._next:
      self._rng, self._next = np.random.default_rng(self.seed), 0
    while self._next < step:
      self._draw()
      self._next += 1
    images, captions, match = self._draw()
    self._next += 1
    ids, mask = self.encoder(captions)
    return {"text_ids": ids, "text_mask": mask, "images": self.split.scorer_images(images),
            "match": match}
