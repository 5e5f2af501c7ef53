"""Tests of analysis/probes.py (section 5) with fake scorers whose preferences are known."""

import numpy as np
import pytest

from analysis import probes

NOUNS = frozenset({"dog", "cat", "bed", "sofa", "man", "horse", "beach", "grass", "mat", "rug",
                   "person", "field", "fence", "ball", "tree", "car", "street", "table"})
REFERENCES = {
    10: ["a dog lying on a bed", "a dog and a cat on a sofa", "a brown dog on a bed near a rug",
         "a dog sleeping on a mat"],
    11: ["a man riding a horse on the beach", "a person on a horse near the grass",
         "a man and a horse on a beach with a fence", "a horse in a field with a tree"],
    12: ["a car on a street", "a red car parked on the street near a tree"],
}
XE = {10: "a dog lying on a bed", 11: "a man riding a horse on the beach",
      12: "a car parked on a street"}


def _reference_nouns(image_id):
  return {w for r in REFERENCES[image_id] for w in r.split()} & NOUNS


def noun_overlap_scorer(captions, image_ids):
  """10 points per distinct word of the caption that is a noun of the image's references."""
  return np.array([10.0 * len(set(c.split()) & _reference_nouns(i))
                   for c, i in zip(captions, image_ids)])


def length_scorer(captions, image_ids):
  del image_ids
  return np.array([float(len(c.split())) for c in captions])


def test_templates_are_the_papers():
  nouns = ["motorcycle", "road", "fence"]
  assert probes.TEMPLATES["uniter"].fill(nouns) == "a motorcycle of the road fence"
  assert probes.TEMPLATES["rosita"].fill(nouns) == (
      "a image image that is a a motorcycle but a a road but a a fence")
  assert probes.TEMPLATES["vilbert"].fill(nouns) == "a motorcycle that the road at the fence"
  assert probes.TEMPLATES["clip"].fill(nouns) == "a image image of motorcycle near a road near a fence"
  assert probes.TEMPLATES["lxmert"].fill(nouns) == "a motorcycle of a road of a fence"
  assert str(probes.TEMPLATES["lxmert"]) == "a+NOUN+(of+a+NOUN)*"
  # Fewer nouns than head slots: the head ends after the last filled slot.
  assert probes.TEMPLATES["vilbert"].fill(["dog"]) == "a dog"
  assert probes.template_for("CLIP") is probes.TEMPLATES["clip"]
  assert probes.template_for("blip") is probes.DEFAULT_TEMPLATE
  assert probes.DEFAULT_TEMPLATE.fill(["dog", "cat"]) == "a dog and a cat"
  with pytest.raises(ValueError, match="at least one noun"):
    probes.DEFAULT_TEMPLATE.fill([])


def test_replacing_nouns_drops_a_noun_scorer_and_replacing_others_does_not():
  noun_pool = sorted(NOUNS)
  word_pool = ["quickly", "blue", "under", "with", "some", "very", "was", "the", "near"]
  out = probes.replacement_probe(XE, REFERENCES, {"nouns": noun_overlap_scorer,
                                                  "length": length_scorer},
                                 noun_pool, word_pool, seed=3)
  assert out["num_captions"] == 3
  s = out["scores"]["nouns"]
  # XE captions: dog+bed, man+horse+beach, car+street -> (20 + 30 + 20) / 3.
  assert s["original"] == pytest.approx(70 / 3)
  assert s["replace_others"] == pytest.approx(70 / 3)  # nouns kept
  assert s["replace_nouns"] == 0.0  # no wrong noun is a reference word of its image
  length = out["scores"]["length"]
  assert length["original"] == length["replace_nouns"] == length["replace_others"]
  for e in out["examples"]:
    refs = {w for r in REFERENCES[e["image_id"]] for w in r.split()}
    original, nouns_swapped = e["original"].split(), e["replace_nouns"].split()
    others_swapped = e["replace_others"].split()
    for w, a, b in zip(original, nouns_swapped, others_swapped):
      if w in NOUNS:
        assert a in NOUNS and a not in refs and b == w
      else:
        assert a == w and b in word_pool and b not in refs


def test_replacement_is_deterministic_given_the_seed():
  args = (XE, REFERENCES, {"nouns": noun_overlap_scorer}, sorted(NOUNS),
          ["quickly", "blue", "under", "with", "some", "very", "was", "near", "big", "over"])
  first = probes.replacement_probe(*args, seed=0)["examples"]
  assert probes.replacement_probe(*args, seed=0)["examples"] == first
  assert probes.replacement_probe(*args, seed=1)["examples"] != first


def test_template_probe_scores_the_reconstructions():
  out = probes.template_probe(XE, {"lxmert": length_scorer, "clip": length_scorer})
  assert out["num_captions"] == 3
  # Nouns: [dog, bed], [man, horse, beach], [car, street].
  # lxmert: "a dog of a bed" (5), "a man of a horse of a beach" (8), "a car of a street" (5).
  assert out["table"]["lxmert"]["recons"] == pytest.approx((5 + 8 + 5) / 3)
  assert out["table"]["lxmert"]["original"] == pytest.approx((6 + 8 + 6) / 3)  # the XE lengths
  # clip: "a image image of dog near a bed" (8), 11, 8.
  assert out["table"]["clip"]["recons"] == pytest.approx((8 + 11 + 8) / 3)
  assert out["matrix"]["clip"]["lxmert"] == out["table"]["clip"]["recons"]
  # default: "a dog and a bed" (5), "a man and a horse and a beach" (8), 5.
  assert out["matrix"]["default"]["clip"] == pytest.approx(18 / 3)
  assert out["examples"]["lxmert"][0] == ("a dog lying on a bed", "a dog of a bed")
  assert out["table"]["clip"]["template"] == "a+image+image+of+NOUN+(near+a+NOUN)*"


def test_more_visual_words_score_higher_under_a_noun_scorer():
  out = probes.visual_words_probe(REFERENCES, {"nouns": noun_overlap_scorer,
                                               "length": length_scorer},
                                  k_values=(3, 4, 5), seed=0)
  # Images 10 (dog, bed, cat, sofa, rug, mat) and 11 have >= 5 nouns; 12 has 3 (car, street,
  # tree) and is left out.
  assert out["num_images"] == 2
  assert out["scores"]["nouns"] == [30.0, 40.0, 50.0]
  # "a n1 and a n2 and a n3": 2 + 3 words per extra noun.
  assert out["scores"]["length"] == [8.0, 11.0, 14.0]
  first = out["examples"]["nouns"][0].split()
  assert first[:2] == ["a", "dog"]  # the most mentioned noun of image 10 comes first
  again = probes.visual_words_probe(REFERENCES, {"nouns": noun_overlap_scorer},
                                    k_values=(3, 4, 5), seed=0)
  assert again["examples"]["nouns"] == out["examples"]["nouns"]
  limited = probes.visual_words_probe(REFERENCES, {"nouns": noun_overlap_scorer},
                                      k_values=(3,), max_images=1, seed=0)
  assert limited["num_images"] == 1


def test_word_pools_split_by_majority_tag():
  tagged = [t for ts in probes.tag_references(REFERENCES, sorted(REFERENCES)).values()
            for t in ts]
  nouns, others = probes.word_pools(tagged)
  assert {"dog", "horse", "street"} <= set(nouns)
  assert {"a", "on", "riding"} <= set(others)
  assert not set(nouns) & set(others)


def test_score_function_shape_is_checked():
  with pytest.raises(ValueError, match="one score per caption"):
    probes.score_all(lambda c, i: np.zeros((len(c), 2)), ["a dog"], [1])


def test_captioner_unk_is_no_visual_word():
  (tagged,) = probes.tag_captions(["a UNK on a bed"])
  assert "UNK" in tagged.nouns()  # spaCy calls it a (proper) noun ...
  assert probes.visual_words(tagged) == ["bed"]  # ... but it shows nothing of the image
  out = probes.template_probe({10: "a UNK on a bed"}, {"lxmert": length_scorer})
  assert out["examples"]["lxmert"] == [("a UNK on a bed", "a bed")]
