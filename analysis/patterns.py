"""Sentence prefixes and sentence patterns of captions (Table 5, Figure 1 of the paper).

The paper tags each caption, merges noun phrases, reads off a prefix and sums the rest up as a
regular expression such as `Prefix+((CCONJ)?+(NOUN.P)*)*`. Its legend, which we follow:

* NOUN.P is a noun phrase: determiners, then modifiers, then one or more nouns
  (`DET* ADJ* NOUN+`; we count NUM as a modifier and a possessive pronoun such as "his" as a
  determiner). IMAGE.P is a noun phrase whose nouns include "image" ("image image",
  "closeup image"); the paper writes its determiners literally ("a+IMAGE.P").
* REL is a relation word: a preposition (ADP) or a verb (VERB). CCONJ is a conjunction; AUX a
  copula or auxiliary ("is", "was"); "that" is kept as a word, as in the paper's prefixes.
  Any other tag (ADV, PRON, PART, ...) stands for itself.
* (X)* means X repeated one or more times, (X)? zero or one time.

Our reading of the paper's definitions, applied the same way to every caption:

* The prefix is the leading run of noun phrases plus the run of non-noun-phrase chunks right
  after it ("a image image that is", "a table table of", "a bird that"); a caption with no such
  connector is all prefix. Its abstract form collapses the noun phrases into `(NOUN.P)*`, keeps
  IMAGE.P, "that" and AUX words literally and writes ADP/VERB as REL and CCONJ as CCONJ:
  `(NOUN.P)*+REL`, `a+IMAGE.P+that+is`, `(NOUN.P)*+that`. The literal prefix (its words) is
  reported too.
* After the prefix the caption is cut into units, each a run of connector chunks followed by a
  run of noun phrases. The pattern is `Prefix+(<unit>)*`, where a connector kind present in
  every unit is written bare and one present in only some is written `(K)?`, and the noun
  phrase part is NOUN.P, or (NOUN.P)* when some unit packs several together.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence

from analysis.pos import TaggedCaption

NOUN_P, IMAGE_P = "NOUN.P", "IMAGE.P"
IMAGE_WORDS = frozenset({"image", "images"})
_PHRASES = (NOUN_P, IMAGE_P)
# Connector symbols written as the word itself in prefixes.
_LITERAL_IN_PREFIX = ("that", "AUX")


@dataclasses.dataclass(frozen=True)
class Chunk:
  """A noun phrase (kind NOUN.P / IMAGE.P) or one other token (kind REL, CCONJ, AUX, ...)."""
  kind: str
  words: tuple[str, ...]
  # For noun phrases, how many leading words are determiners (written literally for IMAGE.P).
  num_det: int = 0


def symbol(word: str, pos: str, tag: str) -> str:
  """The symbol of one token before noun phrases are merged."""
  if word == "that":
    return "that"
  if pos == "DET" or tag == "PRP$":
    return "DET"
  if pos in ("ADJ", "NUM"):
    return "ADJ"
  if pos in ("NOUN", "PROPN"):
    return "NOUN"
  if pos in ("ADP", "VERB"):
    return "REL"
  return pos  # AUX, CCONJ, ADV, PRON, PART, SCONJ, PUNCT, ...


def chunk(tagged: TaggedCaption) -> list[Chunk]:
  """Merges `DET* ADJ* NOUN+` runs into noun phrases; every other token is its own chunk."""
  symbols = [symbol(w, p, t) for w, p, t in zip(tagged.words, tagged.pos, tagged.tag)]
  words, out, i, n = tagged.words, [], 0, len(symbols)
  while i < n:
    j = i
    while j < n and symbols[j] == "DET":
      j += 1
    num_det = j - i
    while j < n and symbols[j] == "ADJ":
      j += 1
    k = j
    while k < n and symbols[k] == "NOUN":
      k += 1
    if k > j:  # at least one noun: a noun phrase
      nouns = set(words[j:k])
      kind = IMAGE_P if nouns & IMAGE_WORDS else NOUN_P
      out.append(Chunk(kind, tuple(words[i:k]), num_det))
      i = k
    else:
      out.append(Chunk(symbols[i], (words[i],)))
      i += 1
  return out


def _split_prefix(chunks: list[Chunk]) -> tuple[list[Chunk], list[Chunk]]:
  i = 0
  while i < len(chunks) and chunks[i].kind in _PHRASES:
    i += 1
  while i < len(chunks) and chunks[i].kind not in _PHRASES:
    i += 1
  return chunks[:i], chunks[i:]


def _render_prefix(chunks: list[Chunk]) -> str:
  parts = []
  for c in chunks:
    if c.kind == NOUN_P:
      if not parts or parts[-1] != f"({NOUN_P})*":
        parts.append(f"({NOUN_P})*")
    elif c.kind == IMAGE_P:
      parts.extend(list(c.words[:c.num_det]) + [IMAGE_P])
    elif c.kind in _LITERAL_IN_PREFIX:
      parts.append(c.words[0])
    elif not parts or parts[-1] != c.kind:  # "parked on" is one relation: REL, not REL+REL
      parts.append(c.kind)
  return "+".join(parts)


def _render_pattern(rest: list[Chunk]) -> str:
  units = []  # (connector kinds, number of noun phrases)
  kinds, phrases = [], 0
  for c in rest:
    if c.kind in _PHRASES:
      phrases += 1
      continue
    if phrases:  # a connector after noun phrases starts a new unit
      units.append((kinds, phrases))
      kinds, phrases = [], 0
    if not kinds or kinds[-1] != c.kind:
      kinds.append(c.kind)
  if kinds or phrases:
    units.append((kinds, phrases))
  if not units:
    return "Prefix"
  order = []
  for unit_kinds, _ in units:
    order.extend(k for k in unit_kinds if k not in order)
  parts = [k if all(k in u for u, _ in units) else f"({k})?" for k in order]
  counts = [p for _, p in units]
  packed = max(counts) > 1
  if min(counts) > 0:
    parts.append(f"({NOUN_P})*" if packed else NOUN_P)
  elif max(counts) > 0:
    parts.append(f"(({NOUN_P})*)?" if packed else f"({NOUN_P})?")
  if len(parts) == 1:
    part = parts[0]
    return "Prefix+" + (part if part.endswith(")*") else f"({part})*")
  return "Prefix+(" + "+".join(parts) + ")*"


@dataclasses.dataclass(frozen=True)
class CaptionShape:
  """The prefix and pattern of one caption."""
  caption: str
  prefix: str          # abstract, e.g. "(NOUN.P)*+that+is"
  literal_prefix: str  # its words, e.g. "a man man that is"
  pattern: str         # e.g. "Prefix+((CCONJ)?+NOUN.P)*"


def caption_shape(tagged: TaggedCaption) -> CaptionShape:
  chunks = chunk(tagged)
  head, rest = _split_prefix(chunks)
  return CaptionShape(caption=" ".join(tagged.words), prefix=_render_prefix(head),
                      literal_prefix=" ".join(w for c in head for w in c.words),
                      pattern=_render_pattern(rest))


def _top(values: Sequence[str], examples: Sequence[str], k: int) -> list[dict]:
  counts = collections.Counter(values)
  first = {}
  for value, example in zip(values, examples):
    first.setdefault(value, example)
  ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:k]
  return [{"value": v, "count": c, "ratio": c / len(values), "example": first[v]}
          for v, c in ranked]


def summarize(tagged: Sequence[TaggedCaption], k: int = 5, max_ngram: int = 5) -> dict:
  """Table 5 for one run: the top-k prefixes (abstract and literal) and patterns.

  Returns:
    {"prefix": [...], "literal_prefix": [...], "pattern": [...], "start_ngrams": {n: [...]}},
    each list of {"value", "count", "ratio", "example"} ranked by count (ties alphabetical);
    "start_ngrams" are the most common first n words, n = 1..max_ngram (the paper read its
    prefixes off such n-grams).
  """
  if not tagged:
    raise ValueError("analysis/patterns.py: summarize got no captions.")
  shapes = [caption_shape(t) for t in tagged]
  captions = [s.caption for s in shapes]
  out = {
      "prefix": _top([s.prefix for s in shapes], captions, k),
      "literal_prefix": _top([s.literal_prefix for s in shapes], captions, k),
      "pattern": _top([s.pattern for s in shapes], captions, k),
      "start_ngrams": {},
  }
  for n in range(1, max_ngram + 1):
    long_enough = [t for t in tagged if len(t.words) >= n]
    if long_enough:
      out["start_ngrams"][n] = _top([" ".join(t.words[:n]) for t in long_enough],
                                    [" ".join(t.words) for t in long_enough], k)
  return out
