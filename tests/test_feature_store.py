"""Feature stores: build from tiny files in the released formats, read back by id, resume."""

import logging
import os
import pickle

import numpy as np
import pytest

from vlprobe_jax.data import feature_store as fs
from vlprobe_jax.data.feature_store import __main__ as feature_store_cli
from vlprobe_jax.data import features

DIM = 8


def _fc_folder(path, ids, seed=0):
  rng = np.random.default_rng(seed)
  os.makedirs(path, exist_ok=True)
  want = {}
  for i in ids:
    want[i] = rng.normal(size=DIM).astype(np.float32)
    np.save(os.path.join(path, f"{i}.npy"), want[i])
  return want


def _record(image_id, n, rng, h=50, w=100):
  boxes = np.tile(np.array([[10, 5, 60, 45]], np.float32), (n, 1)) + np.arange(n)[:, None]
  return features.RegionRecord(
      image_id=image_id, image_h=h, image_w=w, boxes=boxes.astype(np.float32),
      features=rng.normal(size=(n, DIM)).astype(np.float32),
      objects_id=np.arange(n, dtype=np.int32) + 3, objects_conf=np.full(n, 0.75, np.float32))


def _tsv(path, records, layout):
  with open(path, "w") as f:
    for record in records:
      f.write(features.encode_region_row(record, layout) + "\n")
  return str(path)


def test_fc_store_round_trip_across_shards(tmp_path):
  want = _fc_folder(tmp_path / "fc", [9, 2, 40, 7, 13])
  store = fs.build_fc_store(str(tmp_path / "fc"), str(tmp_path / "store"), feature_dim=DIM,
                            shard_size=2)
  assert store.finished and store.kind == "fc" and len(store) == 5
  assert sorted(n for n in os.listdir(tmp_path / "store") if n.endswith(".ids.npy")) == [
      "shard-00000.ids.npy", "shard-00001.ids.npy", "shard-00002.ids.npy"]
  order = [13, 2, 40, 9, 7, 2]
  np.testing.assert_array_equal(store.gather("fc", order), np.stack([want[i] for i in order]))
  column = store.column("fc", order)
  assert column.shape == (6, DIM) and len(column) == 6
  np.testing.assert_array_equal(column[1], want[2])
  np.testing.assert_array_equal(column[np.array([5, 0])], np.stack([want[2], want[13]]))
  np.testing.assert_array_equal(column[np.arange(6) > 3], np.stack([want[7], want[2]]))
  np.testing.assert_array_equal(np.asarray(column)[2], want[40])
  assert 40 in store and 41 not in store
  # A Dataset holding columns may be cached or sent to another process.
  np.testing.assert_array_equal(pickle.loads(pickle.dumps(column))[np.array([0])], [want[13]])
  np.testing.assert_array_equal(store.missing([2, 41, 3]), [41, 3])
  with pytest.raises(features.FeatureError, match=r"2 of 3 image ids have no features.*\[41, 3\]"):
    store.column("fc", [2, 41, 3])


def test_store_refuses_wrong_kind_and_missing_folder(tmp_path):
  _fc_folder(tmp_path / "fc", [1])
  fs.build_fc_store(str(tmp_path / "fc"), str(tmp_path / "store"), feature_dim=DIM)
  with pytest.raises(ValueError, match="a 'fc' store; expected a 'regions' store"):
    fs.FeatureStore(str(tmp_path / "store"), kind="regions")
  with pytest.raises(FileNotFoundError, match="feature_store build --kind regions"):
    fs.FeatureStore(str(tmp_path / "nothing"), kind="regions")


def test_interrupted_build_is_never_read_partially_and_resumes(tmp_path, monkeypatch, caplog):
  want = _fc_folder(tmp_path / "fc", range(1, 8))
  out = str(tmp_path / "store")
  real_read = features.read_fc_npy
  calls = []

  def read_then_crash(path, dim):
    calls.append(path)
    if len(calls) == 6:
      raise KeyboardInterrupt  # The user pressed ^C while image 6 was being read.
    return real_read(path, dim)

  monkeypatch.setattr(features, "read_fc_npy", read_then_crash)
  with pytest.raises(KeyboardInterrupt):
    fs.build_fc_store(str(tmp_path / "fc"), out, feature_dim=DIM, shard_size=2)
  # Images 1-4 are in two complete shards; image 5 sits in a shard still being written.
  assert any(name.endswith(".tmp") for name in os.listdir(out))
  with caplog.at_level(logging.WARNING):
    partial = fs.FeatureStore(out, "fc")
  assert sorted(partial.ids.tolist()) == [1, 2, 3, 4] and not partial.finished
  assert "incomplete store" in caplog.text
  first_shard = os.stat(os.path.join(out, "shard-00000.fc.npy"))

  calls.clear()
  store = fs.build_fc_store(str(tmp_path / "fc"), out, feature_dim=DIM, shard_size=2)
  assert [os.path.basename(p) for p in calls] == ["5.npy", "6.npy", "7.npy"]
  assert store.finished and sorted(store.ids.tolist()) == list(range(1, 8))
  assert not any(name.endswith(".tmp") for name in os.listdir(out))
  assert os.stat(os.path.join(out, "shard-00000.fc.npy")).st_mtime_ns == first_shard.st_mtime_ns
  np.testing.assert_array_equal(store.gather("fc", [7, 1]), np.stack([want[7], want[1]]))


def test_shard_files_missing_from_the_manifest_are_ignored(tmp_path):
  _fc_folder(tmp_path / "fc", [1, 2])
  out = str(tmp_path / "store")
  fs.build_fc_store(str(tmp_path / "fc"), out, feature_dim=DIM, shard_size=2)
  # A crash between renaming a shard's files and listing it in the manifest leaves these.
  np.save(os.path.join(out, "shard-00001.ids.npy"), np.array([99], np.int64))
  np.save(os.path.join(out, "shard-00001.fc.npy"), np.ones((1, DIM), np.float32))
  assert 99 not in fs.FeatureStore(out)


def test_resume_with_other_options_is_refused(tmp_path):
  _fc_folder(tmp_path / "fc", [1])
  fs.build_fc_store(str(tmp_path / "fc"), str(tmp_path / "store"), feature_dim=DIM)
  writer = fs.StoreWriter(str(tmp_path / "store"), "fc", 4)
  with pytest.raises(ValueError, match="Resume with the same options"):
    writer.add(2, fc=np.zeros(DIM + 1, np.float32))
  with pytest.raises(ValueError, match="holds a 'fc' store"):
    fs.StoreWriter(str(tmp_path / "store"), "clip", 4)


@pytest.mark.parametrize("layout", ["obj36", "rosita"])
def test_region_store_from_two_tsvs(tmp_path, layout):
  rng = np.random.default_rng(1)
  first = [_record(10, 3, rng), _record(4, 2, rng)]
  second = [_record(77, 3, rng), _record(10, 3, rng)]  # 10 again: the first copy is kept.
  sources = [_tsv(tmp_path / "a.tsv", first, layout), _tsv(tmp_path / "b.tsv", second, layout)]
  store = fs.build_region_store(sources, str(tmp_path / "store"), max_regions=3,
                                feature_dim=DIM, shard_size=2)
  assert sorted(store.ids.tolist()) == [4, 10, 77]
  feats = store.gather("feats", [4, 10])
  np.testing.assert_array_equal(feats[0, :2], first[1].features)
  np.testing.assert_array_equal(feats[0, 2], 0)  # Padding row.
  np.testing.assert_array_equal(feats[1], first[0].features)
  np.testing.assert_array_equal(store.gather("mask", [4])[0], [1, 1, 0])
  np.testing.assert_allclose(store.gather("boxes", [4])[0, 0], [0.1, 0.1, 0.6, 0.9], rtol=1e-6)
  np.testing.assert_array_equal(store.gather("image_wh", [77]), [[100, 50]])
  np.testing.assert_array_equal(store.gather("objects_id", [4])[0], [3, 4, -1])


def test_region_store_float16_and_too_many_regions(tmp_path, caplog):
  rng = np.random.default_rng(2)
  path = _tsv(tmp_path / "a.tsv", [_record(1, 2, rng), _record(2, 5, rng)], "obj36")
  with pytest.raises(features.FeatureError,
                     match=r"5 regions; expected at most 3.*--max-regions 5"):
    fs.build_region_store([path], str(tmp_path / "stop"), max_regions=3, feature_dim=DIM)
  with caplog.at_level(logging.WARNING):
    store = fs.build_region_store([path], str(tmp_path / "skip"), max_regions=3,
                                  feature_dim=DIM, dtype="float16", on_error="skip")
  assert store.ids.tolist() == [1] and "skipped 1 bad TSV rows" in caplog.text
  assert store.fields["feats"] == ((3, DIM), "float16")


def test_clip_store_with_a_caller_embed_fn(tmp_path, caplog):
  from PIL import Image
  images = tmp_path / "images" / "val2014"
  os.makedirs(images)
  colours = {3: (255, 0, 0), 8: (0, 0, 255), 5: (0, 255, 0)}
  for i, colour in colours.items():
    Image.new("RGB", (40, 30), colour).save(images / f"COCO_val2014_{i:012d}.jpg", quality=95)
  (images / "COCO_val2014_000000000006.jpg").write_bytes(b"broken")
  batches = []

  def embed_fn(pixels):  # Mean colour as a 3-d "embedding".
    batches.append(pixels.shape)
    return pixels.reshape(len(pixels), -1, 3).mean(1)

  with caplog.at_level(logging.INFO):
    store = fs.build_clip_store(str(tmp_path / "images"), str(tmp_path / "store"), embed_fn,
                                image_size=16, batch_size=2, on_error="skip",
                                progress_every_s=0.0)
  assert batches[0] == (2, 16, 16, 3)
  assert sorted(store.ids.tolist()) == [3, 5, 8]
  np.testing.assert_allclose(store.gather("embedding", [8, 3]),
                             [colours[8], colours[3]], atol=3)
  assert "ETA" in caplog.text and "cannot decode the image" in caplog.text


def test_command_line_build_info_and_help(tmp_path, capsys):
  _fc_folder(tmp_path / "fc", [3, 1])
  out = str(tmp_path / "store")
  assert feature_store_cli.main(["build", "--kind", "fc", "--source", str(tmp_path / "fc"), "--out", out,
                  "--feature-dim", str(DIM)]) == 0
  assert feature_store_cli.main(["info", out]) == 0
  printed = capsys.readouterr().out
  assert "fc store, 2 images, finished" in printed and f"fc: [{DIM}] float32" in printed
  with pytest.raises(SystemExit) as exit_info:
    feature_store_cli.main(["build", "--help"])
  assert exit_info.value.code == 0
  help_text = capsys.readouterr().out
  for option in ("--kind", "--source", "--out", "--on-error", "--max-regions", "--embed-fn"):
    assert option in help_text


def test_command_line_clip_build_with_an_embed_fn_module(tmp_path, monkeypatch):
  import sys
  import types
  from PIL import Image
  os.makedirs(tmp_path / "images")
  for i in (4, 2):
    Image.new("RGB", (20, 20), (10 * i, 0, 0)).save(tmp_path / "images" / f"{i}.png")
  module = types.ModuleType("fake_clip_module")
  checkpoints = []

  def make(checkpoint):
    checkpoints.append(checkpoint)
    return lambda pixels: pixels[:, 0, 0, :2].astype(np.float32)

  module.make = make
  monkeypatch.setitem(sys.modules, "fake_clip_module", module)
  assert feature_store_cli.main(["build", "--kind", "clip", "--source", str(tmp_path / "images"),
                  "--out", str(tmp_path / "store"), "--embed-fn", "fake_clip_module:make",
                  "--checkpoint", "/ckpt", "--image-size", "8"]) == 0
  store = fs.FeatureStore(str(tmp_path / "store"), "clip")
  assert checkpoints == ["/ckpt"]
  np.testing.assert_allclose(store.gather("embedding", [2, 4]), [[20, 0], [40, 0]], atol=2)
