"""Tiny scorers for the synthetic world, pretrained on it with each model's own objective.

No VLP weights can be downloaded on a fresh machine, so on the synthetic world every scorer is
its own Flax module at `tiny_config()` sizes (with the real tokenizer's vocabulary; sizes can be
changed per scorer in the config), pretrained here: image-text matching (LXMERT, UNITER,
ROSITA, ViLBERT, through each scorer's `pretrain_loss`) or the symmetric contrastive loss
(CLIP). The result is cached in `<workdir>/scorers/<name>/` with its validation metrics, and
reused by later runs and stages. Training runs through the one loop (`training.train`, with
checkpoints under `<workdir>/scorers/<name>/checkpoints`, so an interrupted pretraining resumes)
and the one input pipeline (`scorer_pairs.PairBatches`).

What makes the tiny ITM models learn in a couple of CPU minutes (600 steps of the old loop left
LXMERT at chance; measured on the default world, see configs/common.py):
  * paired batches (`PairSampler.sample`): every image comes twice, once with a positive and
    once with a negative caption, and a random negative is the positive of another image of
    the batch. Neither the image nor the caption alone then predicts the label, so the only
    signal left is their agreement. This alone took tiny LXMERT from a loss stuck at 0.693 to
    learning within 200 steps;
  * standardised region features (`feature_norm`): each of the 2,048 dimensions (half zeros,
    spread 0.06 to 3.9) is shifted and scaled by its train statistics during training, and the
    affine map is folded into the first layer afterwards (`fold_feature_transform`), so the
    saved scorer reads raw features like any other (0.81 vs 0.63 after 400 steps);
  * no dropout, 2,000 steps of batch 64.
BERT's initialisation (`bert_init`: N(0, 0.02) kernels and embeddings) is available but off:
at these widths it learned slower than Flax's lecun-normal kernels (0.56-0.61 vs 0.81 after
400 steps, three seeds each).

ITM negatives are a mix of captions of random images, of related images and the image's own
captions with one visual word swapped (vlprobe_jax/scorer_pairs.py).

Batch layout handed to `spec.pretrain_loss(params, config, batch, rng)`:
  "text_ids", "text_mask": [N, T] int32 from the scorer's real tokenizer;
  "images": the raw image side of the N captions' images (`Split.scorer_images`);
  "match": [N] int32, 1 when the caption describes its image (ITM only; CLIP pairs caption i
  with image i).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time

import flax.serialization
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vlprobe_jax import checkpoints
from vlprobe_jax import scorer_pairs
from vlprobe_jax import training
from vlprobe_jax.data import pipeline

# Bump when a change here changes what `pretrain` produces, so cached scorers are rebuilt.
PRETRAIN_VERSION = 2


# ------------------------------------------------------------------------------------------
# Settings and model sizes.


def settings(pretrain_config, name: str) -> dict:
  """The flat settings for scorer `name`: the block's fields updated by `per_scorer.<name>`."""
  flat = pretrain_config.to_dict()
  overrides = (flat.pop("per_scorer", None) or {}).get(name) or {}
  unknown = sorted(set(overrides) - set(flat))
  if unknown:
    raise ValueError(f"scorer_pretrain.per_scorer.{name}: unknown fields {unknown}; the fields "
                     f"are {sorted(flat)} (see configs/common.py: scorer_pretrain_block).")
  for key, value in overrides.items():
    flat[key] = dict(flat[key], **value) if isinstance(flat[key], dict) else value
  return flat


def world_config(spec, pretrain_config=None):
  """`spec.tiny_config()` with the real tokenizer's vocabulary size and the configured sizes.

  `pretrain_config` (the `scorer_pretrain` block, optional) may set `max_text_len`,
  `dropout_rate` (>= 0 replaces the config's) and, per scorer, `model` (Config field overrides).
  """
  tiny = spec.tiny_config()
  overrides = {"vocab_size": len(spec.tokenizer(tiny))}
  if pretrain_config is not None:
    s = settings(pretrain_config, spec.name)
    if s.get("max_text_len"):
      overrides["max_text_len"] = s["max_text_len"]
    if s.get("dropout_rate", -1) >= 0 and hasattr(tiny, "dropout_rate"):
      overrides["dropout_rate"] = s["dropout_rate"]
    fields = {f.name for f in dataclasses.fields(tiny)}
    unknown = sorted(set(s.get("model", {})) - fields)
    if unknown:
      raise ValueError(f"scorer_pretrain.per_scorer.{spec.name}.model: {unknown} are not "
                       f"fields of scorers/{spec.name}.py Config; its fields: {sorted(fields)}.")
    overrides.update(s.get("model", {}))
  return dataclasses.replace(tiny, **overrides)


# ------------------------------------------------------------------------------------------
# Initialisation and the region-feature normalisation.


def bert_init(params, rng: jax.Array, std: float = 0.02):
  """Re-initialises a param tree as BERT does: N(0, std) kernels and embeddings, zero biases,
  unit LayerNorm scales; other leaves (CLIP's logit scale, ...) are kept."""
  flat = traverse_util.flatten_dict(params)
  keys = jax.random.split(rng, len(flat))
  out = {}
  for key, (path, leaf) in zip(keys, sorted(flat.items())):
    if path[-1] in ("kernel", "embedding"):
      leaf = std * jax.random.normal(key, leaf.shape, leaf.dtype)
    elif path[-1] == "bias":
      leaf = jnp.zeros_like(leaf)
    elif path[-1] == "scale":
      leaf = jnp.ones_like(leaf)
    out[path] = leaf
  return traverse_util.unflatten_dict(out)


def feature_transform(split, method: str, max_images: int = 1000) -> dict[str, np.ndarray] | None:
  """The affine map the region features go through during training, from train statistics.

  Args:
    split: the train split (its first `max_images` images' real regions give the statistics).
    method: "none", or "standard": per dimension, minus the mean, times 1/std (constant
      dimensions keep scale 1).

  Returns:
    None, or {"mean": [F], "scale": [F]} float32.
  """
  if method == "none":
    return None
  if method != "standard":
    raise ValueError(f"scorer_pretrain.feature_norm={method!r}: expected 'standard' or 'none'.")
  n = min(len(split), max_images)
  feats = np.asarray(split.region_feats[:n], np.float32)
  real = feats[np.asarray(split.region_mask[:n]) > 0].astype(np.float64)
  std = real.std(axis=0)
  scale = np.where(std > 1e-6, 1.0 / np.maximum(std, 1e-6), 1.0)
  return {"mean": real.mean(axis=0).astype(np.float32), "scale": scale.astype(np.float32)}


def apply_feature_transform(feats: jax.Array, transform) -> jax.Array:
  """[..., F] raw features -> [..., F] as the model sees them during training."""
  return (feats - transform["mean"]) * transform["scale"]


def _feature_kernel_path(params, feature_dim: int) -> tuple[str, ...]:
  """The path of the one Dense layer that reads the raw region features."""
  flat = traverse_util.flatten_dict(params)
  found = [path[:-1] for path, leaf in flat.items()
           if path[-1] == "kernel" and leaf.ndim == 2 and leaf.shape[0] == feature_dim]
  if len(found) != 1:
    raise ValueError(f"vlprobe_jax/scorer_pretrain.py: expected exactly one Dense kernel of input width "
                     f"{feature_dim} (the region-feature projection) to fold the feature "
                     f"normalisation into; found {['/'.join(p) for p in found]}. Set "
                     "scorer_pretrain.feature_norm='none' for this scorer.")
  return found[0]


def fold_feature_transform(params, transform):
  """Params that read raw features x as `params` read `apply_feature_transform(x)` (exactly,
  up to float rounding): the map is folded into the first layer's kernel and bias."""
  mean = np.asarray(transform["mean"], np.float64)
  path = _feature_kernel_path(params, mean.shape[0])
  flat = traverse_util.flatten_dict(params)
  kernel = np.asarray(transform["scale"], np.float64)[:, None] * np.asarray(
      flat[path + ("kernel",)], np.float64)
  flat[path + ("kernel",)] = jnp.asarray(kernel, jnp.float32)
  flat[path + ("bias",)] = jnp.asarray(
      np.asarray(flat[path + ("bias",)], np.float64) - mean @ kernel, jnp.float32)
  return traverse_util.unflatten_dict(flat)


# ------------------------------------------------------------------------------------------
# Evaluation.


def _image_inputs(spec, scorer_config, params, split, index: np.ndarray):
  fn = jax.jit(lambda p, images: spec.image_inputs(p, scorer_config, images))
  return jax.device_get(fn(params, split.scorer_images(index)))


def _scores(score_fn, params, encoder, captions, image_inputs, batch_size=250):
  """Scores [N] of `captions` against `image_inputs` (aligned, [N, ...]) by the jitted
  `score_fn(params, ids, mask, image_inputs)`."""
  ids, mask = encoder(captions)
  batch_size = min(batch_size, len(captions))
  out = []
  arrays = {"ids": ids, "mask": mask, "index": np.arange(len(captions))}
  for real, batch in pipeline.host_batches(arrays, batch_size):
    inputs = jax.tree_util.tree_map(lambda x, b=batch: x[b["index"]], image_inputs)
    out.append(np.asarray(score_fn(params, batch["ids"], batch["mask"], inputs))[:real])
  return np.concatenate(out)


def evaluate(spec, scorer_config, params, split, seed: int = 0, max_images: int = 250,
             group: int = 100) -> dict[str, float]:
  """Validation metrics of a trained scorer (deterministic: dropout off, fixed seed).

  ITM: every image (up to `max_images`) gets a positive caption and one negative of each kind
  (the swap negative is the positive with one word swapped). "accuracy" is the balanced
  accuracy of positives vs random negatives (chance 0.5; a score > 50 means "match"),
  "accuracy/<kind>" per kind, "score/<kind>" the mean score, and "swap_ranking" the fraction of
  images whose positive outscores its swapped twin.
  Contrastive (CLIP, through its `embed_texts`): "accuracy" is image->text retrieval among
  `group` captions of `group` images (chance 1 / group), averaged over groups and the 5 choices
  of reference; "swap_ranking" as above on the cosine.
  """
  rng = np.random.default_rng(seed)
  sampler = scorer_pairs.PairSampler(split)
  encoder = scorer_pairs.TextEncoder(spec, scorer_config, [split])
  n = min(len(split), max_images)
  index = np.arange(n)
  inputs = _image_inputs(spec, scorer_config, params, split, index)
  score_fn = jax.jit(lambda p, i, m, x: spec.score(p, scorer_config, i, m, x))
  positives = [split.references[i][int(rng.integers(len(split.references[i])))] for i in index]
  swapped = [sampler.swap_negative(int(i), c, rng)[0] for i, c in zip(index, positives)]
  metrics = {}
  if spec.objective == "itm":
    captions = {"positive": positives, "swap": swapped}
    for kind in ("random", "related"):
      captions[kind] = [sampler.caption(int(i), kind, rng)[0] for i in index]
    scores = {k: _scores(score_fn, params, encoder, c, inputs) for k, c in captions.items()}
    for kind, s in scores.items():
      metrics[f"accuracy/{kind}"] = float(np.mean((s > 50.0) == (kind == "positive")))
      metrics[f"score/{kind}"] = float(np.mean(s))
    metrics["accuracy"] = 0.5 * (metrics["accuracy/positive"] + metrics["accuracy/random"])
    metrics["chance"] = 0.5
  else:
    group = min(group, n)
    ids_sets = []
    for t in range(len(split.references[0])):
      ids_sets.append(encoder([split.references[i][t % len(split.references[i])] for i in index]))
    embed = jax.jit(lambda p, i, m: spec.embed_texts(p, scorer_config, i, m))
    hits = []
    for ids, mask in ids_sets:
      texts = np.asarray(embed(params, ids, mask))
      for start in range(0, n - group + 1, group):
        sims = inputs["image_embeds"][start:start + group] @ texts[start:start + group].T
        hits.append(np.argmax(sims, axis=1) == np.arange(group))
    metrics["accuracy"] = float(np.mean(np.concatenate(hits)))
    metrics["chance"] = 1.0 / group
    scores = {k: _scores(score_fn, params, encoder, c, inputs)
              for k, c in (("positive", positives), ("swap", swapped))}
    metrics["score/positive"] = float(np.mean(scores["positive"]))
    metrics["score/swap"] = float(np.mean(scores["swap"]))
  metrics["swap_ranking"] = float(np.mean(scores["positive"] > scores["swap"]))
  return metrics


# ------------------------------------------------------------------------------------------
# Training and the cache.


def _optimizer(s: dict):
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, s["lr"], min(s["warmup_steps"], max(s["steps"] // 2, 1)),
      max(s["steps"], s["warmup_steps"] + 1), end_value=s["lr"] * s["end_lr_fraction"])
  # BERT's practice: no weight decay on biases and LayerNorm scales.
  decay = lambda params: jax.tree_util.tree_map_with_path(
      lambda path, _: path[-1].key in ("kernel", "embedding"), params)
  return optax.chain(optax.clip_by_global_norm(s["grad_clip"]),
                     optax.adamw(schedule, weight_decay=s["weight_decay"], mask=decay))


def _rngs(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(rng_init, rng_reinit, rng_dropout) of a pretraining run."""
  return tuple(jax.random.split(jax.random.key(seed), 3))


def initial_params(spec, scorer_config, s: dict):
  """The parameters training starts from, given the settings `s` (seed, init_std)."""
  rng_init, rng_reinit, _ = _rngs(s["seed"])
  params = jax.jit(spec.init_params, static_argnums=0)(scorer_config, rng_init)
  return bert_init(params, rng_reinit, s["init_std"]) if s["init_std"] > 0 else params


class PretrainTask:
  """Pretraining of one tiny scorer as a `training.Task` (one device, no eval in the loop)."""
  eval_every_steps = 0
  eval_name = ""
  keep_checkpoints = 2

  def __init__(self, config, spec, dataset, directory: str, key: dict):
    s = self.settings = settings(config.scorer_pretrain, spec.name)
    self.spec, self.dataset, self.stage_dir = spec, dataset, directory
    self.stage = self.label = f"pretrain:{spec.name}"
    self.scorer_config = world_config(spec, config.scorer_pretrain)
    self.total_steps = s["steps"]
    self.log_every_steps = s["log_every_steps"]
    self.checkpoint_every_steps = s["checkpoint_every_steps"]
    self.checkpoint_meta = {"stage": "pretrain", "key": key}
    train_split = dataset["train"]
    self.norm = None
    if spec.objective == "itm" and train_split.region_feats is not None:
      self.norm = feature_transform(train_split, s["feature_norm"])
    self.tx = _optimizer(s)
    self._rng_dropout = _rngs(s["seed"])[2]
    norm, scorer_config = self.norm, self.scorer_config

    def normalise(images):
      if norm is None or "region_feats" not in images:
        return images
      return dict(images, region_feats=apply_feature_transform(images["region_feats"], norm))

    @jax.jit
    def step(state, batch, key):
      batch = dict(batch, images=normalise(batch["images"]))
      (loss, metrics), grads = jax.value_and_grad(
          lambda p: spec.pretrain_loss(p, scorer_config, batch, key), has_aux=True)(state.params)
      return state.apply_gradients(grads=grads), {"train/loss": loss, **{
          f"train/{k}": v for k, v in metrics.items()}}

    self._step = step

  def initial_state(self) -> training.TrainState:
    params = initial_params(self.spec, self.scorer_config, self.settings)
    if self.norm is not None:
      _feature_kernel_path(params, self.norm["mean"].shape[0])  # Fail now, not after training.
    return training.TrainState.create(apply_fn=None, params=params, tx=self.tx)

  def batches(self, start_step: int, stop_step: int):
    s, dataset = self.settings, self.dataset
    train_split = dataset["train"]
    encoder = scorer_pairs.TextEncoder(self.spec, self.scorer_config,
                                       [train_split, dataset["val"]])
    source = scorer_pairs.PairBatches(
        train_split, dataset.vocab.words, encoder, batch_size=min(s["batch_size"],
                                                                 len(train_split)),
        seed=s["seed"], contrastive=self.spec.objective != "itm", negatives=s["negatives"],
        paired=s["paired"])
    return pipeline.BatchIterator(source, start_step=start_step, stop_step=stop_step)

  def place(self, state):
    return state

  def fetch(self, placed):
    return jax.device_get(placed)

  def train_step(self, state, batch, step: int):
    return self._step(state, batch, jax.random.fold_in(self._rng_dropout, step))

  def progress_values(self, scalars: dict, done: int) -> dict:
    accuracy = scalars.get("train/accuracy", scalars.get("train/accuracy/image_to_text"))
    return {"loss": scalars["train/loss"], "batch acc": accuracy}

  def evaluate(self, state, done: int) -> training.Evaluation:
    raise NotImplementedError("scorer pretraining evaluates after the loop (`pretrain`).")


def pretrain(config, spec, dataset, directory: str, key: dict | None = None):
  """Trains the tiny `spec` on `dataset` (resuming from `directory`'s checkpoints); returns
  (scorer config, params with the feature normalisation folded in, summary)."""
  task = PretrainTask(config, spec, dataset, directory, key or _cache_key(config, spec))
  s = task.settings
  start, cpu_start = time.time(), time.process_time()
  params = training.train(task).params
  seconds, cpu_seconds = time.time() - start, time.process_time() - cpu_start
  if task.norm is not None:
    params = fold_feature_transform(params, task.norm)
  metrics = evaluate(spec, task.scorer_config, params, dataset["val"], seed=s["seed"])
  summary = {"scorer": spec.name, "objective": spec.objective,
             "val_accuracy": metrics["accuracy"], "chance": metrics["chance"], "val": metrics,
             "steps": s["steps"], "seconds": seconds, "cpu_seconds": cpu_seconds,
             "steps_per_second": s["steps"] / max(seconds, 1e-9),
             "config": dataclasses.asdict(task.scorer_config)}
  what = "matching accuracy" if spec.objective == "itm" else "image->text retrieval accuracy"
  details = ", ".join(f"{k} {v:.3f}" for k, v in sorted(metrics.items())
                      if k not in ("accuracy", "chance"))
  print(f"[pretrain:{spec.name}] val {what} {metrics['accuracy']:.3f} (chance "
        f"{metrics['chance']:.3f}); {details}; {s['steps']} steps in {seconds:.0f} s "
        f"({cpu_seconds:.0f} CPU s)", flush=True)
  return task.scorer_config, params, summary


def _cache_key(config, spec) -> dict:
  """What the cached scorer depends on (how often training logs or checkpoints does not)."""
  s = settings(config.scorer_pretrain, spec.name)
  s.pop("log_every_steps")
  s.pop("checkpoint_every_steps")
  wanted = {"world": config.data.to_dict(), "version": PRETRAIN_VERSION, "pretrain": s}
  return json.loads(json.dumps(wanted, default=str, sort_keys=True))


def pretrained_for_world(config, spec, dataset, directory: str):
  """The cached tiny scorer in `directory`, pretraining it first when missing or stale.

  The cache (`params.msgpack` + `pretrain.json`) is keyed on the world config, this scorer's
  pretraining settings and `PRETRAIN_VERSION`. Returns (scorer config, params, a description
  of the source).
  """
  os.makedirs(directory, exist_ok=True)
  params_path = os.path.join(directory, "params.msgpack")
  summary_path = os.path.join(directory, "pretrain.json")
  wanted = _cache_key(config, spec)
  if os.path.exists(params_path) and os.path.exists(summary_path):
    summary = checkpoints.read_json(summary_path)
    if summary.get("key") == wanted:
      fields = {k: tuple(v) if isinstance(v, list) else v for k, v in summary["config"].items()}
      scorer_config = type(spec.tiny_config())(**fields)
      template = jax.eval_shape(lambda: spec.init_params(scorer_config, jax.random.key(0)))
      with open(params_path, "rb") as f:
        params = flax.serialization.from_bytes(template, f.read())
      print(f"[scorers] {spec.name}: using the pretrained tiny scorer in {directory} "
            f"(val accuracy {summary['val_accuracy']:.3f})", flush=True)
      return scorer_config, params, directory
  try:
    scorer_config, params, summary = pretrain(config, spec, dataset, directory, wanted)
  except checkpoints.IncompatibleCheckpoint:  # Checkpoints of other settings: a stale cache.
    print(f"[scorers] {spec.name}: the pretraining settings changed; starting it over", flush=True)
    shutil.rmtree(os.path.join(directory, "checkpoints"))
    scorer_config, params, summary = pretrain(config, spec, dataset, directory, wanted)
  summary["key"] = wanted
  if jax.process_index() == 0:
    tmp = f"{params_path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
      f.write(flax.serialization.to_bytes(jax.device_get(params)))
    os.replace(tmp, params_path)
    checkpoints.write_json_atomic(summary_path, summary)
  return scorer_config, params, directory
