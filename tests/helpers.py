"""Small fixtures shared by the tests: a tiny random dataset and a tiny run config."""

from __future__ import annotations

import os

import numpy as np

from configs import common
from vlprobe_jax.data.dataset import Dataset, Split
from vlprobe_jax.data.vocab import Vocab

WORDS = ("", "a", "red", "blue", "circle", "square", "above", "below", "UNK")


def forced_devices_env(count: int) -> dict[str, str]:
  """This environment for a subprocess that sees `count` CPU devices, keeping the XLA flags
  the tests run with (tests/conftest.py)."""
  flags = os.environ.get("XLA_FLAGS", "")
  return dict(os.environ, JAX_PLATFORMS="cpu",
              XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={count}".strip())


def tiny_dataset(num_images: int = 16, fc_dim: int = 8, seed: int = 0) -> Dataset:
  """A dataset whose captions depend on the features: 'a <colour> <shape>'."""
  rng = np.random.default_rng(seed)
  vocab = Vocab(WORDS)
  splits = {}
  for offset, name in enumerate(("train", "val", "test")):
    colour = rng.integers(0, 2, num_images)
    shape = rng.integers(0, 2, num_images)
    fc = rng.normal(size=(num_images, fc_dim)).astype(np.float32) * 0.1
    fc[:, 0] += colour
    fc[:, 1] += shape
    captions = [[f"a {('red', 'blue')[c]} {('circle', 'square')[s]}"] * 5
                for c, s in zip(colour, shape)]
    labels = np.stack([np.stack([vocab.encode(r.split(), 6) for r in refs]) for refs in captions])
    splits[name] = Split(name=name, image_ids=np.arange(num_images) + 1000 * offset,
                         fc_feats=fc, labels=labels.astype(np.int32), references=captions)
  return Dataset(vocab=vocab, splits=splits)


def tiny_config(workdir: str, fc_dim: int = 8):
  config, _ = common.base_config(None)
  config.workdir = workdir
  config.captioner.update(fc_dim=fc_dim, embed_size=16, rnn_size=16)
  config.xe.update(images_per_batch=4, epochs=2, total_steps=8, log_every_steps=2,
                   eval_every_steps=4, checkpoint_every_steps=2, lr=1e-2)
  config.eval.update(batch_size=8, max_length=6, meteor=False)
  return config


class Opaque:
  """A Python object that `torch.load(weights_only=True)` refuses to unpickle."""

  def __init__(self, note: str = "not a tensor"):
    self.note = note


ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")


def load_golden(spec, name: str, checkpoint: str):
  """A golden tiny model: (its saved inputs and outputs, config, params loaded from its file)."""
  io = dict(np.load(os.path.join(ASSETS, f"{name}_tiny_io.npz")))
  config, params = spec.load(os.path.join(ASSETS, checkpoint), spec.tiny_config())
  return io, config, params


def with_regions(dataset):
  """Gives every split of `dataset` two empty regions per image (for region scorers)."""
  for split in dataset.splits.values():
    n = len(split)
    split.region_feats = np.zeros((n, 2, 4), np.float32)
    split.region_boxes = np.zeros((n, 2, 4), np.float32)
    split.region_mask = np.ones((n, 2), np.int32)
  return dataset


def tiny_scst_config(workdir: str, **scst_fields):
  """`tiny_config` with an SCST block for the fake scorer: 4 steps of 4 images x 2 samples."""
  config = tiny_config(workdir)
  config.scst = common.scst_block("synthetic", "fake")
  config.scst.update(**{"total_steps": 4, "images_per_batch": 4, "num_samples": 2,
                        "max_length": 6, **scst_fields})
  return config


# ------------------------------------------------------------------------------------------
# Hugging Face parity tests of the scorers.


def perturb(model, scale: float = 0.1, seed: int = 1):
  """Adds noise to every parameter of a torch `model` (in place; returns it): LayerNorms and
  biases start at 1 and 0, which would hide mistakes."""
  import torch  # pylint: disable=import-outside-toplevel

  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for param in model.parameters():
      param.add_(scale * torch.randn(param.shape, generator=generator))
  return model


def save_hf(model, directory: str, legacy_bin: bool, position_ids: dict[str, int]) -> None:
  """Saves a transformers `model` with `save_pretrained` (safetensors), or with `legacy_bin` the
  old way: config.json and a `pytorch_model.bin` that also holds the `position_ids` buffers
  (key: length) old checkpoints carried."""
  import torch  # pylint: disable=import-outside-toplevel

  if not legacy_bin:
    model.save_pretrained(directory)
    return
  model.config.save_pretrained(directory)
  state = dict(model.state_dict())
  for key, length in position_ids.items():
    state[key] = torch.arange(length)[None]
  torch.save(state, os.path.join(directory, "pytorch_model.bin"))


def checkpoint_fixtures(make, variants, default: str = "safetensors"):
  """Module fixtures (hf_checkpoint over every variant, hf_default for `default` only) of the
  checkpoints `make(name, tmp_path_factory)` builds, each built once per test module."""
  import pytest  # pylint: disable=import-outside-toplevel

  built = {}

  def checkpoint(name, tmp_path_factory):
    if name not in built:
      built[name] = make(name, tmp_path_factory)
    return built[name]

  @pytest.fixture(scope="module", params=sorted(variants))
  def hf_checkpoint(request, tmp_path_factory):
    return checkpoint(request.param, tmp_path_factory)

  @pytest.fixture(scope="module")
  def hf_default(tmp_path_factory):
    """The `default` variant only, for tests whose code path does not depend on the variant."""
    return checkpoint(default, tmp_path_factory)

  return hf_checkpoint, hf_default


def pil_levels(processor, preprocess, height: int, width: int, size: int, std) -> np.ndarray:
  """|preprocess - a Hugging Face PIL image processor| in uint8 levels, on two random uint8
  images of height x width resized to size x size (the gap is printed)."""
  pixels = np.random.default_rng(height).integers(0, 256, (2, height, width, 3), np.uint8)
  ref = processor(images=list(pixels), return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
  ours = np.asarray(preprocess(pixels, size))
  assert ours.shape == ref.shape == (2, size, size, 3)
  levels = np.abs(ours - ref) * np.asarray(std) * 255
  print(f"{height}x{width}: max {levels.max():.2f} levels, {(levels > 0.01).mean():.4%} differ")
  return levels


# ------------------------------------------------------------------------------------------
# Golden parity tests of the region scorers.


def flat_params(params) -> dict:
  """{Flax param path (a tuple of names): value}."""
  import jax  # pylint: disable=import-outside-toplevel

  return {tuple(k.key for k in path): v
          for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def torch_key(path, list_name: str) -> str:
  """Flax param path -> the original checkpoint key, `list_name_N` -> `list_name.N` (written
  independently of the scorers' `load`)."""
  parts = []
  for piece in path[:-1]:
    name, _, index = piece.rpartition("_")
    parts.append(f"{name}.{index}" if name == list_name else piece)
  leaf = {"kernel": "weight", "embedding": "weight", "scale": "weight", "bias": "bias"}[path[-1]]
  return ".".join(parts + [leaf])


def assert_params_equal(params, state, key_of) -> set:
  """Every param equals its checkpoint tensor `state[key_of(path)]` (a Dense kernel
  transposed) exactly; returns the checkpoint keys used."""
  used = set()
  for path, value in flat_params(params).items():
    key = key_of(path)
    expected = np.asarray(state[key])
    np.testing.assert_array_equal(value, expected.T if path[-1] == "kernel" else expected,
                                  err_msg=key)
    used.add(key)
  return used


def assert_param_shapes(params, expected: dict, key_of) -> None:
  """The params are exactly the checkpoint keys of `expected` ({key: shape}), each with its
  shape (a Dense kernel transposed)."""
  flat = flat_params(params)
  assert {key_of(p) for p in flat} == set(expected)
  for p, value in flat.items():
    shape = expected[key_of(p)]
    assert value.shape == (shape[::-1] if p[-1] == "kernel" else shape), p


def bfloat16_gap(module, score, config, params, text_ids, text_mask, images):
  """(max |bf16 - float32 score|, the bf16 model's out_dict shapes) for a scorer `module`
  whose jitted `score` gives float32 scores in either dtype."""
  import dataclasses  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  bf16 = dataclasses.replace(config, dtype="bfloat16")
  f32_scores = score(params, config, text_ids, text_mask, images)
  bf16_scores = score(params, bf16, text_ids, text_mask, images)
  assert bf16_scores.dtype == jnp.float32
  gap = float(np.abs(bf16_scores - f32_scores).max())
  _, out = jax.eval_shape(module.Model(bf16).apply, {"params": params}, text_ids, text_mask,
                          images)
  return gap, out


def assert_itm_cross_entropy(loss, metrics, scores, match) -> None:
  """A pretraining loss and accuracy are the binary cross-entropy and accuracy of the match
  probabilities that `scores` (the scorer's 0-100 scale, [N]) give for `match` ([N] 1/0)."""
  p_match = np.asarray(scores, np.float64) / 100
  match = np.asarray(match) == 1
  expected = -np.mean(np.where(match, np.log(p_match), np.log1p(-p_match)))
  np.testing.assert_allclose(loss, expected, rtol=1e-4)
  np.testing.assert_allclose(metrics["accuracy"], np.mean((p_match > 0.5) == match))


def assert_model_type_errors(load, directory, other_type: str, model_type: str):
  """`load` of an empty `directory` (a pathlib.Path), then of one whose config.json is another
  model's, raises errors that say so; returns the second error's ExceptionInfo."""
  import json  # pylint: disable=import-outside-toplevel

  import pytest  # pylint: disable=import-outside-toplevel

  from scorers import checkpoint_files  # pylint: disable=import-outside-toplevel

  with pytest.raises(checkpoint_files.CheckpointFileError, match="config.json"):
    load(str(directory))
  (directory / "config.json").write_text(json.dumps({"model_type": other_type}))
  with pytest.raises(ValueError, match=rf"model_type '{other_type}'.*expected '{model_type}'"
                     ) as error:
    load(str(directory))
  return error


def wrong_width_message(load, directory: str, config, expected_line: str) -> str:
  """`load(directory, config with a text tower of width 64)` raises CheckpointMismatch that
  lists `expected_line` among the mis-shaped keys; returns the message."""
  import dataclasses  # pylint: disable=import-outside-toplevel

  import pytest  # pylint: disable=import-outside-toplevel

  from scorers import common  # pylint: disable=import-outside-toplevel

  wrong = dataclasses.replace(config, text_width=64, text_heads=4)
  with pytest.raises(common.CheckpointMismatch) as error:
    load(directory, wrong)
  message = str(error.value)
  assert expected_line in message
  return message
