"""A COCO-shaped world in the released file formats, made offline (the rehearsal's first part).

COCO and its features cannot be downloaded here, but their shapes and formats can be made:

  * `dataset_coco.json`, Karpathy's format: the split's 123,287 images (82,783 train + 30,504
    restval + 5,000 val + 5,000 test at scale 1), 5 captions each, words drawn from a Zipf-like
    law p(rank) ~ (rank + 2.7)^-s whose exponent is solved for so that the count > 5 rule keeps
    `target_vocab` words (9,487 incl. UNK on real COCO) at this scale; caption lengths like
    COCO's (mean 10.5 words, a few percent longer than the 16 the labels keep). Words are
    whole words of bert-base-uncased plus compounds of two ("skatepark"), so, as in COCO's
    vocabulary, some words are several WordPieces.
  * `cocotalk_fc/<cocoid>.npy`: self-critical.pytorch's fc features, [2048] float32 each.
  * `mscoco_imgfeat/{train,val}2014_obj36.tsv`: LXMERT's obj36 TSV (36 boxes x 2048 float32 +
    pixel boxes, base64), for `regions_fraction` of each split's images (the first ones in file
    order): the full-size TSVs are 48 GB, more than a small machine's disk holds next to the
    stores.

Feature values are random (non-negative, as ReLU features are); only shapes, formats and
sizes are real. Everything is seeded: the same config makes the same files.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import os
import re
import time

import numpy as np

from scorers import tokens

# Karpathy's split of COCO 2014: train (train2014) / restval, val, test (val2014).
COCO_SPLITS = {"train": 82_783, "restval": 30_504, "val": 5_000, "test": 5_000}
COCO_MAX_ID = 581_929  # the largest COCO 2014 image id
NUM_REGIONS = 36
FEATURE_DIM = 2048
_MANDELBROT_SHIFT = 2.7  # flattens the head: "a" is ~13% of the words, as in COCO captions
_WHOLE_WORD = re.compile(r"[a-z]+")


@dataclasses.dataclass(frozen=True)
class WorldImage:
  image_id: int
  split: str  # Karpathy's: train, restval, val, test
  folder: str  # train2014 or val2014

  @property
  def filename(self) -> str:
    return f"COCO_{self.folder}_{self.image_id:012d}.jpg"


def split_counts(scale: float) -> dict[str, int]:
  """Images per Karpathy split at `scale` (1.0 = COCO); at least 2 per split."""
  if not 0 < scale <= 1:
    raise ValueError(f"scale must be in (0, 1]; found {scale}.")
  return {name: max(2, int(round(count * scale))) for name, count in COCO_SPLITS.items()}


def world_images(scale: float, seed: int) -> list[WorldImage]:
  """The images of the world, in file order (splits interleaved, as in the real file)."""
  counts = split_counts(scale)
  total = sum(counts.values())
  rng = np.random.default_rng([seed, 1])
  ids = rng.choice(COCO_MAX_ID, size=total, replace=False) + 1
  splits = np.concatenate([np.full(n, i) for i, n in enumerate(counts.values())])
  names = list(counts)
  order = rng.permutation(total)
  return [WorldImage(int(ids[i]), names[splits[i]],
                     "train2014" if names[splits[i]] == "train" else "val2014") for i in order]


def word_universe(num_types: int, multi_piece_fraction: float, seed: int) -> list[str]:
  """`num_types` distinct lower-case words by frequency rank: bert-base-uncased whole words in
  its (roughly frequency) order, a `multi_piece_fraction` share of the ranks (and every rank
  beyond the whole words) taken by compounds of two common words that are not one token."""
  with open(tokens.BERT_UNCASED_VOCAB, encoding="utf-8") as f:
    bert = [line.rstrip("\n") for line in f]
  whole = [w for w in bert if _WHOLE_WORD.fullmatch(w) and (len(w) > 1 or w == "a")]
  taken = set(bert)
  common = [w for w in whole[:3000] if len(w) >= 3]
  rng = np.random.default_rng([seed, 2])
  compound_ranks = set(np.flatnonzero(rng.random(num_types) < multi_piece_fraction).tolist())
  compound_ranks.discard(0)
  words, next_whole = [], 0
  for rank in range(num_types):
    if rank not in compound_ranks and next_whole < len(whole):
      words.append(whole[next_whole])
      next_whole += 1
      continue
    while True:
      first, second = rng.integers(0, len(common), 2)
      word = common[first] + common[second]
      if word not in taken:
        taken.add(word)
        words.append(word)
        break
  return words


def zipf_probabilities(num_types: int, exponent: float) -> np.ndarray:
  ranks = np.arange(num_types, dtype=np.float64)
  weights = (ranks + _MANDELBROT_SHIFT) ** -exponent
  return weights / weights.sum()


def expected_vocab(num_tokens: int, probabilities: np.ndarray, threshold: int) -> float:
  """Expected number of words seen more than `threshold` times in `num_tokens` draws (Poisson)."""
  lam = num_tokens * probabilities
  # P(X <= threshold) for X ~ Poisson(lam), summed in log space for large lam.
  with np.errstate(divide="ignore"):
    log_lam = np.log(lam)
  terms = np.stack([np.exp(k * log_lam - lam - math.lgamma(k + 1)) for k in range(threshold + 1)])
  return float(np.sum(1.0 - terms.sum(axis=0)))


def solve_exponent(num_tokens: int, num_types: int, target_vocab: int, threshold: int) -> float:
  """The Zipf exponent whose expected count > `threshold` vocabulary is `target_vocab` words."""
  low, high = 0.3, 4.0  # expected_vocab decreases as the exponent grows
  best_low = expected_vocab(num_tokens, zipf_probabilities(num_types, low), threshold)
  best_high = expected_vocab(num_tokens, zipf_probabilities(num_types, high), threshold)
  if not best_high <= target_vocab <= best_low:
    raise ValueError(
        f"target_vocab={target_vocab} cannot be reached with {num_tokens:,} caption words over "
        f"{num_types:,} word types (possible: {best_high:.0f} .. {best_low:.0f}); lower "
        "target_vocab for this scale or raise num_word_types.")
  for _ in range(50):
    middle = 0.5 * (low + high)
    if expected_vocab(num_tokens, zipf_probabilities(num_types, middle), threshold) > target_vocab:
      low = middle
    else:
      high = middle
  return 0.5 * (low + high)


def caption_lengths(rng: np.random.Generator, count: int) -> np.ndarray:
  """COCO-like caption lengths: 7 + Poisson(3.3), and 3% of captions 4-14 words longer."""
  lengths = 7 + rng.poisson(3.3, count)
  longer = rng.random(count) < 0.03
  lengths[longer] += rng.integers(4, 15, int(longer.sum()))
  return lengths


def write_karpathy_json(path: str, images: list[WorldImage], *, captions_per_image: int,
                        num_word_types: int, target_vocab: int, count_threshold: int,
                        multi_piece_fraction: float, seed: int) -> dict:
  """Writes `dataset_coco.json` (streamed, no whole-file object in memory); returns its stats."""
  start = time.perf_counter()
  rng = np.random.default_rng([seed, 3])
  num_captions = len(images) * captions_per_image
  lengths = caption_lengths(rng, num_captions)
  exponent = solve_exponent(int(lengths.sum()), num_word_types, target_vocab, count_threshold)
  words = np.array(word_universe(num_word_types, multi_piece_fraction, seed), dtype=object)
  draws = rng.choice(num_word_types, size=int(lengths.sum()),
                     p=zipf_probabilities(num_word_types, exponent))
  counts = np.bincount(draws, minlength=num_word_types)
  ends = np.cumsum(lengths)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write('{"images": [')
    sentence = 0
    for number, image in enumerate(images):
      sentences = []
      for _ in range(captions_per_image):
        caption = list(words[draws[ends[sentence] - lengths[sentence]:ends[sentence]]])
        raw = " ".join(caption).capitalize() + "."
        sentences.append({"tokens": caption, "raw": raw, "imgid": number, "sentid": sentence})
        sentence += 1
      entry = {"filepath": image.folder, "sentids": [s["sentid"] for s in sentences],
               "filename": image.filename, "imgid": number, "split": image.split,
               "sentences": sentences, "cocoid": image.image_id}
      f.write(("," if number else "") + json.dumps(entry))
    f.write('], "dataset": "coco"}')
  os.replace(tmp, path)
  kept = int(np.sum(counts > count_threshold))
  return {"images": len(images), "captions": num_captions, "words": int(lengths.sum()),
          "mean_caption_words": float(lengths.mean()),
          "captions_over_16_words": float(np.mean(lengths > 16)),
          "word_types_seen": int(np.sum(counts > 0)), "zipf_exponent": exponent,
          "vocab_count_gt_threshold": kept, "vocab_with_unk": kept + 1,
          "top_word_share": float(counts.max() / counts.sum()),
          "bytes": os.path.getsize(path), "seconds": time.perf_counter() - start}


def write_fc_folder(folder: str, images: list[WorldImage], seed: int) -> dict:
  """self-critical's `<cocoid>.npy` files, [2048] float32 each; existing files are kept."""
  start = time.perf_counter()
  os.makedirs(folder, exist_ok=True)
  written = 0
  for image in images:
    path = os.path.join(folder, f"{image.image_id}.npy")
    if os.path.exists(path):
      continue
    rng = np.random.default_rng([seed, 4, image.image_id])
    fc = np.abs(rng.standard_normal(FEATURE_DIM, dtype=np.float32)) * 0.5
    np.save(path + ".tmp.npy", fc)
    os.replace(path + ".tmp.npy", path)
    written += 1
  return {"files": len(images), "written": written, "bytes": _folder_bytes(folder),
          "seconds": time.perf_counter() - start}


def region_images(images: list[WorldImage], fraction: float) -> list[WorldImage]:
  """The first `fraction` of each split's images (file order): those that get regions."""
  by_split: dict[str, list[WorldImage]] = {}
  for image in images:
    by_split.setdefault(image.split, []).append(image)
  chosen = set()
  for split, members in by_split.items():
    keep = max(1, int(round(len(members) * fraction)))
    chosen.update(image.image_id for image in members[:keep])
  return [image for image in images if image.image_id in chosen]


def _b64(array: np.ndarray, dtype: str) -> bytes:
  return base64.b64encode(np.ascontiguousarray(array, dtype).tobytes())


def obj36_row(image: WorldImage, seed: int) -> bytes:
  """One line of LXMERT's obj36 TSV (airsplay/lxmert `src/utils.py` columns) with newline."""
  rng = np.random.default_rng([seed, 5, image.image_id])
  width, height = 640, int(rng.integers(360, 641))
  x1 = rng.uniform(0, width * 0.7, NUM_REGIONS)
  y1 = rng.uniform(0, height * 0.7, NUM_REGIONS)
  boxes = np.stack([x1, y1, x1 + rng.uniform(16, width * 0.3, NUM_REGIONS),
                    y1 + rng.uniform(16, height * 0.3, NUM_REGIONS)], axis=1)
  feats = np.maximum(rng.standard_normal((NUM_REGIONS, FEATURE_DIM), dtype=np.float32), 0)
  fields = [image.filename[:-4].encode(), str(height).encode(), str(width).encode(),
            _b64(rng.integers(0, 1600, NUM_REGIONS), "<i8"),
            _b64(np.sort(rng.uniform(0.2, 1, NUM_REGIONS))[::-1], "<f4"),
            _b64(rng.integers(0, 400, NUM_REGIONS), "<i8"),
            _b64(rng.uniform(0, 1, NUM_REGIONS), "<f4"), str(NUM_REGIONS).encode(),
            _b64(boxes, "<f4"), _b64(feats, "<f4")]
  return b"\t".join(fields) + b"\n"


def write_obj36_tsvs(folder: str, images: list[WorldImage], seed: int) -> dict:
  """`train2014_obj36.tsv` and `val2014_obj36.tsv` for `images` (rewritten whole if present
  but short: a TSV has no index to resume by)."""
  start = time.perf_counter()
  os.makedirs(folder, exist_ok=True)
  out = {"rows": len(images), "files": []}
  for split_folder in ("train2014", "val2014"):
    members = [image for image in images if image.folder == split_folder]
    path = os.path.join(folder, f"{split_folder}_obj36.tsv")
    done = os.path.join(folder, f".{split_folder}_obj36.rows")
    if os.path.exists(done) and os.path.exists(path) and open(done).read() == str(len(members)):
      out["files"].append(path)
      continue
    with open(path + ".tmp", "wb") as f:
      for image in members:
        f.write(obj36_row(image, seed))
    os.replace(path + ".tmp", path)
    with open(done, "w") as f:
      f.write(str(len(members)))
    out["files"].append(path)
  out["bytes"] = sum(os.path.getsize(p) for p in out["files"])
  out["bytes_per_image"] = out["bytes"] / max(1, len(images))
  out["seconds"] = time.perf_counter() - start
  return out


def _folder_bytes(folder: str) -> int:
  total = 0
  for root, _, names in os.walk(folder):
    for name in names:
      try:
        total += os.path.getsize(os.path.join(root, name))
      except OSError:
        pass
  return total


def folder_bytes(folder: str) -> int:
  """Bytes of every file under `folder` (0 when it does not exist)."""
  return _folder_bytes(folder) if os.path.isdir(folder) else 0
