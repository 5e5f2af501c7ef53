"""Tests of analysis/lm.py: parity with nltk's KneserNeyInterpolated, conventions, ordering."""

import itertools
import random
import time

import numpy as np
import pytest
from nltk.lm import KneserNeyInterpolated, Vocabulary
from nltk.lm.preprocessing import pad_both_ends, padded_everygram_pipeline
from nltk.util import ngrams

from analysis.lm import KneserNeyLM

TRAIN = [s.split() for s in [
    "a dog on a bed", "a cat on a mat", "a dog and a cat", "two dogs on the grass",
    "a man riding a horse", "the cat sat on the mat", "a zebra", "a dog on the grass",
]]


def _nltk_model(order, discount, unk_cutoff):
  model = KneserNeyInterpolated(order, discount=discount,
                                vocabulary=Vocabulary(unk_cutoff=unk_cutoff))
  train, vocab = padded_everygram_pipeline(order, TRAIN)
  model.fit(train, vocab)
  return model


@pytest.mark.parametrize("order,discount,unk_cutoff",
                         [(3, 0.1, 1), (3, 0.75, 1), (3, 0.75, 2), (2, 0.5, 1), (2, 0.75, 2)])
def test_probabilities_equal_nltk(order, discount, unk_cutoff):
  """Every P(w | context) over the vocabulary, pads and an unseen word, within 1e-9 relative."""
  reference = _nltk_model(order, discount, unk_cutoff)
  ours = KneserNeyLM(TRAIN, order=order, discount=discount, unk_cutoff=unk_cutoff)
  words = sorted({w for s in TRAIN for w in s}) + ["<s>", "</s>", "platypus"]
  # Every context seen in training (nltk is slow: it rescans its counts per call), plus
  # unseen ones and ones with an unseen word.
  pad = ["<s>"] * (order - 1)
  seen = {tuple((pad + s + ["</s>"])[j:j + order - 1]) for s in TRAIN
          for j in range(len(s) + 1)}
  unseen = set(itertools.product(["zebra", "platypus", "</s>", "on"], repeat=order - 1))
  contexts = sorted(seen | unseen)
  checked = 0
  for context in contexts:
    for word in words:
      want, got = reference.score(word, list(context)), ours.prob(word, context)
      if want == 0.0:
        assert got == 0.0, (word, context)
      else:
        assert abs(got - want) <= 1e-9 * want, (word, context, got, want)
      checked += 1
  # Shorter contexts use the lower orders, as nltk does.
  for word in words:
    want = reference.score(word, ["cat"])
    assert abs(ours.prob(word, ["cat"]) - want) <= 1e-9 * max(want, 1e-300)
    assert abs(ours.prob(word, []) - reference.score(word)) <= 1e-9 * max(want, 1e-300)
  assert checked == len(words) * len(contexts) > 300


@pytest.mark.parametrize("order,discount", [(3, 0.1), (3, 0.75), (2, 0.75)])
def test_ngram_perplexity_equals_nltk(order, discount):
  reference = _nltk_model(order, discount, 1)
  ours = KneserNeyLM(TRAIN, order=order, discount=discount, unk_cutoff=1)
  test = [s.split() for s in ["a dog on the mat", "a horse on a bed", "the zebra sat"]]
  grams = [g for s in test for g in ngrams(pad_both_ends(s, order), order)]
  want = reference.perplexity(grams)
  assert abs(ours.ngram_perplexity(grams) - want) <= 1e-9 * want


def test_perplexity_scores_words_and_one_end_of_sentence():
  """n words -> n + 1 events; the corpus value is 2 ** mean(-log2 p) over those events."""
  model = KneserNeyLM(TRAIN, order=3, discount=0.75, unk_cutoff=1)
  sentences = [["a", "dog"], ["the", "cat", "sat"]]
  result = model.perplexity(sentences)
  assert result.num_events == (2 + 1) + (3 + 1)
  events = [("a", ("<s>", "<s>")), ("dog", ("<s>", "a")), ("</s>", ("a", "dog")),
            ("the", ("<s>", "<s>")), ("cat", ("<s>", "the")), ("sat", ("the", "cat")),
            ("</s>", ("cat", "sat"))]
  logs = [np.log2(model.prob(w, c)) for w, c in events]
  assert result.perplexity == pytest.approx(2 ** -np.mean(logs), rel=1e-12)
  assert result.per_caption[0] == pytest.approx(2 ** -np.mean(logs[:3]), rel=1e-12)


def test_unknown_words_and_captioner_unk_map_to_unk():
  # "zebra", "horse", "man", "riding", "mat"... appear once: with unk_cutoff=2 they train <UNK>.
  model = KneserNeyLM(TRAIN, order=3, discount=0.75, unk_cutoff=2)
  assert "zebra" not in model.index and "dog" in model.index
  p_unseen = model.prob("platypus", ["a", "dog"])
  assert p_unseen > 0
  assert model.prob("UNK", ["a", "dog"]) == p_unseen  # the captioner's UNK token
  assert model.prob("zebra", ["a", "dog"]) == p_unseen
  result = model.perplexity([["a", "platypus"]])
  assert result.oov_words == 1 and result.zero_prob_events == 0


def test_zero_probability_events_are_left_out_and_counted():
  # With unk_cutoff=1 nothing trains <UNK>, so an unseen word has probability 0 (as in nltk).
  model = KneserNeyLM(TRAIN, order=3, discount=0.75, unk_cutoff=1)
  assert model.prob("platypus", ["a", "dog"]) == 0.0
  with_oov = model.perplexity([["a", "platypus", "on", "a", "bed"]])
  assert with_oov.zero_prob_events == 1 and with_oov.num_events == 5
  assert np.isfinite(with_oov.perplexity)


def test_fluent_captions_beat_scrambled_ones():
  rng = np.random.default_rng(0)
  subjects, verbs, places = ["dog", "cat", "man", "woman", "horse"], ["sitting", "standing",
                                                                       "lying"], ["bed", "grass",
                                                                                  "beach", "sofa"]
  train = [f"a {rng.choice(subjects)} {rng.choice(verbs)} on a {rng.choice(places)}".split()
           for _ in range(400)]
  model = KneserNeyLM(train, order=3)
  fluent = [f"a {s} {v} on a {p}".split() for s, v, p in
            zip(subjects, verbs * 2, places * 2)]
  scrambled = [list(rng.permutation(s)) for s in fluent]
  repeated = [[s[1]] * 6 for s in fluent]  # "dog dog dog ...", like SCST's packed nouns
  p_fluent = model.perplexity(fluent).perplexity
  p_scrambled = model.perplexity(scrambled).perplexity
  p_repeated = model.perplexity(repeated).perplexity
  assert p_fluent < 3.0
  assert p_fluent * 5 < p_scrambled
  assert p_fluent * 5 < p_repeated


def test_5000_captions_score_quickly():
  rng = random.Random(1)
  words = [f"w{i}" for i in range(2000)]
  train = [rng.choices(words, k=rng.randint(5, 15)) for _ in range(20000)]
  start = time.perf_counter()
  model = KneserNeyLM(train, order=3)
  fit_s = time.perf_counter() - start
  test = [rng.choices(words, k=rng.randint(5, 20)) for _ in range(5000)]
  start = time.perf_counter()
  result = model.perplexity(test)
  score_s = time.perf_counter() - start
  print(f"\nKN fit on 20,000 captions: {fit_s:.2f} s; 5,000 captions "
        f"({result.num_events} events) scored in {score_s:.3f} s")
  assert result.num_events == sum(len(s) + 1 for s in test)
  assert np.all(np.isfinite(result.per_caption))


def test_bad_arguments_are_explained():
  with pytest.raises(ValueError, match="order"):
    KneserNeyLM(TRAIN, order=4)
  with pytest.raises(ValueError, match="discount"):
    KneserNeyLM(TRAIN, discount=1.5)
  with pytest.raises(ValueError, match="no training sentences"):
    KneserNeyLM([[], []])
