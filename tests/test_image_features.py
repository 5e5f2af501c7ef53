"""Tests of the pixel descriptors: hand-checkable histograms, crops, and probes on the world."""

import numpy as np
import pytest

from vlprobe_jax.data import image_features as F
from vlprobe_jax.data import synthetic

COLOUR_DIM = F.COLOUR_GRID ** 2 * F.COLOUR_LEVELS ** 3


def _colour_cells(features):
  return features[..., :COLOUR_DIM].reshape(
      features.shape[:-1] + (F.COLOUR_GRID ** 2, F.COLOUR_LEVELS ** 3))


def _edge_cells(features, layout):
  """The [.., cells, bins + 1] block of edge layout number `layout` in EDGE_LAYOUTS."""
  start = COLOUR_DIM + sum(g * g * (b + 1) for g, b in F.EDGE_LAYOUTS[:layout])
  grid, bins = F.EDGE_LAYOUTS[layout]
  block = features[..., start:start + grid * grid * (bins + 1)]
  return block.reshape(features.shape[:-1] + (grid * grid, bins + 1))


def _bin(r, g, b):
  return r + F.COLOUR_LEVELS * g + F.COLOUR_LEVELS ** 2 * b


def test_shapes_dtypes_and_bad_inputs():
  pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 48, 3), dtype=np.uint8)
  fc = F.fc_features(pixels)
  assert fc.shape == (3, F.FEATURE_DIM) and fc.dtype == np.float32
  boxes = np.tile(np.array([[0, 0, 48, 32], [5.5, 3, 20, 30]], np.float32), (3, 1, 1))
  regions = F.region_features(pixels, boxes)
  assert regions.shape == (3, 2, F.FEATURE_DIM) and regions.dtype == np.float32
  with pytest.raises(ValueError, match="multiples of 8"):
    F.fc_features(pixels[:, :30])
  with pytest.raises(ValueError, match=r"boxes_pixels \[N, R, 4\]"):
    F.region_features(pixels, boxes[:2])


def test_colour_of_uniform_images():
  # Pure red -> level (3, 0, 0); 85 grey -> level (1, 1, 1): all mass in one bin of each cell.
  images = np.zeros((2, 16, 16, 3), np.uint8)
  images[0, ..., 0] = 255
  images[1] = 85
  cells = _colour_cells(F.fc_features(images))
  expected = np.zeros_like(cells)
  expected[0, :, _bin(3, 0, 0)] = F.COLOUR_SCALE
  expected[1, :, _bin(1, 1, 1)] = F.COLOUR_SCALE
  np.testing.assert_allclose(cells, expected, atol=1e-5)


def test_colour_soft_assignment_between_levels():
  # 2 x 2 blocks of 127 and 128 average to 127.5 = level 1.5 on every channel: the weight is
  # split 1/2 - 1/2 per channel, so 1/8 in each of the 8 bins with levels 1 or 2.
  images = np.full((1, 16, 16, 3), 127, np.uint8)
  images[:, ::2, ::2] = images[:, 1::2, 1::2] = 128
  cells = _colour_cells(F.fc_features(images))[0]
  expected = np.zeros_like(cells)
  for r in (1, 2):
    for g in (1, 2):
      for b in (1, 2):
        expected[:, _bin(r, g, b)] = F.COLOUR_SCALE / 8
  np.testing.assert_allclose(cells, expected, atol=1e-5)


def test_colour_layout_keeps_position():
  images = np.zeros((1, 32, 32, 3), np.uint8)
  images[:, :, :16, 0] = 255  # left half red
  images[:, :, 16:, 2] = 255  # right half blue
  cells = _colour_cells(F.fc_features(images))[0].reshape(4, 4, -1)
  np.testing.assert_allclose(cells[:, :2, _bin(3, 0, 0)], F.COLOUR_SCALE, atol=1e-5)
  np.testing.assert_allclose(cells[:, 2:, _bin(0, 0, 3)], F.COLOUR_SCALE, atol=1e-5)
  assert cells[:, :2, _bin(0, 0, 3)].max() == 0 and cells[:, 2:, _bin(3, 0, 0)].max() == 0


def test_vertical_step_edge():
  # Black | white at column 32 of 64: np.gradient gives 0.5 per channel at columns 31 and 32,
  # so strength sqrt(3 * 0.25); direction 0 (bin 0); a straight edge has no corner.
  images = np.zeros((1, 64, 64, 3), np.uint8)
  images[:, :, 32:] = 255
  features = F.fc_features(images)
  strength = np.sqrt(0.75)
  for layout, (grid, bins) in enumerate(F.EDGE_LAYOUTS):
    cells = _edge_cells(features, layout)[0].reshape(grid, grid, bins + 1)
    cell_px = (64 // grid) ** 2
    expected = np.zeros_like(cells)
    # Columns 31 and 32 fall in the two cell columns either side of the middle.
    expected[:, grid // 2 - 1, 0] = expected[:, grid // 2, 0] = (
        (64 // grid) * strength / cell_px * F.EDGE_SCALE)
    np.testing.assert_allclose(cells, expected, rtol=1e-5, atol=1e-6)


def test_diagonal_ramp_direction_interpolates_between_bins():
  # I = 4 (x + y): gradient (g, g) everywhere (g = 4/255), edge angle 45 degrees, i.e. a
  # quarter of 180: position bins / 4, split linearly between its two bins. Strength is
  # sqrt(largest eigenvalue of 3 [[g2, g2], [g2, g2]]) = g sqrt(6); the smaller one is 0.
  y, x = np.mgrid[:32, :32]
  images = np.repeat((4 * (x + y)).astype(np.uint8)[None, :, :, None], 3, axis=-1)
  features = F.fc_features(images)
  strength = 4 / 255 * np.sqrt(6)
  for layout, (grid, bins) in enumerate(F.EDGE_LAYOUTS):
    cells = _edge_cells(features, layout)[0]
    position = bins / 4
    low, frac = int(position), position - int(position)
    expected = np.zeros_like(cells)
    expected[:, low] = (1 - frac) * strength * F.EDGE_SCALE
    expected[:, low + 1] = frac * strength * F.EDGE_SCALE
    # atol (0.1% of the edge values): at the border np.gradient is one-sided, so gx and gy
    # differ by float32 rounding and the corner channel of border cells is ~1e-4, not 0.
    np.testing.assert_allclose(cells, expected, rtol=1e-4, atol=1e-3)


def test_corner_channel_fires_at_corners_only():
  images = np.zeros((1, 32, 32, 3), np.uint8)
  images[:, 8:24, 8:24] = 255
  strength, _, corner = F.edge_maps(images)
  assert corner[0, 8, 8] > 0.2  # a corner of the square
  assert strength[0, 8, 16] > 0.5 and corner[0, 8, 16] < 1e-3  # middle of the top edge
  assert corner[0, 16, 16] == 0  # flat inside


def test_crop_and_resize_identity_halving_and_slices():
  rng = np.random.default_rng(1)
  pixels = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
  whole = np.tile(np.array([[[0, 0, 16, 16]]], np.float32), (2, 1, 1))
  np.testing.assert_allclose(F.crop_and_resize(pixels, whole, 16)[:, 0], pixels, atol=1e-3)
  pooled = pixels.astype(np.float32).reshape(2, 8, 2, 8, 2, 3).mean((2, 4))
  np.testing.assert_allclose(F.crop_and_resize(pixels, whole, 8)[:, 0], pooled, atol=1e-3)
  box = np.array([[[3, 5, 11, 13]], [[3, 5, 11, 13]]], np.float32)  # x1, y1, x2, y2
  np.testing.assert_allclose(F.crop_and_resize(pixels, box, 8)[:, 0], pixels[:, 5:13, 3:11],
                             atol=1e-3)


def test_region_of_whole_image_is_its_resized_descriptor():
  # An image made of 2 x 2 blocks shrinks exactly to its block colours.
  small = np.random.default_rng(2).integers(0, 256, (2, F.REGION_CROP_SIZE,
                                                     F.REGION_CROP_SIZE, 3), dtype=np.uint8)
  big = np.repeat(np.repeat(small, 2, axis=1), 2, axis=2)
  side = 2 * F.REGION_CROP_SIZE
  boxes = np.tile(np.array([[[0, 0, side, side]]], np.float32), (2, 1, 1))
  np.testing.assert_allclose(F.region_features(big, boxes)[:, 0], F.fc_features(small),
                             rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- probes


def _ridge_accuracy(x_train, y_train, x_test, y_test, classes, ridge=100.0):
  """Least-squares one-vs-rest classifier (dual ridge form); returns held-out accuracy."""
  mean, std = x_train.mean(0), x_train.std(0) + 1e-3
  a, b = (x_train - mean) / std, (x_test - mean) / std
  targets = np.eye(classes)[y_train] - 1.0 / classes
  dual = np.linalg.solve(a @ a.T + ridge * np.eye(len(a)), targets)
  return float(((b @ (a.T @ dual)).argmax(1) == y_test).mean())


def _world(min_objects, max_objects, seed):
  config = synthetic.default_world_config()
  config.update(num_train=400, num_val=1, num_test=1, seed=seed, min_objects=min_objects,
                max_objects=max_objects, count_threshold=0)
  return synthetic.make_world(config)["train"]


def test_fc_features_carry_colour_shape_size_position():
  # One shape per image; train on 300 images, test on 100. Chance is at most the majority
  # class rate (about 1/6 for colour: each background hides some colours; 1/5 shape; 1/2 size
  # and side). Required: at least chance + 0.25 (colour, side) or + 0.15 (shape, size), far
  # outside what 100 test images give by luck (binomial sd about 0.05).
  split = _world(1, 1, seed=11)
  scenes, x = split.scenes, split.fc_feats
  targets = {
      "colour": (scenes.colour[:, 0], 8, 0.25), "shape": (scenes.shape[:, 0], 5, 0.15),
      "size": (scenes.size[:, 0], 2, 0.15),
      "left": ((scenes.center[:, 0, 0] < 32).astype(np.int64), 2, 0.25)}
  for name, (y, classes, margin) in targets.items():
    chance = np.bincount(y[:300], minlength=classes).max() / 300
    accuracy = _ridge_accuracy(x[:300], y[:300], x[300:], y[300:], classes)
    print(f"fc probe {name}: accuracy {accuracy:.2f}, majority {chance:.2f}")
    assert accuracy >= chance + margin, (name, accuracy, chance)


def test_region_features_carry_their_objects_colour_and_shape():
  # 1-3 shapes per image; each object's own box region predicts its colour and shape.
  split = _world(1, 3, seed=12)
  scenes = split.scenes
  slots = np.arange(scenes.shape.shape[1])[None] < scenes.num_objects[:, None]
  regions = split.region_feats[:, :slots.shape[1]].astype(np.float32)
  train = np.arange(len(split))[:, None].repeat(slots.shape[1], 1) < 300
  for name, labels, classes in (("colour", scenes.colour, 8), ("shape", scenes.shape, 5)):
    x_train, y_train = regions[slots & train], labels[slots & train]
    x_test, y_test = regions[slots & ~train], labels[slots & ~train]
    chance = np.bincount(y_train, minlength=classes).max() / len(y_train)
    accuracy = _ridge_accuracy(x_train, y_train, x_test, y_test, classes)
    print(f"region probe {name}: accuracy {accuracy:.2f}, majority {chance:.2f}")
    assert accuracy >= 0.8 and accuracy >= chance + 0.5, (name, accuracy, chance)
