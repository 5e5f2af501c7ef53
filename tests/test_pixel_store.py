"""The `pixels` feature store (SigLIP's and BLIP's image side on COCO) and the square resize."""

import logging
import os

import numpy as np
import pytest

from vlprobe_jax.data import feature_store as fs
from vlprobe_jax.data.feature_store import __main__ as feature_store_cli

PIL = pytest.importorskip("PIL")


def _images(root, sizes):
  """COCO-named PNGs (lossless) of random noise; returns {id: array}."""
  from PIL import Image
  os.makedirs(root, exist_ok=True)
  rng = np.random.default_rng(0)
  out = {}
  for image_id, (height, width) in sizes.items():
    out[image_id] = rng.integers(0, 256, (height, width, 3), np.uint8)
    Image.fromarray(out[image_id]).save(os.path.join(root, f"COCO_val2014_{image_id:012d}.png"))
  return out


def test_square_resize_is_the_hf_processors(tmp_path):
  """`load_square_image` gives what BLIP's / SigLIP's PIL image processors resize to."""
  from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil
  arrays = _images(tmp_path, {7: (30, 50)})
  ours = fs.load_square_image(str(tmp_path / "COCO_val2014_000000000007.png"), 16)
  processor = BlipImageProcessorPil(size={"height": 16, "width": 16}, do_normalize=False,
                                    do_rescale=False)
  ref = processor(images=[arrays[7]], return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
  assert ours.shape == (16, 16, 3) and ours.dtype == np.uint8
  np.testing.assert_array_equal(ours, np.round(ref).astype(np.uint8))


def test_pixel_store_builds_resumes_and_refuses_other_options(tmp_path, caplog):
  root = tmp_path / "images" / "val2014"
  arrays = _images(root, {3: (20, 30), 9: (16, 16), 4: (40, 24)})
  (root / "COCO_val2014_000000000006.jpg").write_bytes(b"broken")
  out = str(tmp_path / "store")
  with pytest.raises(Exception, match="cannot decode the image"):
    fs.build_pixel_store(str(tmp_path / "images"), out, image_size=16)
  with caplog.at_level(logging.INFO):
    store = fs.build_pixel_store(str(tmp_path / "images"), out, image_size=16, shard_size=2,
                                 on_error="skip", progress_every_s=0.0)
  assert sorted(store.ids.tolist()) == [3, 4, 9] and store.finished
  assert store.fields == {"pixels": ((16, 16, 3), "uint8")}
  np.testing.assert_array_equal(store.gather("pixels", [9])[0], arrays[9])  # 16 x 16 as is
  assert "cannot decode the image" in caplog.text and "ETA" in caplog.text
  # A rerun keeps everything; other options are refused rather than mixed in.
  again = fs.build_pixel_store(str(tmp_path / "images"), out, image_size=16, on_error="skip")
  assert sorted(again.ids.tolist()) == [3, 4, 9]
  with pytest.raises(ValueError, match="resize crop to 16"):
    fs.build_pixel_store(str(tmp_path / "images"), out, image_size=16, resize="crop",
                         on_error="skip")
  with pytest.raises(ValueError, match="resize must be one of"):
    fs.build_pixel_store(str(tmp_path / "images"), str(tmp_path / "other"), image_size=16,
                         resize="pad")


def test_command_line_pixel_build(tmp_path, capsys):
  arrays = _images(tmp_path / "images", {5: (12, 20)})
  out = str(tmp_path / "store")
  assert feature_store_cli.main(["build", "--kind", "pixels", "--source",
                                 str(tmp_path / "images"), "--out", out, "--image-size",
                                 "8"]) == 0
  assert feature_store_cli.main(["info", out]) == 0
  assert "pixels: [8, 8, 3] uint8" in capsys.readouterr().out
  stored = fs.FeatureStore(out, "pixels").gather("pixels", [5])[0]
  expected = fs.load_square_image(str(tmp_path / "images" / "COCO_val2014_000000000005.png"), 8)
  np.testing.assert_array_equal(stored, expected)
  assert arrays[5].shape == (12, 20, 3)
