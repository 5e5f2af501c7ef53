"""Tests of analysis/text.py: every caption read from a file is checked and normalised first."""

import json
import os
import shutil

import pytest

from analysis import text

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="the PTB tokenizer is Java")
ASSET = os.path.join(os.path.dirname(__file__), "assets", "coco_val2017_captions_subset.json")


def _real_captions():
  with open(ASSET, encoding="utf-8") as f:
    return [a["caption"] for a in json.load(f)["annotations"]]


@pytest.mark.parametrize("tokenizer", ["lower", pytest.param("ptb", marks=needs_java)])
def test_whitespace_case_and_punctuation(tokenizer):
  got = text.tokenize(["A Dog,\n on a  BED.", "\tTwo\r\ncats\u2028sleeping ", "it's red"],
                      tokenizer)
  assert got == ["a dog on a bed", "two cats sleeping", "it 's red"]


@pytest.mark.parametrize("tokenizer", ["lower", pytest.param("ptb", marks=needs_java)])
def test_the_captioners_unk_is_kept(tokenizer):
  assert text.tokenize(["a UNK on a bed", "Unk unk"], tokenizer) == ["a UNK on a bed",
                                                                    "unk unk"]


def test_bad_captions_are_refused_naming_their_ids():
  items = [(1, "a dog"), (2, None), (3, "   "), (4, 42), (5, " . ")]
  with pytest.raises(text.CaptionError) as error:
    text.normalize(items, what="caption", source="run.json", tokenizer="lower")
  message = str(error.value)
  assert "run.json: 4 caption(s) cannot be analysed" in message
  assert "2: not a string (null), found None" in message
  assert "3: empty" in message and "4: not a string (int)" in message
  assert "5: empty after normalisation" in message
  assert "bad_captions=skip" in message  # says what to do


def test_skip_policy_leaves_bad_captions_out_and_lists_them():
  items = [(1, "A dog."), (2, None), (3, ""), (7, "A CAT")]
  clean, skipped = text.normalize(items, what="caption", source="x", policy="skip",
                                  tokenizer="lower")
  assert clean == {1: "a dog", 7: "a cat"}  # keys kept as given, input order
  assert [(s.key, s.reason) for s in skipped] == [("2", "not a string (null)"), ("3", "empty")]
  assert "None" not in clean.values()  # a null caption never becomes the word "None"


def test_bad_arguments_are_explained():
  with pytest.raises(ValueError, match="policy must be one of"):
    text.normalize([(1, "a")], what="caption", source="x", policy="drop")
  with pytest.raises(ValueError, match="tokenizer must be one of"):
    text.resolve_tokenizer("spacy")


def test_lower_is_idempotent_on_real_captions():
  once = text.tokenize(_real_captions(), "lower")
  assert text.tokenize(once, "lower") == once
  assert all(w == w.lower() or w == "UNK" for c in once for w in c.split())


@needs_java
def test_ptb_is_idempotent_and_lower_agrees_with_it_on_real_captions():
  raw = _real_captions()
  ptb = text.tokenize(raw, "ptb")
  assert text.tokenize(ptb, "ptb") == ptb
  lower = text.tokenize(raw, "lower")
  same = sum(a == b for a, b in zip(ptb, lower))
  # On all 25,014 val2017 captions the two differ on 51 (abbreviations such as "st.").
  assert same >= 0.99 * len(raw), [(r, a, b) for r, a, b in zip(raw, ptb, lower) if a != b][:5]
