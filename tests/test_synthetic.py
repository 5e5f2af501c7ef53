"""Tests of the synthetic world: determinism, array contract, captions true of the scenes."""

import re

import numpy as np
import pytest

from vlprobe_jax.data import dataset as dataset_lib
from vlprobe_jax.data import image_features
from vlprobe_jax.data import synthetic as S
from vlprobe_jax.data import synthetic_preview
from vlprobe_jax.data import vocab as vocab_lib

SPLIT_FIELDS = ("image_ids", "fc_feats", "labels", "pixels", "region_feats", "region_boxes",
                "region_mask", "image_wh")


def _config(**overrides):
  config = S.default_world_config()
  config.update(num_train=40, num_val=8, num_test=8, count_threshold=2, seed=7)
  config.update(overrides)
  return config


@pytest.fixture(scope="module")
def world():
  return S.make_world(_config())


# Word tables for reading captions back, from the grammar's own vocabulary tables.
NOUN_SHAPE = {w: (shape, number) for shape, nouns in S.SHAPE_NOUNS.items()
              for pair in nouns for number, w in enumerate(pair)}  # number 0 singular, 1 plural
WORD_SIZE = {w: size for size, words in S.SIZE_WORDS.items() for w in words}
COUNTS = {"a": 1, "an": 1, "the": 1, "two": 2, "three": 3}
PHRASE_RELATION = sorted(((p.split(), name) for name, phrases in S.RELATION_PHRASES.items()
                          for p in phrases), key=lambda item: -len(item[0]))


def _noun_phrases(words):
  """(start, end, determiner, size, colour, shape, plural) for each object phrase."""
  out = []
  for start, word in enumerate(words):
    if word not in COUNTS:
      continue
    end, size, colour = start + 1, None, None
    if end < len(words) and words[end] in WORD_SIZE:
      size, end = WORD_SIZE[words[end]], end + 1
    if end < len(words) and words[end] in S.COLOURS:
      colour, end = words[end], end + 1
    if end < len(words) and words[end] in NOUN_SHAPE:
      shape, plural = NOUN_SHAPE[words[end]]
      out.append((start, end + 1, word, size, colour, shape, plural))
    else:  # "a picture of", "a beach": not an object, and no attribute may dangle
      assert size is None and colour is None, words
  return out


def _matches(obj, size, colour, shape):
  return (obj["shape"] == shape and colour in (None, obj["colour"])
          and size in (None, obj["size"]))


def _holds(relation, a, b, margin):
  dx, dy = b["x"] - a["x"], b["y"] - a["y"]
  return {"above": dy >= margin, "below": -dy >= margin, "left": dx >= margin,
          "right": -dx >= margin, "next": abs(dx) >= abs(dy)}[relation]


def _all_captions(world):
  for split in world.splits.values():
    size = split.pixels.shape[1]
    for i, refs in enumerate(split.references):
      for ref in refs:
        yield split.scenes.objects(i), S.BACKGROUND_NAMES[split.scenes.background[i]], ref, size


def test_same_seed_same_bytes_other_seed_other_world(world):
  again = S.make_world(_config())
  other = S.make_world(_config(seed=8))
  assert again.vocab == world.vocab
  for name, split in world.splits.items():
    for field in SPLIT_FIELDS:
      a, b = getattr(split, field), getattr(again[name], field)
      assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), field
    assert split.references == again[name].references
    assert not np.array_equal(split.pixels, other[name].pixels)
    assert split.references != other[name].references


def test_train_split_does_not_depend_on_other_split_sizes(world):
  bigger = S.make_world(_config(num_val=12))
  assert np.array_equal(bigger["train"].pixels, world["train"].pixels)
  assert bigger["train"].references == world["train"].references


def test_shapes_dtypes_and_ids(world):
  config = _config()
  n_total = config.num_train + config.num_val + config.num_test
  size, regions, length = config.image_size, config.num_regions, config.max_length
  ids = np.concatenate([world[s].image_ids for s in ("train", "val", "test")])
  np.testing.assert_array_equal(ids, np.arange(n_total))
  for name, split in world.splits.items():
    n = len(split)
    assert isinstance(split, dataset_lib.Split) and split.name == name
    assert split.fc_feats.shape == (n, 2048) and split.fc_feats.dtype == np.float32
    assert split.labels.shape == (n, 5, length) and split.labels.dtype == np.int32
    assert split.pixels.shape == (n, size, size, 3) and split.pixels.dtype == np.uint8
    assert split.region_feats.shape == (n, regions, 2048)
    assert split.region_feats.dtype in (np.float16, np.float32)
    assert np.isfinite(split.region_feats).all()
    assert split.region_boxes.shape == (n, regions, 4)
    assert split.region_boxes.dtype == np.float32
    assert split.region_mask.shape == (n, regions) and split.region_mask.dtype == np.int32
    np.testing.assert_array_equal(split.image_wh, np.full((n, 2), size))
    images = split.scorer_images(np.arange(3))
    assert images["region_feats"].dtype == np.float32 and images["pixels"].shape[0] == 3
  assert "seed=7" in world.description


def test_features_are_those_of_the_pixels(world):
  split = world["val"]
  np.testing.assert_array_equal(split.fc_feats, image_features.fc_features(split.pixels))
  boxes_px = split.region_boxes * split.pixels.shape[1]
  expected = image_features.region_features(split.pixels, boxes_px).astype(np.float16)
  np.testing.assert_array_equal(split.region_feats, expected)


def test_five_distinct_lower_case_references_and_labels(world):
  for split in world.splits.values():
    for i, refs in enumerate(split.references):
      assert len(set(refs)) >= 5 and len(refs) == _config().captions_per_image
      for j, ref in enumerate(refs):
        assert re.fullmatch(r"[a-z]+( [a-z]+)*", ref), ref
        assert len(ref.split()) <= _config().max_length
        expected = world.vocab.encode(ref.split(), _config().max_length)
        np.testing.assert_array_equal(split.labels[i, j], expected)


def test_vocabulary_keeps_train_words_above_threshold(world):
  counts = {}
  for refs in world["train"].references:
    for ref in refs:
      for w in ref.split():
        counts[w] = counts.get(w, 0) + 1
  threshold = _config().count_threshold
  kept = {w for w, c in counts.items() if c > threshold}
  assert set(world.vocab.words[1:-1]) == kept
  assert world.vocab.words[0] == "" and world.vocab.words[-1] == vocab_lib.UNK
  assert any(c <= threshold for c in counts.values()), "tiny world should have rare words"


def test_scenes_are_drawn_as_labelled(world):
  for split in world.splits.values():
    scenes, size = split.scenes, split.pixels.shape[1]
    for i in range(len(split)):
      objects = scenes.objects(i)
      assert _config().min_objects <= len(objects) <= _config().max_objects
      for k, obj in enumerate(objects):
        x1, y1, x2, y2 = obj["box"]
        assert 0 <= x1 < obj["x"] < x2 <= size and 0 <= y1 < obj["y"] < y2 <= size
        # The centre pixel has the named colour (jitter 15 + noise + rounding < 30).
        centre = split.pixels[i, int(obj["y"]), int(obj["x"])].astype(int)
        assert np.abs(centre - S.COLOURS[obj["colour"]]).max() < 30, (obj, centre)
        width = x2 - x1
        if obj["shape"] == "circle":
          assert abs(width - 2 * obj["radius"]) <= 2, obj
        if obj["shape"] == "square":
          assert abs(width - 1.6 * obj["radius"]) <= 2, obj
        assert obj["colour"] not in S.HIDDEN_COLOURS[S.BACKGROUND_NAMES[scenes.background[i]]]
        for other in objects[k + 1:]:  # no overlap: the bounding circles are apart
          distance = np.hypot(obj["x"] - other["x"], obj["y"] - other["y"])
          assert distance >= obj["radius"] + other["radius"]
      large = [o["radius"] for o in objects if o["size"] == "large"]
      small = [o["radius"] for o in objects if o["size"] == "small"]
      assert not large or not small or min(large) > max(small)


def test_region_slots(world):
  for split in world.splits.values():
    scenes, size = split.scenes, split.pixels.shape[1]
    assert (split.region_mask == 1).all()
    assert (split.region_boxes >= 0).all() and (split.region_boxes <= 1).all()
    assert (split.region_boxes[..., 2:] > split.region_boxes[..., :2]).all()
    for i in range(len(split)):
      k = scenes.num_objects[i]
      np.testing.assert_allclose(split.region_boxes[i, :k], scenes.boxes[i, :k] / size)
      np.testing.assert_allclose(split.region_boxes[i, k], [0, 0, 1, 1])


def test_noun_phrases_and_counts_are_true(world):
  for objects, _, ref, _ in _all_captions(world):
    words = ref.split()
    phrases = _noun_phrases(words)
    assert phrases, ref
    for _, _, determiner, size, colour, shape, plural in phrases:
      matching = [o for o in objects if _matches(o, size, colour, shape)]
      assert plural == (COUNTS[determiner] > 1), ref
      if COUNTS[determiner] > 1 or determiner == "the":  # exact counts, unique "the"
        assert len(matching) == COUNTS[determiner], (ref, objects)
      else:
        assert matching, (ref, objects)


def test_relations_are_true(world):
  seen = set()
  for objects, _, ref, size in _all_captions(world):
    words = ref.split()
    for phrase, relation in PHRASE_RELATION:
      starts = [s for s in range(len(words)) if words[s:s + len(phrase)] == phrase]
      if not starts:
        continue
      start, end = starts[0], starts[0] + len(phrase)
      phrases = _noun_phrases(words)
      left = [p for p in phrases if p[1] == start]
      right = [p for p in phrases if p[0] == end]
      assert len(left) == 1 and len(right) == 1, ref
      a_options = [o for o in objects if _matches(o, *left[0][3:6])]
      b_options = [o for o in objects if _matches(o, *right[0][3:6])]
      assert any(a is not b and _holds(relation, a, b, size / 16)
                 for a in a_options for b in b_options), (ref, objects)
      seen.add(relation)
      break  # one relation per caption; "left of" is inside "to the left of"
  assert seen == set(S.RELATION_PHRASES), seen


def test_backgrounds_are_named_right(world):
  stop = {"on", "in", "the", "a", "with"}
  words_of = {b: {w for text in phrases + nouns for w in text.split()} - stop
              for b, (_, phrases, nouns) in S.BACKGROUNDS.items()}
  named = 0
  for _, background, ref, _ in _all_captions(world):
    words = set(ref.split())
    for other, other_words in words_of.items():
      if other != background:
        assert not words & other_words, (ref, background)
    named += bool(words & words_of[background])
  assert named > 0


def test_config_errors():
  with pytest.raises(ValueError, match="num_regions"):
    S.make_world(_config(num_regions=3))
  with pytest.raises(ValueError, match="image_size"):
    S.make_world(_config(image_size=60))
  with pytest.raises(ValueError, match="min_objects"):
    S.make_world(_config(min_objects=0))


def test_describe_and_preview(world, tmp_path):
  split = world["train"]
  text = synthetic_preview.describe(split, 0)
  for obj in split.scenes.objects(0):
    assert f"{obj['size']} {obj['colour']} {obj['shape']}" in text
  assert S.BACKGROUND_NAMES[split.scenes.background[0]] in text
  assert split.references[0][0] in text
  path = tmp_path / "preview.png"
  synthetic_preview.save_preview(split, str(path), n=4)
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
