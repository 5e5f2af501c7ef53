"""The captioner's closed vocabulary and label arrays, by the Karpathy / self-critical rules.

Rules (self-critical.pytorch `scripts/prepro_labels.py`): captions are lower-case word lists;
a word is kept when its count in the counted captions (self-critical counts every image of
`dataset_coco.json`; the synthetic world counts its training split) is strictly greater than
`count_threshold` (5 on COCO), every other word becomes `UNK`; `UNK` is appended last, so its id
is the largest; ids start at 1 because 0 is BOS, EOS and PAD at once; captions are truncated to
`max_length` words (16 on COCO). On the Karpathy split of COCO this gives 9,487 words (UNK
included), i.e. 9,488 logits.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
from collections.abc import Iterable, Sequence

import numpy as np

UNK = "UNK"
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize_caption(caption: str) -> list[str]:
  """Lower-cases and splits a raw caption into words, dropping punctuation (Karpathy style)."""
  return _WORD.findall(caption.lower())


@dataclasses.dataclass(frozen=True)
class Vocab:
  """Word list with id 0 reserved: `words[0]` is the empty EOS/PAD entry, `words[i]` is id i."""
  words: tuple[str, ...]

  def __post_init__(self):
    if not self.words or self.words[0] != "":
      raise ValueError("Vocab.words[0] must be '' (id 0 is BOS/EOS/PAD); found "
                       f"{self.words[:1]!r}.")
    object.__setattr__(self, "_index", {w: i for i, w in enumerate(self.words)})

  @property
  def size(self) -> int:
    """Number of logits: the words plus id 0."""
    return len(self.words)

  @property
  def unk_id(self) -> int:
    return self._index[UNK]

  def encode(self, words: Sequence[str], max_length: int) -> np.ndarray:
    """Words -> [max_length] int32 ids, unknown words -> UNK, truncated, 0-padded."""
    ids = np.zeros((max_length,), np.int32)
    unk = self._index.get(UNK, 0)
    for position, word in enumerate(words[:max_length]):
      ids[position] = self._index.get(word, unk)
    return ids

  def decode(self, ids: Iterable[int]) -> str:
    """Ids -> space-joined words, stopping at the first 0."""
    out = []
    for i in ids:
      i = int(i)
      if i == 0:
        break
      out.append(self.words[i])
    return " ".join(out)

  def decode_batch(self, ids: np.ndarray) -> list[str]:
    return [self.decode(row) for row in np.asarray(ids)]

  def to_json(self) -> str:
    return json.dumps({"ix_to_word": {str(i): w for i, w in enumerate(self.words) if i}})

  @classmethod
  def from_json(cls, text: str, source: str = "<string>") -> "Vocab":
    """Reads self-critical's `cocotalk.json`-style `{"ix_to_word": {"1": word, ...}}`."""
    try:
      table = json.loads(text)["ix_to_word"]
      ids = sorted(int(k) for k in table)
    except (KeyError, ValueError, TypeError) as error:
      raise ValueError(f"{source}: expected a JSON object with field 'ix_to_word' mapping "
                       f"'1'..'V' to words; could not read it ({error}).") from error
    if ids != list(range(1, len(ids) + 1)):
      raise ValueError(f"{source}: field 'ix_to_word' must have keys '1'..'{len(ids)}' with no "
                       f"gaps; found keys {ids[:5]}...")
    return cls(("",) + tuple(table[str(i)] for i in ids))


def build_vocab(train_captions: Iterable[Sequence[str]], count_threshold: int) -> Vocab:
  """Words with count > count_threshold, by descending count then alphabetically, then UNK.

  The order of kept words does not change results; a fixed order keeps ids reproducible.
  """
  counts = collections.Counter(w for caption in train_captions for w in caption)
  kept = sorted((w for w, c in counts.items() if c > count_threshold and w != UNK),
                key=lambda w: (-counts[w], w))
  return Vocab(("",) + tuple(kept) + (UNK,))


def encode_labels(vocab: Vocab, captions_per_image: Sequence[Sequence[Sequence[str]]],
                  captions_per_label: int, max_length: int) -> np.ndarray:
  """Per image, the first `captions_per_label` captions (cycled if fewer) -> [N, C, max_length]."""
  labels = np.zeros((len(captions_per_image), captions_per_label, max_length), np.int32)
  for i, captions in enumerate(captions_per_image):
    if not captions:
      raise ValueError(f"image #{i} has no reference captions; every image needs at least one.")
    for j in range(captions_per_label):
      labels[i, j] = vocab.encode(captions[j % len(captions)], max_length)
  return labels
