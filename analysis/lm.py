"""Fluency of captions: a trigram Kneser-Ney language model of the training captions (Table 4).

The paper trained a trigram model with SRILM; SRILM is not on PyPI, so we fit our own and say
exactly which model it is, so that numbers are reproducible and checkable against nltk:

* Interpolated Kneser-Ney with one fixed absolute discount `d` at every order, exactly nltk's
  `nltk.lm.KneserNeyInterpolated(order, discount=d)` (including its choices: the highest order
  uses raw counts, lower orders use continuation counts N1+(. v w) / N1+(. v .), and the
  back-off weight of a lower order is d * N1+(v .) / N1+(. v .) with N1+(v .) taken from raw
  bigram types; an unseen context backs off with weight 1).
* Training sentences are padded as by nltk's `padded_everygram_pipeline(order, ...)`: order-1
  `<s>` on the left and order-1 `</s>` on the right; every 1..order-gram of the padded sentence
  is counted.
* Vocabulary as nltk's `Vocabulary(unk_cutoff=c)`: training words seen fewer than `c` times are
  counted as `<UNK>`; at scoring time every word outside the vocabulary (and the captioner's own
  `UNK` token) is read as `<UNK>`. The default `unk_cutoff=2` gives `<UNK>` the mass of the
  training singletons, so unseen words get a small, non-zero probability.
* A caption of n words is scored as n + 1 events (its words and one `</s>`), each predicted from
  the two previous tokens with `<s> <s>` before the first word. This is SRILM's convention;
  nltk's `ngrams(pad_both_ends(s, 3), 3)` would also score a second, near-certain `</s>`.
  Perplexity is 2 ** (mean negative log2 probability over all events of all captions), the
  corpus-level perplexity SRILM's `ngram -ppl` reports.
* An event with probability 0 (only possible for `<UNK>` when no training word fell under the
  cutoff) is left out of the perplexity and counted as `zero_prob_events`, as SRILM leaves out
  OOV words.

Counts are packed into sorted int64 keys, so scoring thousands of captions is a handful of
vectorised `searchsorted` calls.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

BOS, EOS, UNK = "<s>", "</s>", "<UNK>"
# The captioner's own unknown-word token (vlprobe_jax.data.vocab.UNK) means the same thing.
CAPTIONER_UNK = "UNK"


def _lookup_sorted(keys: np.ndarray, values: np.ndarray, query: np.ndarray,
                   default: float = 0.0) -> np.ndarray:
  """values[i] where keys[i] == query, else default; keys sorted ascending."""
  if len(keys) == 0:
    return np.full(query.shape, default, np.float64)
  pos = np.clip(np.searchsorted(keys, query), 0, len(keys) - 1)
  found = keys[pos] == query
  return np.where(found, values[pos], default).astype(np.float64)


@dataclasses.dataclass
class PerplexityResult:
  """Perplexity of a set of captions.

  Attributes:
    perplexity: corpus-level perplexity over all scored events.
    per_caption: [num_captions] float64 perplexity of each caption on its own.
    num_events: events scored (words + one end-of-sentence per caption).
    zero_prob_events: events left out because the model gives them probability 0.
    oov_words: caption words outside the model's vocabulary (read as <UNK>).
  """
  perplexity: float
  per_caption: np.ndarray
  num_events: int
  zero_prob_events: int
  oov_words: int


class KneserNeyLM:
  """Interpolated Kneser-Ney n-gram LM, numerically equal to nltk's `KneserNeyInterpolated`.

  Only order 3 (and 2) is needed here; the tables below are written for order 3 and order 2
  reuses them with the trigram level switched off.
  """

  def __init__(self, sentences: Iterable[Sequence[str]], order: int = 3,
               discount: float = 0.75, unk_cutoff: int = 2):
    """Counts the training sentences.

    Args:
      sentences: tokenized training captions (lists of words).
      order: 2 or 3.
      discount: the fixed absolute discount d, 0 < d < 1 (0.75 is the usual KN value; nltk's
        default is 0.1).
      unk_cutoff: training words seen fewer times than this are counted as <UNK> (1 keeps all).
    """
    if order not in (2, 3):
      raise ValueError(f"analysis/lm.py: field 'order' must be 2 or 3; found {order}.")
    if not 0.0 < discount < 1.0:
      raise ValueError(f"analysis/lm.py: field 'discount' must be in (0, 1); found {discount}.")
    sentences = [list(s) for s in sentences]
    if not any(sentences):
      raise ValueError("analysis/lm.py: no training sentences (all empty); pass the tokenized "
                       "training captions.")
    self.order, self.discount, self.unk_cutoff = order, float(discount), int(unk_cutoff)

    pad = order - 1
    word_counts = collections.Counter(w for s in sentences for w in s)
    # As nltk's Vocabulary built from the padded sentences: <s> and </s> are always in.
    kept = sorted(w for w, c in word_counts.items() if c >= unk_cutoff)
    self.words = [BOS, EOS, UNK] + [w for w in kept if w not in (BOS, EOS, UNK)]
    self.index = {w: i for i, w in enumerate(self.words)}
    self.size = v = len(self.words)

    # All padded sentences in one array; an n-gram is kept when it lies inside one sentence.
    flat, owner = [], []
    for n, sentence in enumerate(sentences):
      ids = [0] * pad + self._ids(sentence) + [1] * pad
      flat.extend(ids)
      owner.extend([n] * len(ids))
    flat, owner = np.array(flat, np.int64), np.array(owner, np.int64)
    inside2 = owner[:-1] == owner[1:]
    flat_bi = (flat[:-1] * v + flat[1:])[inside2]
    bi_keys = np.unique(flat_bi)
    # Unigram level: continuation counts N1+(. w) over bigram types, normalised by their number.
    self._cont1 = np.bincount(bi_keys % v, minlength=v).astype(np.float64)
    self._num_bigram_types = float(len(bi_keys))
    # Number of bigram types that start with v: N1+(v .), the numerator of the bigram gamma.
    self._follow2 = np.bincount(bi_keys // v, minlength=v).astype(np.float64)

    if order == 3:
      inside3 = owner[:-2] == owner[2:]
      flat_tri = (flat[:-2] * v * v + flat[1:-1] * v + flat[2:])[inside3]
      tri_keys, tri_counts = np.unique(flat_tri, return_counts=True)
      self._tri_keys, self._tri_counts = tri_keys, tri_counts.astype(np.float64)
      ctx = tri_keys // v
      self._ctx3_keys, first = np.unique(ctx, return_index=True)
      self._ctx3_total = np.add.reduceat(self._tri_counts, first)          # c(u v .)
      self._ctx3_types = np.diff(np.append(first, len(ctx))).astype(np.float64)  # N1+(u v .)
      # Bigram level, from trigram types: N1+(. v w) and N1+(. v .).
      suffix = tri_keys % (v * v)
      self._cont2_keys, cont2 = np.unique(suffix, return_counts=True)
      self._cont2 = cont2.astype(np.float64)
      self._mid_types = np.bincount((tri_keys // v) % v, minlength=v).astype(np.float64)
    else:
      bi_keys, bi_counts = np.unique(flat_bi, return_counts=True)
      self._bi_keys, self._bi_counts = bi_keys, bi_counts.astype(np.float64)
      self._bi_total = np.bincount(bi_keys // v, weights=self._bi_counts, minlength=v)

  def _ids(self, words: Sequence[str]) -> list[int]:
    unk = self.index[UNK]
    return [unk if w == CAPTIONER_UNK else self.index.get(w, unk) for w in words]

  # Probabilities of arrays of events; all arguments are int64 word ids of equal shape.

  def _p1(self, w: np.ndarray) -> np.ndarray:
    return self._cont1[w] / self._num_bigram_types

  def _p2_lower(self, v: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The bigram level as a lower order of the trigram model (continuation counts)."""
    d, size = self.discount, self.size
    total = self._mid_types[v]
    seen = (self._follow2[v] > 0) & (total > 0)
    safe = np.where(seen, total, 1.0)
    cont = _lookup_sorted(self._cont2_keys, self._cont2, v * size + w)
    alpha = np.maximum(cont - d, 0.0) / safe
    gamma = d * self._follow2[v] / safe
    return np.where(seen, alpha + gamma * self._p1(w), self._p1(w))

  def _p2_top(self, v: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The bigram level as the highest order (raw counts)."""
    d, size = self.discount, self.size
    total = self._bi_total[v]
    seen = total > 0
    safe = np.where(seen, total, 1.0)
    count = _lookup_sorted(self._bi_keys, self._bi_counts, v * size + w)
    alpha = np.maximum(count - d, 0.0) / safe
    gamma = d * self._follow2[v] / safe
    return np.where(seen, alpha + gamma * self._p1(w), self._p1(w))

  def _p3(self, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
    d, size = self.discount, self.size
    ctx = u * size + v
    total = _lookup_sorted(self._ctx3_keys, self._ctx3_total, ctx)
    types = _lookup_sorted(self._ctx3_keys, self._ctx3_types, ctx)
    seen = total > 0
    safe = np.where(seen, total, 1.0)
    count = _lookup_sorted(self._tri_keys, self._tri_counts, ctx * size + w)
    alpha = np.maximum(count - d, 0.0) / safe
    gamma = d * types / safe
    lower = self._p2_lower(v, w)
    return np.where(seen, alpha + gamma * lower, lower)

  def prob_ids(self, context: np.ndarray, word: np.ndarray) -> np.ndarray:
    """P(word | context) for arrays of ids: context [N, order-1] int64, word [N] int64."""
    context = np.asarray(context, np.int64).reshape(len(word), self.order - 1)
    word = np.asarray(word, np.int64)
    if self.order == 3:
      return self._p3(context[:, 0], context[:, 1], word)
    return self._p2_top(context[:, 0], word)

  def prob(self, word: str, context: Sequence[str]) -> float:
    """P(word | context) for one event; context words beyond order-1 are ignored, fewer use
    the lower orders (as nltk's `score`)."""
    context = tuple(context)[-(self.order - 1):] if self.order > 1 else ()
    w = np.array(self._ids([word]))
    ids = np.array(self._ids(context), np.int64)
    if len(ids) == self.order - 1:
      return float(self.prob_ids(ids[None], w)[0])
    if len(ids) == 1:  # a one-word context of the trigram model: the lower bigram level
      return float(self._p2_lower(ids[:1], w)[0])
    return float(self._p1(w)[0])

  def events(self, sentences: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray,
                                                                 np.ndarray]:
    """All scored events of the sentences: (context [E, order-1], word [E], sentence [E])."""
    pad = self.order - 1
    contexts, words, owner = [], [], []
    for i, sentence in enumerate(sentences):
      ids = np.array([0] * pad + self._ids(sentence) + [1], np.int64)
      n = len(ids) - pad
      contexts.append(np.stack([ids[j:j + n] for j in range(pad)], axis=1))
      words.append(ids[pad:])
      owner.append(np.full((n,), i, np.int64))
    if not words:
      return np.zeros((0, pad), np.int64), np.zeros((0,), np.int64), np.zeros((0,), np.int64)
    return np.concatenate(contexts), np.concatenate(words), np.concatenate(owner)

  def perplexity(self, sentences: Sequence[Sequence[str]]) -> PerplexityResult:
    """Perplexity of tokenized sentences (see the module docstring for the conventions)."""
    sentences = [list(s) for s in sentences]
    context, word, owner = self.events(sentences)
    p = self.prob_ids(context, word)
    scored = p > 0
    logp = np.where(scored, np.log2(np.where(scored, p, 1.0)), 0.0)
    n = len(sentences)
    total_log = np.bincount(owner, weights=logp, minlength=n)
    counted = np.bincount(owner, weights=scored.astype(np.float64), minlength=n)
    with np.errstate(divide="ignore", invalid="ignore"):
      per_caption = np.where(counted > 0, 2.0 ** (-total_log / np.maximum(counted, 1)), np.nan)
    num = int(scored.sum())
    corpus = float(2.0 ** (-logp.sum() / num)) if num else float("nan")
    oov = sum(1 for s in sentences for w in s if w not in self.index)
    return PerplexityResult(perplexity=corpus, per_caption=per_caption, num_events=num,
                            zero_prob_events=int((~scored).sum()), oov_words=oov)

  def ngram_perplexity(self, ngrams: Iterable[Sequence[str]]) -> float:
    """2 ** mean(-log2 P(ngram[-1] | ngram[:-1])): nltk's `perplexity(text_ngrams)`."""
    logs = [np.log2(p) if (p := self.prob(g[-1], g[:-1])) > 0 else -np.inf for g in ngrams]
    return float(2.0 ** (-np.mean(logs)))
