"""Readers of the released feature formats, on tiny files written here in those formats.

The obj36 rows are written the way LXMERT's extractor wrote them (base64 of the raw bytes of
int64 / float32 arrays, tab-separated, 10 columns) by a writer in this file that does not use
the module's own `encode_region_row`, so a shared mistake cannot hide; ROSITA rows go through
`encode_region_row` and are checked against the arrays they came from.
"""

import base64
import logging
import os

import numpy as np
import pytest

from vlprobe_jax.data import features

DIM = 8  # Feature width in these tests (2048 on COCO).


def _b64(array, dtype):
  return base64.b64encode(np.asarray(array, dtype).tobytes()).decode()


def _obj36_line(image_id, boxes, feats, h=100, w=200):
  n = len(boxes)
  return "\t".join([
      f"COCO_train2014_{image_id:012d}", str(h), str(w),
      _b64(np.arange(n), "<i8"), _b64(np.linspace(0.5, 0.9, n), "<f4"),
      _b64(np.arange(n) + 7, "<i8"), _b64(np.full(n, 0.25), "<f4"),
      str(n), _b64(boxes, "<f4"), _b64(feats, "<f4")])


def _record(image_id, n, rng, h=100, w=200):
  x1 = rng.uniform(0, w / 2, n)
  y1 = rng.uniform(0, h / 2, n)
  boxes = np.stack([x1, y1, x1 + w / 4, y1 + h / 4], 1).astype(np.float32)
  return features.RegionRecord(
      image_id=image_id, image_h=h, image_w=w, boxes=boxes,
      features=rng.normal(size=(n, DIM)).astype(np.float32),
      objects_id=np.arange(n, dtype=np.int32), objects_conf=np.full(n, 0.5, np.float32))


def _write(path, lines):
  with open(path, "w") as f:
    f.write("".join(line + "\n" for line in lines))
  return str(path)


@pytest.mark.parametrize("name, expected", [
    ("391895", 391895), ("COCO_val2014_000000391895", 391895),
    ("val2014/COCO_val2014_000000391895.jpg", 391895), ("9.npy", 9)])
def test_parse_image_id(name, expected):
  assert features.parse_image_id(name) == expected


def test_parse_image_id_rejects_names_without_digits():
  with pytest.raises(ValueError, match="cannot read a COCO image id"):
    features.parse_image_id("cat.jpg")


def test_obj36_rows_round_trip_and_boxes_are_normalised(tmp_path):
  rng = np.random.default_rng(0)
  boxes = np.array([[10, 20, 110, 70], [0, 0, 200, 100]], np.float32)
  feats = rng.normal(size=(2, DIM)).astype(np.float32)
  path = _write(tmp_path / "obj36.tsv", [_obj36_line(42, boxes, feats),
                                         _obj36_line(7, boxes[:1], feats[:1])])
  reader = features.RegionTsvReader(path, feature_dim=DIM)
  records = list(reader)
  assert [r.image_id for r in records] == [42, 7]
  np.testing.assert_array_equal(records[0].features, feats)
  np.testing.assert_array_equal(records[0].boxes, boxes)
  np.testing.assert_array_equal(records[0].objects_id, [0, 1])
  # x by the width (200), y by the height (100).
  np.testing.assert_allclose(records[0].normalized_boxes(),
                             [[0.05, 0.2, 0.55, 0.7], [0, 0, 1, 1]], rtol=1e-6)
  assert records[1].features.shape == (1, DIM)
  assert reader.bytes_read == reader.bytes_total == os.path.getsize(path)


def test_rosita_rows_round_trip_with_lineidx_random_access(tmp_path):
  rng = np.random.default_rng(1)
  records = [_record(i, n, rng) for i, n in [(5, 3), (11, 2), (8, 4)]]
  lines = [features.encode_region_row(r, "rosita") for r in records]
  path = _write(tmp_path / "imgfeat.tsv", lines)
  offsets = np.cumsum([0] + [len(line) + 1 for line in lines[:-1]])
  _write(tmp_path / "imgfeat.lineidx", [str(o) for o in offsets])
  reader = features.RegionTsvReader(path, "rosita", feature_dim=DIM)
  assert reader.num_rows == 3
  for got, want in zip(reader, records):
    assert got.image_id == want.image_id
    np.testing.assert_array_equal(got.features, want.features)
    np.testing.assert_array_equal(got.boxes, want.boxes)
  row = reader.read_row(2)
  assert row.image_id == 8
  np.testing.assert_array_equal(row.features, records[2].features)


def test_auto_layout_tells_obj36_from_rosita(tmp_path):
  rng = np.random.default_rng(2)
  record = _record(3, 2, rng)
  for layout in ("obj36", "rosita"):
    path = _write(tmp_path / f"{layout}.tsv", [features.encode_region_row(record, layout)])
    (got,) = list(features.RegionTsvReader(path, "auto", feature_dim=DIM))
    np.testing.assert_array_equal(got.features, record.features)


@pytest.mark.parametrize("corrupt, message", [
    (lambda fields: fields[:-1], "9 tab-separated fields; expected 10"),
    (lambda fields: fields[:9] + ["@@not base64@@"], "not valid base64"),
    (lambda fields: fields[:9] + [fields[9][:-8]], "holds .* bytes; expected"),
])
def test_corrupt_rows_name_file_line_and_expectation(tmp_path, corrupt, message):
  rng = np.random.default_rng(3)
  good = _obj36_line(1, np.ones((2, 4)), rng.normal(size=(2, DIM)))
  bad = "\t".join(corrupt(_obj36_line(2, np.ones((2, 4)), rng.normal(size=(2, DIM))).split("\t")))
  path = _write(tmp_path / "bad.tsv", [good, bad])
  with pytest.raises(features.FeatureError, match=message) as info:
    list(features.RegionTsvReader(path, "obj36", feature_dim=DIM))
  assert f"{path}:2" in str(info.value)


def test_wrong_feature_dimension_is_reported_with_the_width_found(tmp_path):
  rng = np.random.default_rng(4)
  path = _write(tmp_path / "wide.tsv", [_obj36_line(1, np.ones((2, 4)), rng.normal(size=(2, 16)))])
  with pytest.raises(features.FeatureError, match=r"i.e. \[2, 16\]: a wrong feature dimension"):
    list(features.RegionTsvReader(path, "obj36", feature_dim=DIM))


def test_skip_mode_counts_and_logs_bad_rows(tmp_path, caplog):
  rng = np.random.default_rng(5)
  good = [_obj36_line(i, np.ones((1, 4)), rng.normal(size=(1, DIM))) for i in (1, 2)]
  path = _write(tmp_path / "mixed.tsv", [good[0], "garbage\tline", good[1]])
  reader = features.RegionTsvReader(path, "obj36", feature_dim=DIM, on_error="skip")
  with caplog.at_level(logging.WARNING):
    ids = [r.image_id for r in reader]
    reader.policy.log_summary()
  assert ids == [1, 2]
  assert reader.policy.skipped == 1
  assert f"{path}:2" in caplog.text and "skipped 1 bad" in caplog.text


def test_skip_ids_are_not_decoded(tmp_path):
  rng = np.random.default_rng(6)
  # Row of image 2 is corrupt, but as an already-stored id it is passed over, not decoded.
  lines = [_obj36_line(1, np.ones((1, 4)), rng.normal(size=(1, DIM))),
           _obj36_line(2, np.ones((1, 4)), rng.normal(size=(1, DIM)))[:-10]]
  path = _write(tmp_path / "t.tsv", lines)
  got = list(features.RegionTsvReader(path, "obj36", feature_dim=DIM, skip_ids={2}))
  assert [r.image_id for r in got] == [1]


def test_fc_folder_reads_in_id_order_and_checks_files(tmp_path):
  rng = np.random.default_rng(7)
  want = {i: rng.normal(size=DIM).astype(np.float32) for i in (30, 4, 100)}
  for i, x in want.items():
    np.save(tmp_path / f"{i}.npy", x)
  np.save(tmp_path / "55.npy", np.zeros((1, DIM), np.float32))  # [1, D] is accepted too.
  (tmp_path / "notes.txt").write_text("not a feature")
  reader = features.FcFolderReader(str(tmp_path), feature_dim=DIM)
  got = list(reader)
  assert [i for i, _ in got] == [4, 30, 55, 100]
  for i, x in got:
    np.testing.assert_array_equal(x, want.get(i, np.zeros(DIM, np.float32)))


def test_truncated_npy_is_reported(tmp_path):
  path = tmp_path / "12.npy"
  np.save(path, np.ones(DIM, np.float32))
  data = path.read_bytes()
  path.write_bytes(data[:-5])
  with pytest.raises(features.FeatureError, match=r"truncated \.npy.*holds \d+"):
    features.read_fc_npy(str(path), DIM)
  reader = features.FcFolderReader(str(tmp_path), feature_dim=DIM, on_error="skip")
  assert list(reader) == [] and reader.policy.skipped == 1


def test_fc_of_the_wrong_dimension_is_reported(tmp_path):
  np.save(tmp_path / "3.npy", np.ones(DIM + 1, np.float32))
  with pytest.raises(features.FeatureError, match=rf"shape \({DIM + 1},\).*expected"):
    list(features.FcFolderReader(str(tmp_path), feature_dim=DIM))


def test_load_image_resizes_shorter_side_and_centre_crops(tmp_path):
  from PIL import Image
  pixels = np.zeros((40, 80, 3), np.uint8)
  pixels[:, 20:60] = [255, 0, 0]  # A red centre band that the crop keeps.
  Image.fromarray(pixels).save(tmp_path / "COCO_val2014_000000000001.png")
  out = features.load_image(str(tmp_path / "COCO_val2014_000000000001.png"), 20)
  assert out.shape == (20, 20, 3) and out.dtype == np.uint8
  assert np.all(out[:, 5:15, 0] > 200) and np.all(out[:, 5:15, 1] < 50)
  assert features.list_images(str(tmp_path)) == {1: str(tmp_path / "COCO_val2014_000000000001.png")}
  (tmp_path / "COCO_val2014_000000000002.jpg").write_bytes(b"not a jpeg")
  with pytest.raises(features.FeatureError, match="cannot decode the image"):
    features.load_image(str(tmp_path / "COCO_val2014_000000000002.jpg"), 20)
  column = features.ImageColumn([str(tmp_path / "COCO_val2014_000000000001.png")] * 3, 20)
  assert column[np.array([2, 0])].shape == (2, 20, 20, 3)
