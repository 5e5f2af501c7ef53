"""A scorer ready to use in a run: contract, config, params, tokenizer tables, cached image inputs.

`LoadedScorer` gives the two ways a run scores captions:
  * `reward_fn(scorer_params, word_ids, image_inputs)`: captioner word ids re-tokenized on the
    device (`scorers.tokens.retokenize`) and scored; pure and jittable, used inside the SCST step;
  * `score_texts(captions, split)`: strings tokenized by the scorer's real Hugging Face tokenizer
    on the host, then scored in jitted batches; used for evaluation and by the analysis probes,
    whose captions may hold words outside the captioner's vocabulary.
Both give the same ids for captions of the captioner's vocabulary (tests/test_tokens.py).

The captioner's unknown word is the literal word "UNK" for every scorer (BERT tokenizers give
`un ##k`, CLIP `unk</w>`), as in the original pipeline, where `decode_sequence` turns ids into
strings before the reward model tokenizes them; `unrepresentable_words` lists the captioner
words a scorer cannot tell apart at start.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import scorers
from scorers import layers
from scorers import tokens
from vlprobe_jax.data import pipeline
from vlprobe_jax.data.dataset import Split


# Narrower text widths the reward may score at; each is one more compiled copy of the scorer.
_BUCKET_WIDTHS = (16, 24, 32, 40, 48)
# Length groups hold at least this many captions: smaller groups leave an accelerator idle.
MIN_GROUP_CAPTIONS = 64


def text_width_buckets(full_width: int) -> tuple[int, ...]:
  """The widths the compiled reward chooses from: the narrower ones worth a branch, then full.

  A narrower width is kept only when it saves at least 4 positions (a branch that saves less
  costs more compile time than it gives back): CLIP's 77 -> (16, 24, 32, 40, 48, 77), a
  BERT-style 20 -> (16, 20), the synthetic world's 18 -> (18,).
  """
  return tuple(w for w in _BUCKET_WIDTHS if w <= full_width - 4) + (full_width,)


def bucket_index(buckets: tuple[int, ...], longest) -> jax.Array:
  """Index of the narrowest of `buckets` (ascending) that holds `longest` tokens; jittable."""
  return jnp.searchsorted(jnp.asarray(buckets, jnp.int32), jnp.asarray(longest, jnp.int32))


def group_count(num_captions: int, max_groups: int) -> int:
  """How many length groups the reward scores `num_captions` in (static): up to `max_groups`,
  each of at least MIN_GROUP_CAPTIONS captions."""
  return max(1, min(max_groups, num_captions // MIN_GROUP_CAPTIONS))


def group_widths(lengths: np.ndarray, buckets: tuple[int, ...], groups: int) -> list[int]:
  """Host mirror of the grouped reward: the width each length group is scored at.

  Args:
    lengths: [N] tokens per caption (specials included).
  """
  ordered = np.sort(np.asarray(lengths))
  size = -(-len(ordered) // groups)
  ordered = np.concatenate([np.full(size * groups - len(ordered), ordered[0]), ordered])
  longest = ordered.reshape(groups, size).max(axis=1)
  return [buckets[int(i)] for i in np.searchsorted(np.asarray(buckets), longest)]


def score_by_length(branches, buckets: tuple[int, ...], groups: int, scorer_params,
                    ids: jax.Array, mask: jax.Array, image_inputs) -> jax.Array:
  """Scores ids, mask [N, W] in `groups` length groups, each at its own bucket width.

  The captions are sorted by length (stable), split into `groups` equal groups (the shortest
  caption repeated in front to fill the first when N does not divide), and `lax.map` scores
  group after group, each through `lax.switch` at the narrowest bucket that holds its longest
  caption; the scores go back to the captions' order. All shapes are static: one compiled copy
  of the scorer per bucket, as with a single group. Only padding is cut, so the scores equal
  the full-width ones (tests/test_scoring.py).

  Returns:
    [N] scores.
  """
  n = ids.shape[0]
  if groups == 1:
    bucket = bucket_index(buckets, jnp.max(jnp.sum(mask, axis=-1)))
    return jax.lax.switch(bucket, branches, scorer_params, ids, mask, image_inputs)
  order = jnp.argsort(jnp.sum(mask, axis=-1), stable=True)
  size = -(-n // groups)
  pad = size * groups - n
  padded = jnp.concatenate([jnp.broadcast_to(order[:1], (pad,)), order]) if pad else order

  def grouped(x):
    return x[padded].reshape((groups, size) + x.shape[1:])

  group_ids, group_mask = grouped(ids), grouped(mask)
  group_images = jax.tree_util.tree_map(grouped, image_inputs)
  group_bucket = bucket_index(buckets, jnp.max(jnp.sum(group_mask, axis=-1), axis=-1))

  def one_group(args):
    bucket, g_ids, g_mask, g_images = args
    return jax.lax.switch(bucket, branches, scorer_params, g_ids, g_mask, g_images)

  scores = jax.lax.map(one_group, (group_bucket, group_ids, group_mask, group_images))
  scores = scores.reshape(-1)[pad:]
  return jnp.zeros((n,), scores.dtype).at[order].set(scores, unique_indices=True)


@dataclasses.dataclass
class LoadedScorer:
  """One scorer of a run: its contract (`scorers.registry.Scorer`), config and params."""
  name: str
  spec: scorers.Scorer
  config: Any
  params: Any
  words: tuple[str, ...]  # the captioner vocabulary the table was built for
  max_caption_length: int
  source: str = ""  # where the params came from, for the logs and the report
  # Kernels and numerics (scorers/layers.py `options`): "auto" attention = cuDNN's fused
  # kernel on a GPU where it can run, else XLA's; gelu "exact" (the originals') or "tanh".
  attention: str = "auto"
  gelu: str = "exact"
  # The reward scores captions in up to this many length groups, each at its own width
  # (`score_by_length`); 1 scores the whole batch at its longest caption's width.
  length_groups: int = 8

  def __post_init__(self):
    self.tokenizer = self.spec.tokenizer(self.config)
    self.fmt = self.spec.text_format(self.config)
    self.table = tokens.build_table(self.words, self.tokenizer, self.fmt)
    self.width = tokens.max_width(self.table, self.max_caption_length)
    self.width_buckets = text_width_buckets(self.width)
    self._check_token_ids()
    self._image_cache: dict[str, dict[str, np.ndarray]] = {}

  def _check_token_ids(self) -> None:
    """The tokenizer's ids must fit the model's embedding table (JAX embeds others as NaN)."""
    vocab_size = getattr(self.config, "vocab_size", None)
    if vocab_size is None:
      return
    fmt = self.fmt
    ids = [int(np.max(self.table.pieces, initial=0)), int(np.max(self.table.prompt_ids, initial=0)),
           fmt.bos_id, fmt.eos_id, fmt.pad_id]
    if max(ids) >= vocab_size:
      raise ValueError(
          f"scorer {self.name} ({self.source or 'given params'}): its tokenizer gives token ids up "
          f"to {max(ids)}, but the model's vocab_size is {vocab_size}; expected ids below it. "
          "The checkpoint and the tokenizer do not match: use the vocabulary the model was "
          f"trained with (scorers/{self.name}.py `tokenizer`, Config.vocab_path).")

  # -- inside the compiled step --------------------------------------------------------------
  def options(self):
    """The scorer's kernel and GELU choices; entered inside every traced scoring function."""
    return layers.options(attention=self.attention, gelu=self.gelu)

  @functools.cached_property
  def reward_fn(self):
    """(scorer_params, word_ids [N, T], image_inputs) -> scores [N]; jittable.

    The captions are re-tokenized at the worst-case width, then scored in up to
    `length_groups` groups of similar length, each at the narrowest of `width_buckets` that
    holds its longest caption (`score_by_length`): only padding is cut, as when a tokenizer pads
    to the longest caption of a batch, so the scores are the same.
    """
    score, config, table = self.spec.score, self.config, self.table
    width, buckets, max_groups = self.width, self.width_buckets, self.length_groups

    def score_at(bucket):
      return lambda p, ids, mask, images: score(p, config, ids[:, :bucket], mask[:, :bucket],
                                                images)

    branches = [score_at(bucket) for bucket in buckets]

    def reward_fn(scorer_params, word_ids, image_inputs):
      with self.options():
        ids, mask = tokens.retokenize(table, word_ids, width)
        if len(branches) == 1:
          return branches[0](scorer_params, ids, mask, image_inputs)
        groups = group_count(ids.shape[0], max_groups)
        return score_by_length(branches, buckets, groups, scorer_params, ids, mask,
                               image_inputs)

    return reward_fn

  @functools.cached_property
  def image_inputs_fn(self):
    """(scorer_params, raw scorer images) -> image inputs; jittable (for in-step use)."""
    image_inputs, config = self.spec.image_inputs, self.config

    def image_inputs_fn(scorer_params, images):
      with self.options():
        return image_inputs(scorer_params, config, images)

    return image_inputs_fn

  def unrepresentable_words(self) -> list[str]:
    return tokens.unrepresentable_words(self.words, self.tokenizer, self.fmt)

  # -- image side, once per image ------------------------------------------------------------
  def image_inputs(self, split: Split, batch_size: int = 256) -> dict[str, np.ndarray]:
    """The scorer's caption-independent inputs for every image of `split` (host arrays, cached)."""
    if split.name not in self._image_cache:
      fn = jax.jit(self.image_inputs_fn)
      outputs = []
      # Batch by index so lazily read stores (COCO regions) are never loaded whole.
      for real, batch in pipeline.host_batches({"index": np.arange(len(split))}, batch_size):
        out = jax.device_get(fn(self.params, split.scorer_images(batch["index"])))
        outputs.append(jax.tree_util.tree_map(lambda x, r=real: np.asarray(x)[:r], out))
      self._image_cache[split.name] = jax.tree_util.tree_map(
          lambda *xs: np.concatenate(xs, axis=0), *outputs)
    return self._image_cache[split.name]

  # -- host-side scoring of arbitrary strings -------------------------------------------------
  @functools.cached_property
  def _score_fn(self):
    def score(p, ids, mask, images):
      with self.options():
        return self.spec.score(p, self.config, ids, mask, images)

    return jax.jit(score)

  def score_texts(self, captions: list[str], split: Split, image_index: np.ndarray | None = None,
                  batch_size: int = 256) -> np.ndarray:
    """Scores of `captions` [N] with the images of `split` at `image_index` (default 0..N-1)."""
    if image_index is None:
      image_index = np.arange(len(captions))
    image_index = np.asarray(image_index)
    if len(image_index) != len(captions):
      raise ValueError(f"score_texts: {len(captions)} captions but {len(image_index)} image "
                       "indices; give one image per caption.")
    images = self.image_inputs(split)
    encoded = self.tokenizer([self.fmt.text(c) for c in captions], truncation=True,
                             max_length=self.fmt.max_length, padding="max_length",
                             return_tensors="np")
    ids = np.asarray(encoded["input_ids"], np.int32)
    mask = np.asarray(encoded["attention_mask"], np.int32)
    ids = np.where(mask > 0, ids, self.fmt.pad_id)
    # Only as wide as the longest caption: fewer padded positions, same scores.
    width = max(int(mask.sum(axis=1).max()), 2) if len(captions) else 2
    ids, mask = ids[:, :width], mask[:, :width]
    out = []
    arrays = {"ids": ids, "mask": mask, "index": image_index}
    for real, batch in pipeline.host_batches(arrays, batch_size):
      batch_images = jax.tree_util.tree_map(lambda x, b=batch: x[b["index"]], images)
      scores = self._score_fn(self.params, batch["ids"], batch["mask"], batch_images)
      out.append(np.asarray(scores)[:real])
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def scorer_names(config) -> list[str]:
  """Every scorer a run uses: the SCST reward scorer first, then `config.scorers`."""
  names = []
  if config.get("scst") is not None and config.scst.get("scorer"):
    names.append(config.scst.scorer)
  names += list(config.get("scorers", ()))
  return list(dict.fromkeys(names))


def load_scorers(config, names: list[str], dataset, workdir: str) -> dict[str, LoadedScorer]:
  """Loads (real checkpoints) or pretrains (synthetic world) every scorer in `names`.

  A real checkpoint is used when `config.scorer_checkpoints.<name>` is set; otherwise, on the
  synthetic world, the tiny scorer pretrained on it and cached in `<workdir>/scorers/<name>`.
  Captioner words the scorer's tokenizer cannot represent are reported once, here.
  """
  loaded = {}
  paths = config.get("scorer_checkpoints") or {}
  train = dataset["train"]
  for name in names:
    spec = scorers.get(name)
    path = paths.get(name, "")
    if path:
      scorer_config, params = spec.load(path, trust_pickle=config.get("trust_pickle", False))
      source = path
    elif train.pixels is not None or train.region_feats is not None:
      from vlprobe_jax import scorer_pretrain  # pylint: disable=g-import-not-at-top
      scorer_config, params, source = scorer_pretrain.pretrained_for_world(
          config, spec, dataset, os.path.join(workdir, "scorers", name))
    else:
      raise ValueError(
          f"No checkpoint for scorer {name!r}: set --config.scorer_checkpoints.{name}=/path "
          "(see docs/coco.md for the formats each scorer reads).")
    if hasattr(scorer_config, "dtype") and config.get("scorer_dtype"):
      scorer_config = dataclasses.replace(scorer_config, dtype=config.scorer_dtype)
    longest = max(config.eval.max_length, config.scst.max_length if "scst" in config else 0)
    scorer = LoadedScorer(name, spec, scorer_config, jax.tree_util.tree_map(jnp.asarray, params),
                          dataset.vocab.words, longest, source,
                          gelu=config.get("scorer_gelu") or "exact")
    missing = scorer.unrepresentable_words()
    if missing:
      shown = ", ".join(missing[:30]) + (" ..." if len(missing) > 30 else "")
      print(f"[scorers] {name}: {len(missing)} captioner word(s) map to the tokenizer's UNK or "
            f"to nothing, so {name} cannot tell them apart: {shown}", flush=True)
    loaded[name] = scorer
  return loaded
