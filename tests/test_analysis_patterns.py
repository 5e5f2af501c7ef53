"""Tests of analysis/patterns.py on the paper's own example captions (Table 5, Figure 1)."""

import pytest

from analysis import patterns
from analysis.pos import TaggedCaption, tag_captions


@pytest.mark.parametrize("caption,prefix,literal,pattern", [
    # Table 5, ROSITA example 1 and Figure 1.
    ("a image image that is a a cabinets but a a cabinets but a a sink",
     "a+IMAGE.P+that+is", "a image image that is", "Prefix+((CCONJ)?+NOUN.P)*"),
    # ROSITA example 2: two noun phrases packed together in one unit.
    ("a man man that is a a person bike a a dirt but a a rural dirt",
     "(NOUN.P)*+that+is", "a man man that is", "Prefix+((CCONJ)?+(NOUN.P)*)*"),
    # ViLBERT.
    ("a bird that the kite above the sky above the beach towards this water",
     "(NOUN.P)*+that", "a bird that", "Prefix+((REL)?+NOUN.P)*"),
    # CLIP.
    ("a image image of a white bathroom with a brown shower curtain near a corner area",
     "a+IMAGE.P+REL", "a image image of", "Prefix+((REL)?+NOUN.P)*"),
    # LXMERT.
    ("a man man posing a bike riding a bike bike riding a dirt near a road",
     "(NOUN.P)*+REL", "a man man posing", "Prefix+((REL)?+NOUN.P)*"),
    # UNITER.
    ("a table table of the table tools", "(NOUN.P)*+REL", "a table table of",
     "Prefix+(NOUN.P)*"),
    # A verb and a preposition in a row are one relation.
    ("a motorcycle parked on a dirt road", "(NOUN.P)*+REL", "a motorcycle parked on",
     "Prefix+(NOUN.P)*"),
    # No connector at all: the caption is its prefix.
    ("a motorcycle bike motorcycle bike", "(NOUN.P)*", "a motorcycle bike motorcycle bike",
     "Prefix"),
])
def test_paper_examples(caption, prefix, literal, pattern):
  (tagged,) = tag_captions([caption])
  shape = patterns.caption_shape(tagged)
  assert (shape.prefix, shape.literal_prefix, shape.pattern) == (prefix, literal, pattern)


def test_noun_phrase_merging_with_fixed_tags():
  """DET* ADJ* NOUN+ merge (NUM as a modifier, PRP$ as a determiner); others stay alone."""
  tagged = TaggedCaption(
      words=("his", "two", "young", "dogs", "dogs", "and", "a", "very", "big", "cat", "a"),
      pos=("PRON", "NUM", "ADJ", "NOUN", "NOUN", "CCONJ", "DET", "ADV", "ADJ", "NOUN", "DET"),
      tag=("PRP$", "CD", "JJ", "NNS", "NNS", "CC", "DT", "RB", "JJ", "NN", "DT"))
  chunks = patterns.chunk(tagged)
  assert [(c.kind, " ".join(c.words)) for c in chunks] == [
      ("NOUN.P", "his two young dogs dogs"), ("CCONJ", "and"), ("DET", "a"), ("ADV", "very"),
      ("NOUN.P", "big cat"), ("DET", "a")]
  shape = patterns.caption_shape(tagged)
  assert shape.prefix == "(NOUN.P)*+CCONJ+DET+ADV"
  # Units after the prefix: [big cat] and a trailing [a] with no noun phrase.
  assert shape.pattern == "Prefix+((DET)?+(NOUN.P)?)*"


def test_image_phrase_keeps_its_determiners():
  tagged = TaggedCaption(words=("a", "closeup", "image", "of", "a", "dog"),
                         pos=("DET", "ADJ", "NOUN", "ADP", "DET", "NOUN"),
                         tag=("DT", "JJ", "NN", "IN", "DT", "NN"))
  chunks = patterns.chunk(tagged)
  assert chunks[0].kind == "IMAGE.P" and chunks[0].num_det == 1
  assert patterns.caption_shape(tagged).prefix == "a+IMAGE.P+REL"


def test_summarize_ratios_and_examples():
  captions = ["a image image that is a a dog but a a cat",
              "a image image that is a a bed",
              "a image image that is a a sofa but a a cat but a a dog",
              "a dog on a bed"]
  summary = patterns.summarize(tag_captions(captions), k=3)
  top = summary["literal_prefix"][0]
  assert (top["value"], top["count"], top["ratio"]) == ("a image image that is", 3, 0.75)
  assert top["example"] == captions[0]
  assert summary["prefix"][0]["value"] == "a+IMAGE.P+that+is"
  assert summary["prefix"][1] == {"value": "(NOUN.P)*+REL", "count": 1, "ratio": 0.25,
                                  "example": "a dog on a bed"}
  pattern = summary["pattern"][0]
  assert (pattern["value"], pattern["ratio"]) == ("Prefix+((CCONJ)?+NOUN.P)*", 0.5)
  assert summary["start_ngrams"][4][0]["value"] == "a image image that"
  assert summary["start_ngrams"][4][0]["ratio"] == 0.75
  assert 5 in summary["start_ngrams"] and summary["start_ngrams"][5][0]["count"] == 3
