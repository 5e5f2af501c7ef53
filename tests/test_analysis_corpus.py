"""Tests of analysis/corpus.py: references and LM text from the files people have.

The real captions come from tests/assets/coco_val2017_captions_subset.json (COCO, CC BY 4.0; see
tests/assets/LICENSES.md); the Karpathy-format file is written from it here.
"""

import collections
import json
import os

import ml_collections
import pytest

from analysis import corpus as corpus_lib
from analysis import text

ASSETS = os.path.join(os.path.dirname(__file__), "assets")
COCO = os.path.join(ASSETS, "coco_val2017_captions_subset.json")
FAKECAP = os.path.join(ASSETS, "coco_fakecap_results_subset.json")
# These tests are about reading, not tokenizing: the Java-free tokenizer keeps them fast.
FAST = {"tokenizer": "lower"}


def _coco():
  with open(COCO, encoding="utf-8") as f:
    return json.load(f)


def image_split():
  """(test image ids, LM image ids) of the fixture, as LICENSES.md describes them."""
  with open(FAKECAP, encoding="utf-8") as f:
    test_ids = sorted({c["image_id"] for c in json.load(f)})
  lm_ids = sorted({a["image_id"] for a in _coco()["annotations"]} - set(test_ids))
  assert (len(test_ids), len(lm_ids)) == (126, 300)
  return test_ids, lm_ids


def write_karpathy(path, id_key="cocoid"):
  """The fixture as a Karpathy-split json: test images "test", the others train and restval."""
  test_ids, lm_ids = image_split()
  by_image = collections.defaultdict(list)
  for a in _coco()["annotations"]:
    by_image[a["image_id"]].append({"raw": a["caption"], "tokens": a["caption"].split()})
  images = []
  for n, image_id in enumerate(test_ids + lm_ids):
    split = "test" if image_id in test_ids else ("train" if n % 2 else "restval")
    images.append({id_key: image_id, "split": split, "filename": f"{image_id}.jpg",
                   "sentences": by_image[image_id]})
  with open(path, "w", encoding="utf-8") as f:
    json.dump({"dataset": "coco", "images": images}, f)
  return str(path)


def test_coco_captions_json_gives_every_caption_as_references():
  refs, where, skipped = corpus_lib.read_references(COCO, **FAST)
  assert len(refs) == 426 and sum(len(r) for r in refs.values()) == 2132
  assert "COCO captions json: 426 images, 2132 captions" in where and not skipped
  # Normalised: lower-case, no trailing newline or punctuation.
  assert all(r == r.lower() and "\n" not in r and not r.endswith(".")
             for rs in refs.values() for r in rs)


def test_karpathy_json_splits(tmp_path):
  path = write_karpathy(tmp_path / "dataset_coco.json")
  test_ids, lm_ids = image_split()
  refs, where, _ = corpus_lib.read_references(path, "test", **FAST)
  assert sorted(refs) == test_ids and "Karpathy json, split test" in where
  train, where, _, ids = corpus_lib.read_lm_text(path, **FAST)
  assert ids == set(lm_ids) and "split train+restval" in where
  assert len(train) == sum(1 for a in _coco()["annotations"] if a["image_id"] in ids)
  with pytest.raises(ValueError, match=r"no captions in split\(s\) \['val'\]; the file has "
                                       r"splits \['restval', 'test', 'train'\]"):
    corpus_lib.read_references(path, "val", **FAST)


def test_flickr_style_karpathy_ids(tmp_path):
  path = write_karpathy(tmp_path / "dataset_flickr8k.json", id_key="imgid")
  refs, _, _ = corpus_lib.read_references(path, "test", **FAST)
  assert sorted(refs) == image_split()[0]


def test_text_file_lm(tmp_path):
  path = tmp_path / "lm.txt"
  path.write_text("A dog on a bed.\nTwo cats\n", encoding="utf-8")
  train, where, _, ids = corpus_lib.read_lm_text(str(path), **FAST)
  assert train == [["a", "dog", "on", "a", "bed"], ["two", "cats"]]
  assert "text file" in where and ids == set()
  path.write_text("A dog\n\nTwo cats\n", encoding="utf-8")
  with pytest.raises(text.CaptionError, match="line 2: empty"):
    corpus_lib.read_lm_text(str(path), **FAST)


def test_wrong_files_are_explained(tmp_path):
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps([{"image_id": 1, "caption": "a dog"}]))
  with pytest.raises(ValueError, match="expected a Karpathy json .* or a COCO captions json "
                                       r".*; found list"):
    corpus_lib.read_references(str(bad))
  bad.write_text(json.dumps({"annotations": [{"image_id": 1, "text": "a dog"}]}))
  with pytest.raises(ValueError, match=r"annotations\[0\] must have 'image_id' and 'caption'"):
    corpus_lib.read_references(str(bad))
  with pytest.raises(FileNotFoundError, match="not found"):
    corpus_lib.read_references(str(tmp_path / "missing.json"))


def test_bad_reference_captions(tmp_path):
  path = tmp_path / "refs.json"
  path.write_text(json.dumps({"annotations": [
      {"image_id": 5, "caption": "A dog."}, {"image_id": 5, "caption": None},
      {"image_id": 6, "caption": ""}]}))
  with pytest.raises(text.CaptionError, match=r"\(5, 1\): not a string \(null\)"):
    corpus_lib.read_references(str(path), **FAST)
  refs, _, skipped = corpus_lib.read_references(str(path), policy="skip", **FAST)
  assert refs == {5: ["a dog"]} and len(skipped) == 2  # image 6 has no references left


def test_corpus_from_config_without_any_world(tmp_path):
  path = write_karpathy(tmp_path / "dataset_coco.json")
  config = ml_collections.ConfigDict({"references": COCO, "lm_corpus": path,
                                      "tokenizer": "lower", "bad_captions": "refuse"})
  corpus = corpus_lib.corpus_from_config(config)
  assert len(corpus.references) == 426 and len(corpus.train_captions) > 1000
  assert corpus.provenance["tokenizer"] == "lower"
  # The COCO file's references include the LM images: reported, not hidden.
  assert "300 of the 426 reference images also give language-model captions" in (
      corpus.provenance["lm_overlap"])
  empty = corpus_lib.corpus_from_config(ml_collections.ConfigDict({"tokenizer": "lower"}))
  assert empty.train_captions is None and empty.references == {}
  assert empty.provenance["references"] == "none"
