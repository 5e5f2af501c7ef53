"""Small fixtures shared by the tests: a tiny random dataset and a tiny run config."""

from __future__ import annotations

import os

import numpy as np

from configs import common
from vlprobe_jax.data.dataset import Dataset, Split
from vlprobe_jax.data.vocab import Vocab

WORDS = ("", "a", "red", "blue", "circle", "square", "above", "below", "UNK")


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
