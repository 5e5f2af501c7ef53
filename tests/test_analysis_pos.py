"""Tests of analysis/pos.py: tagging, noun statistics (Table 4) and top unigrams (Figure 4)."""

import pytest

from analysis import pos


def test_tags_follow_our_words_not_spacy_tokenizer():
  (tagged,) = pos.tag_captions(["a man's dog on a bed"])
  assert tagged.words == ("a", "man's", "dog", "on", "a", "bed")  # "man's" not re-split
  assert len(tagged.pos) == len(tagged.tag) == 6
  assert tagged.pos[2] == "NOUN" and tagged.pos[3] == "ADP"


def test_noun_and_unique_noun_counts():
  captions = [
      "a dog and a cat on a bed",     # dog, cat, bed: 3 nouns, 3 unique
      "a dog dog dog",                # 3 nouns, 1 unique
      "two cats sitting on a red sofa",  # cats, sofa: 2 nouns, 2 unique
      "a dog near a dogs",            # forms, not lemmas: 2 nouns, 2 unique
  ]
  tagged = pos.tag_captions(captions)
  assert [t.nouns() for t in tagged] == [["dog", "cat", "bed"], ["dog", "dog", "dog"],
                                         ["cats", "sofa"], ["dog", "dogs"]]
  stats = pos.token_stats(tagged)
  assert stats["num_captions"] == 4
  assert stats["avg_length"] == pytest.approx((8 + 4 + 7 + 5) / 4)
  assert stats["nouns"] == pytest.approx((3 + 3 + 2 + 2) / 4)
  assert stats["unique_nouns"] == pytest.approx((3 + 1 + 2 + 2) / 4)


def test_empty_and_list_captions():
  tagged = pos.tag_captions(["", ["a", "dog"]])
  assert tagged[0].words == () and tagged[1].words == ("a", "dog")
  assert pos.token_stats(tagged)["avg_length"] == 1.0
  with pytest.raises(ValueError, match="no captions"):
    pos.token_stats([])


def test_top_unigrams_counts_shares_ties_and_pos():
  tagged = pos.tag_captions(["a dog on a bed", "a cat on a bed", "the dog"])
  top = pos.top_unigrams(tagged, k=3)
  # a: 4, then bed, dog, on all 2 (ties alphabetical); 12 words in all.
  assert [(u["word"], u["count"]) for u in top] == [("a", 4), ("bed", 2), ("dog", 2)]
  assert top[0]["share"] == pytest.approx(4 / 12)
  assert top[0]["pos"] == "DET" and top[1]["pos"] == "NOUN"
  without = pos.top_unigrams(tagged, k=1, exclude=("a",))
  assert without[0]["word"] == "bed" and without[0]["share"] == pytest.approx(2 / 8)


def test_unknown_model_is_explained():
  with pytest.raises(RuntimeError, match="no spaCy English model"):
    pos.load_tagger("no_such_spacy_model_xyz")
