"""COCO loading on a tiny Karpathy json and a mocked TFDS coco_captions, with real-format stores."""

import io
import json
import logging
import os

import numpy as np
import pytest

from vlprobe_jax.data import coco
from vlprobe_jax.data import feature_store
from vlprobe_jax.data import features

DIM = 8
LONG = "a man in a red shirt rides a bike down a long road next to a big green field today".split()


def _sentences(*captions):
  return [{"tokens": c.split() if isinstance(c, str) else c, "raw": " ".join(c)} for c in captions]


# Word counts over all splits: "dog" 6 (kept at threshold 5), "cat" 5 (UNK: strictly greater
# is kept), "the" 4 (UNK), "zebra" 6 but only 1 in train captions.
IMAGES = [
    dict(cocoid=10, split="train", filepath="train2014", filename="COCO_train2014_000000000010.jpg",
         sentences=_sentences("a dog", "a dog runs", "the cat", "a cat", "the dog", "a dog sits",
                              "a zebra")),
    dict(cocoid=20, split="restval", filepath="val2014", filename="COCO_val2014_000000000020.jpg",
         sentences=_sentences("a dog eats", "the cat sits", "a cat", LONG)),
    dict(cocoid=30, split="val", filepath="val2014", filename="COCO_val2014_000000000030.jpg",
         sentences=_sentences("a zebra", "a cat", "x", "y", "z")),
    dict(cocoid=40, split="test", filepath="val2014", filename="COCO_val2014_000000000040.jpg",
         sentences=_sentences("a zebra", "a zebra", "a zebra", "a zebra", "w")),
    dict(cocoid=50, split="train", filepath="train2014", filename="COCO_train2014_000000000050.jpg",
         sentences=_sentences("the dog")),
]


@pytest.fixture
def world(tmp_path):
  rng = np.random.default_rng(0)
  json_path = tmp_path / "dataset_coco.json"
  json_path.write_text(json.dumps({"images": IMAGES, "dataset": "coco"}))
  fc = {}
  os.makedirs(tmp_path / "cocotalk_fc")
  for image in IMAGES:
    fc[image["cocoid"]] = rng.normal(size=DIM).astype(np.float32)
    np.save(tmp_path / "cocotalk_fc" / f"{image['cocoid']}.npy", fc[image["cocoid"]])
  feature_store.build_fc_store(str(tmp_path / "cocotalk_fc"), str(tmp_path / "fc"),
                               feature_dim=DIM)
  records = []
  with open(tmp_path / "obj36.tsv", "w") as f:
    for image in IMAGES:
      boxes = np.array([[0, 0, 50, 20], [10, 10, 100, 40]], np.float32)
      record = features.RegionRecord(image["cocoid"], 40, 100, boxes,
                                     rng.normal(size=(2, DIM)).astype(np.float32),
                                     np.arange(2, dtype=np.int32), np.ones(2, np.float32))
      records.append(record)
      f.write(features.encode_region_row(record, "obj36") + "\n")
  feature_store.build_region_store([str(tmp_path / "obj36.tsv")], str(tmp_path / "regions"),
                                   max_regions=3, feature_dim=DIM)
  config = dict(source="karpathy_json", karpathy_json=str(json_path), fc_store=str(tmp_path / "fc"),
                region_store=str(tmp_path / "regions"), count_threshold=5, max_length=16)
  return config, fc, {r.image_id: r for r in records}, tmp_path


def test_karpathy_json_splits_vocab_labels_and_features(world):
  config, fc, records, _ = world
  dataset = coco.load_coco(config)
  train = dataset["train"]
  # restval (20) joins train, in file order.
  assert train.image_ids.tolist() == [10, 20, 50]
  assert dataset["val"].image_ids.tolist() == [30] and dataset["test"].image_ids.tolist() == [40]
  words = dataset.vocab.words
  assert "dog" in words and "a" in words and "zebra" in words
  assert "cat" not in words and words[-1] == "UNK"
  # Image 10: the first 5 of its 7 captions; "the" (4 times), "cat" (5) and "runs" are UNK.
  assert [dataset.vocab.decode(row) for row in train.labels[0]] == [
      "a dog", "a dog UNK", "UNK UNK", "a UNK", "UNK dog"]
  assert train.labels.shape == (3, 5, 16) and train.labels.dtype == np.int32
  # Image 20 has 4 captions: cycled; the long one cut at 16 words.
  rows = [dataset.vocab.decode(row) for row in train.labels[1]]
  assert rows[4] == rows[0] and len(rows[3].split()) == 16 and len(LONG) > 16
  # Image 50 has one caption, repeated 5 times.
  assert len(set(map(tuple, train.labels[2].tolist()))) == 1
  assert train.references[1][3] == " ".join(LONG)  # References are never cut.
  np.testing.assert_array_equal(train.fc_feats, np.stack([fc[10], fc[20], fc[50]]))
  np.testing.assert_array_equal(train.region_feats[np.array([1])][0, :2], records[20].features)
  np.testing.assert_allclose(train.region_boxes[0][1], [0.1, 0.25, 1.0, 1.0], rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(train.region_mask), [[1, 1, 0]] * 3)
  images = train.scorer_images(np.array([2, 0]))
  assert images["region_feats"].shape == (2, 3, DIM) and images["region_feats"].dtype == np.float32
  assert "9,487" not in dataset.description and "train 3 / val 1 / test 1" in dataset.description


def test_vocab_from_train_only_drops_words_of_the_other_splits(world):
  config, *_ = world
  all_words = coco.load_coco(config).vocab.words
  train_words = coco.load_coco(dict(config, vocab_from="train")).vocab.words
  assert "zebra" in all_words and "zebra" not in train_words


def test_missing_features_stop_or_skip(world, caplog):
  config, _, _, tmp_path = world
  os.makedirs(tmp_path / "fc_part")
  for i in (10, 30, 40):
    np.save(tmp_path / "fc_part" / f"{i}.npy", np.zeros(DIM, np.float32))
  feature_store.build_fc_store(str(tmp_path / "fc_part"), str(tmp_path / "fc2"), feature_dim=DIM)
  partial = dict(config, fc_store=str(tmp_path / "fc2"))
  with pytest.raises(features.FeatureError, match=r"train: 2 of 3 images have no fc features.*"
                     r"\[20, 50\]"):
    coco.load_coco(partial)
  with caplog.at_level(logging.WARNING):
    dataset = coco.load_coco(dict(partial, on_error="skip"))
  assert dataset["train"].image_ids.tolist() == [10]
  assert "dropped 2 images without fc features" in caplog.text


def test_max_images_and_missing_fields(world):
  config, *_ = world
  dataset = coco.load_coco(dict(config, max_images=1, region_store=""))
  assert [len(dataset[s]) for s in coco.SPLITS] == [1, 1, 1]
  assert dataset["train"].region_feats is None
  with pytest.raises(ValueError, match="fc_store is empty.*--kind fc"):
    coco.load_coco(dict(config, fc_store=""))
  with pytest.raises(ValueError, match="source must be 'karpathy_json' or 'tfds'"):
    coco.load_coco(dict(config, source="hub"))


def test_pixels_from_the_image_folder(world):
  from PIL import Image
  config, _, _, tmp_path = world
  for image in IMAGES:
    os.makedirs(tmp_path / "images" / image["filepath"], exist_ok=True)
    Image.new("RGB", (30, 20), (image["cocoid"], 0, 0)).save(
        tmp_path / "images" / image["filepath"] / image["filename"])
  dataset = coco.load_coco(dict(config, image_dir=str(tmp_path / "images"), image_size=8))
  pixels = dataset["train"].scorer_images(np.array([1]))["pixels"]
  assert pixels.shape == (1, 8, 8, 3) and abs(int(pixels[0, 4, 4, 0]) - 20) <= 2
  os.remove(tmp_path / "images" / "val2014" / "COCO_val2014_000000000030.jpg")
  with pytest.raises(features.FeatureError, match=r"val: 1 of 1 images have no image file"):
    coco.load_coco(dict(config, image_dir=str(tmp_path / "images"), image_size=8))
  dataset = coco.load_coco(dict(config, image_dir=str(tmp_path / "images"), image_size=8,
                                on_error="skip"))
  assert len(dataset["val"]) == 0 and len(dataset["train"]) == 3


def test_tfds_coco_captions_feature_names_are_what_the_reader_uses():
  tfds = pytest.importorskip("tensorflow_datasets")  # The optional [coco] extra.
  assert tfds.builder_cls("coco_captions").BUILDER_CONFIGS[0].name == "2014"
  spec = tfds.builder("coco_captions/2014", data_dir="/nonexistent").info.features
  assert {"image", "image/id", "image/filename", "captions", "objects"} <= set(spec.keys())
  assert set(spec["captions"].feature.keys()) == {"text", "id"}


def _png(colour):
  from PIL import Image
  buffer = io.BytesIO()
  Image.new("RGB", (12, 10), colour).save(buffer, format="PNG")
  return buffer.getvalue()


def test_tfds_source_with_mock_data(world):
  tf = pytest.importorskip("tensorflow")
  tfds = pytest.importorskip("tensorflow_datasets")
  config, *_ = world
  by_split = {"train": [], "restval": [], "val": [], "test": []}
  for image in IMAGES:
    by_split[image["split"]].append({
        "image": _png((image["cocoid"], 0, 0)), "image/id": image["cocoid"],
        "image/filename": image["filename"],
        "captions": {"text": [" ".join(s["tokens"]).upper() + "." for s in image["sentences"]],
                     "id": list(range(len(image["sentences"])))}})
  seen_decoders = []

  def as_dataset(self, split, decoders=None, **kwargs):
    del self, kwargs
    seen_decoders.append(decoders)
    examples = by_split[str(split)]
    signature = {"image": tf.TensorSpec((), tf.string), "image/id": tf.TensorSpec((), tf.int64),
                 "image/filename": tf.TensorSpec((), tf.string),
                 "captions": {"text": tf.TensorSpec((None,), tf.string),
                              "id": tf.TensorSpec((None,), tf.int64)}}
    return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=signature)

  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    from_tfds = coco.load_coco(dict(config, source="tfds", karpathy_json="", image_size=6))
  from_json = coco.load_coco(config)
  assert all(isinstance(d["image"], tfds.decode.SkipDecoding) for d in seen_decoders)
  for name in coco.SPLITS:
    # TFDS gives train then restval; the json interleaves them. Compare image by image.
    a, b = from_tfds[name], from_json[name]
    order_a, order_b = np.argsort(a.image_ids), np.argsort(b.image_ids)
    np.testing.assert_array_equal(a.image_ids[order_a], b.image_ids[order_b])
    # Raw upper-case sentences with a full stop tokenise to Karpathy's tokens.
    assert [a.references[i] for i in order_a] == [b.references[i] for i in order_b]
    np.testing.assert_array_equal(a.labels[order_a], b.labels[order_b])
    np.testing.assert_array_equal(a.fc_feats[order_a], b.fc_feats[order_b])
  assert from_tfds["train"].image_ids.tolist() == [10, 50, 20]
  assert from_tfds.vocab == from_json.vocab
  assert from_tfds["val"].pixels.shape == (1, 6, 6, 3)
  assert abs(int(from_tfds["val"].pixels[0, 3, 3, 0]) - 30) <= 2


def test_a_saved_vocabulary_is_reused(world):
  config, _, _, tmp_path = world
  built = coco.load_coco(config)
  (tmp_path / "cocotalk.json").write_text(built.vocab.to_json())
  # With max_images=1 a fresh vocabulary would be smaller; the saved one keeps every id.
  reused = coco.load_coco(dict(config, max_images=1, vocab_json=str(tmp_path / "cocotalk.json")))
  assert reused.vocab == built.vocab
  assert coco.load_coco(dict(config, max_images=1)).vocab != built.vocab
  assert "from " + str(tmp_path / "cocotalk.json") in reused.description


def test_clip_store_rides_on_split_image_embeds_when_the_split_has_that_field(world):
  import dataclasses
  from vlprobe_jax.data.dataset import Split
  config, _, _, tmp_path = world
  writer = feature_store.StoreWriter(str(tmp_path / "clip"), "clip", shard_size=4)
  for image in IMAGES:
    writer.add(image["cocoid"], embedding=np.full(3, image["cocoid"], np.float32))
  writer.finish()
  with_clip = dict(config, clip_store=str(tmp_path / "clip"))
  if "image_embeds" in {f.name for f in dataclasses.fields(Split)}:
    dataset = coco.load_coco(with_clip)
    np.testing.assert_array_equal(np.asarray(dataset["train"].image_embeds)[:, 0], [10, 20, 50])
  else:
    with pytest.raises(ValueError, match="Split has no image_embeds field"):
      coco.load_coco(with_clip)


def test_pixel_store_gives_the_splits_their_pixels(world):
  """SigLIP / BLIP on COCO: `data.pixel_store` (images resized once) instead of decoding."""
  config, _, _, tmp_path = world
  writer = feature_store.StoreWriter(str(tmp_path / "pixels"), "pixels", shard_size=2)
  for image in IMAGES:
    writer.add(image["cocoid"], pixels=np.full((4, 4, 3), image["cocoid"], np.uint8))
  writer.finish()
  dataset = coco.load_coco(dict(config, pixel_store=str(tmp_path / "pixels")))
  train = dataset["train"]
  np.testing.assert_array_equal(np.asarray(train.pixels[:])[:, 0, 0, 0], [10, 20, 50])
  assert np.asarray(train.scorer_images([1])["pixels"]).shape == (1, 4, 4, 3)
  with pytest.raises(ValueError, match="holds 4 x 4 images; expected equal sizes"):
    coco.load_coco(dict(config, pixel_store=str(tmp_path / "pixels"), image_size=8))
