"""Tiny scorers for the synthetic world, pretrained on it with each model's own objective.

No VLP weights can be downloaded on a fresh machine, so on the synthetic world every scorer is
its own Flax module at `tiny_config()` sizes (with the real tokenizer's vocabulary, widths from
the config), pretrained here: image-text matching (LXMERT, UNITER, ROSITA, ViLBERT, through
each module's `pretrain_loss`) or the symmetric contrastive loss (CLIP). The result is cached
in `<workdir>/scorers/<name>/` with its validation metrics, and reused by later runs and stages.

What makes these tiny post-LN transformers learn in a couple of CPU minutes (from chance after
600 steps with the defaults of Flax and the raw features):
  * BERT's initialisation (`bert_init`): normal(0.02) kernels and embeddings, zero biases, unit
    LayerNorm scales, instead of Flax's lecun-normal kernels and normal(1) embeddings;
  * standardised region features (`feature_norm`): each of the 2,048 dimensions (half zeros,
    spread 0.06 to 3.9) is shifted and scaled by its train statistics during training, and the
    affine map is folded into the first layer afterwards (`fold_feature_norm`), so the saved
    scorer reads raw features like any other;
  * no dropout, and a few hundred steps at a larger learning rate.

Negatives for ITM (`PairSampler`): captions of random other images, captions of related images
(same background, or an object of the same colour and shape), and the image's own caption with
one colour, shape or size word swapped for another of the same kind. The last two make the score
sensitive to the visual words, which is what the paper's analysis probes.

Batch layout handed to `module.pretrain_loss(params, config, batch, rng)`:
  "text_ids", "text_mask": [N, T] int32 from the scorer's real tokenizer;
  "images": the raw image side of the N captions' images (`Split.scorer_images`);
  "match": [N] int32, 1 when the caption describes its image (ITM only; CLIP pairs caption i
  with image i).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import flax.serialization
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vlprobe_jax import checkpoints
from vlprobe_jax import training
from vlprobe_jax.data import synthetic

# Bump when a change here changes what `pretrain` produces, so cached scorers are rebuilt.
PRETRAIN_VERSION = 2
KINDS = ("positive", "random", "related", "swap")


# ------------------------------------------------------------------------------------------
# Settings and model sizes.


def settings(pretrain_config, name: str) -> dict:
  """The flat settings for scorer `name`: the block's fields updated by `per_scorer.<name>`."""
  flat = {k: v for k, v in pretrain_config.to_dict().items() if k != "per_scorer"}
  overrides = dict((pretrain_config.get("per_scorer") or {}).get(name, {}) or {})
  unknown = sorted(set(overrides) - set(flat))
  if unknown:
    raise ValueError(f"scorer_pretrain.per_scorer.{name}: unknown fields {unknown}; the fields "
                     f"are {sorted(flat)} (see configs/common.py: scorer_pretrain_block).")
  for key, value in overrides.items():
    flat[key] = dict(flat[key], **value) if isinstance(flat[key], dict) else value
  return flat


def world_config(module, pretrain_config=None):
  """`module.tiny_config()` with the real tokenizer's vocabulary size and the configured sizes.

  `pretrain_config` (the `scorer_pretrain` block, optional) may set `max_text_len`,
  `dropout_rate` (>= 0 replaces the config's) and, per scorer, `model` (Config field overrides).
  """
  tiny = module.tiny_config()
  overrides = {"vocab_size": len(module.tokenizer(tiny))}
  if pretrain_config is not None:
    s = settings(pretrain_config, module.NAME)
    if s.get("max_text_len"):
      overrides["max_text_len"] = s["max_text_len"]
    if s.get("dropout_rate", -1) >= 0 and hasattr(tiny, "dropout_rate"):
      overrides["dropout_rate"] = s["dropout_rate"]
    fields = {f.name for f in dataclasses.fields(tiny)}
    unknown = sorted(set(s.get("model", {})) - fields)
    if unknown:
      raise ValueError(f"scorer_pretrain.per_scorer.{module.NAME}.model: {unknown} are not "
                       f"fields of scorers/{module.NAME}.py Config; its fields: {sorted(fields)}.")
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
    method: "none"; "standard" (per dimension: minus the mean, times 1/std; constant dimensions
      keep scale 1); or "whiten:K" (PCA whitening onto the top K components, written into the
      first K of the F dimensions, the rest zero).

  Returns:
    None, or {"mean": [F], "scale": [F]} or {"mean": [F], "proj": [F, K]}.
  """
  if method == "none":
    return None
  n = min(len(split), max_images)
  feats = np.asarray(split.region_feats[:n], np.float32)
  real = feats[np.asarray(split.region_mask[:n]) > 0].astype(np.float64)
  mean = real.mean(axis=0)
  if method == "standard":
    std = real.std(axis=0)
    scale = np.where(std > 1e-6, 1.0 / np.maximum(std, 1e-6), 1.0)
    return {"mean": mean.astype(np.float32), "scale": scale.astype(np.float32)}
  if method.startswith("whiten:"):
    k = int(method.split(":")[1])
    centred = real - mean
    values, vectors = np.linalg.eigh(centred.T @ centred / len(real))
    top = np.argsort(values)[::-1][:k]
    proj = vectors[:, top] / np.sqrt(np.maximum(values[top], 1e-6))
    return {"mean": mean.astype(np.float32), "proj": proj.astype(np.float32)}
  raise ValueError(f"scorer_pretrain.feature_norm={method!r}: expected 'none', 'standard' or "
                   "'whiten:K' (e.g. 'whiten:128').")


def apply_feature_transform(feats: jax.Array, transform) -> jax.Array:
  """[..., F] raw features -> [..., F] as the model sees them during training."""
  centred = feats - transform["mean"]
  if "scale" in transform:
    return centred * transform["scale"]
  z = centred @ transform["proj"]
  return jnp.pad(z, [(0, 0)] * (z.ndim - 1) + [(0, feats.shape[-1] - z.shape[-1])])


def _feature_kernel_path(params, feature_dim: int) -> tuple[str, ...]:
  """The path of the one Dense layer that reads the raw region features."""
  flat = traverse_util.flatten_dict(params)
  found = [path[:-1] for path, leaf in flat.items()
           if path[-1] == "kernel" and leaf.ndim == 2 and leaf.shape[0] == feature_dim]
  if len(found) != 1:
    raise ValueError(f"scorers/pretrain.py: expected exactly one Dense kernel of input width "
                     f"{feature_dim} (the region-feature projection) to fold the feature "
                     f"normalisation into; found {['/'.join(p) for p in found]}. Set "
                     "scorer_pretrain.feature_norm='none' for this scorer.")
  return found[0]


def fold_feature_transform(params, transform):
  """Params that read raw features x as `params` read `apply_feature_transform(x)` (exactly,
  up to float rounding): the map is folded into the first layer's kernel and bias."""
  mean = np.asarray(transform["mean"])
  path = _feature_kernel_path(params, mean.shape[0])
  flat = traverse_util.flatten_dict(params)
  kernel = np.asarray(flat[path + ("kernel",)], np.float64)
  if "scale" in transform:
    folded = np.asarray(transform["scale"], np.float64)[:, None] * kernel
  else:
    proj = np.asarray(transform["proj"], np.float64)
    folded = proj @ kernel[:proj.shape[1]]
  flat[path + ("kernel",)] = jnp.asarray(folded, jnp.float32)
  flat[path + ("bias",)] = jnp.asarray(
      np.asarray(flat[path + ("bias",)], np.float64) - mean @ folded, jnp.float32)
  return traverse_util.unflatten_dict(flat)


# ------------------------------------------------------------------------------------------
# Captions and negatives.


def _swap_classes() -> dict[str, tuple[str, str]]:
  """Visual word -> (kind, category): a swap replaces a word by one of the same kind and of
  another category ("red" -> "blue", "ball" -> "square" but never "circle", "tiny" -> "big")."""
  classes = {colour: ("colour", colour) for colour in synthetic.COLOUR_NAMES}
  for shape, nouns in synthetic.SHAPE_NOUNS.items():
    for singular, plural in nouns:
      classes[singular] = ("shape", shape)
      classes[plural] = ("shapes", shape)
  for size, words in synthetic.SIZE_WORDS.items():
    classes.update({word: ("size", size) for word in words})
  return classes


class PairSampler:
  """Samples (image, caption, match, kind) rows of one split, deterministically from an rng.

  Kinds: "positive" (one of the image's references), "random" (a reference of another image),
  "related" (a reference of an image with the same background or an object of the same colour
  and shape; needs `split.scenes`, else random), "swap" (a reference with one visual word
  replaced, see `_swap_classes`). No negative is one of its image's references.
  """

  def __init__(self, split, words=None):
    self.split = split
    self.references = split.references
    self._refsets = [set(refs) for refs in self.references]
    known = set(words) if words is not None else None
    classes = _swap_classes()
    self.classes = {w: c for w, c in classes.items() if known is None or w in known}
    self._related = self._related_index(getattr(split, "scenes", None))

  def _related_index(self, scenes):
    """Per image, the lists of other images that share one of its keys (background, object)."""
    if scenes is None:
      return None
    groups: dict[tuple, list[int]] = {}
    keys = []
    for i in range(len(self.split)):
      own = [("background", int(scenes.background[i]))]
      own += sorted({("object", int(scenes.shape[i, k]), int(scenes.colour[i, k]))
                     for k in range(scenes.num_objects[i])})
      keys.append(own)
      for key in own:
        groups.setdefault(key, []).append(i)
    groups = {key: np.asarray(members) for key, members in groups.items()}
    return [[groups[key] for key in own if len(groups[key]) > 1] for own in keys]

  def swap(self, caption: str, rng: np.random.Generator) -> str | None:
    """`caption` with one visual word replaced (a/an agreement kept), or None if none can be."""
    words = caption.split()
    options = []
    for pos, word in enumerate(words):
      if word not in self.classes:
        continue
      kind, category = self.classes[word]
      after_article = pos > 0 and words[pos - 1] in ("a", "an")
      for other, (other_kind, other_category) in self.classes.items():
        # Keep "a"/"an" right without touching a second word: same initial vowel-ness.
        if other_kind == kind and other_category != category and (
            not after_article or (other[0] in "aeiou") == (word[0] in "aeiou")):
          options.append((pos, other))
    if not options:
      return None
    pos, other = options[int(rng.integers(len(options)))]
    return " ".join(words[:pos] + [other] + words[pos + 1:])

  def _other_caption(self, i: int, pool: np.ndarray | None, rng: np.random.Generator) -> str:
    n = len(self.split)
    for _ in range(20):
      j = int(rng.choice(pool)) if pool is not None else int((i + rng.integers(1, n)) % n)
      if j == i:
        continue
      refs = self.references[j]
      caption = refs[int(rng.integers(len(refs)))]
      if caption not in self._refsets[i]:
        return caption
    raise ValueError(f"scorers/pretrain.py: no caption of another image differs from the "
                     f"references of {self.split.name} image {i}; the split needs images with "
                     "distinct captions.")

  def swap_negative(self, i: int, caption: str, rng: np.random.Generator) -> tuple[str, str]:
    """`caption` of image i with a word swapped, and "swap"; if no swap gives a caption that
    is not one of the image's references (rare), a random negative and "random"."""
    for _ in range(5):
      swapped = self.swap(caption, rng)
      if swapped is None:
        break
      if swapped not in self._refsets[i]:
        return swapped, "swap"
    return self._other_caption(i, None, rng), "random"

  def caption(self, i: int, kind: str, rng: np.random.Generator) -> tuple[str, str]:
    """A caption of `kind` for image i; returns (caption, the kind actually used)."""
    refs = self.references[i]
    ref = refs[int(rng.integers(len(refs)))]
    if kind == "positive":
      return ref, kind
    if kind == "swap":
      return self.swap_negative(i, ref, rng)
    if kind == "related" and self._related is not None and self._related[i]:
      pools = self._related[i]
      return self._other_caption(i, pools[int(rng.integers(len(pools)))], rng), kind
    return self._other_caption(i, None, rng), "random"

  def sample(self, rng: np.random.Generator, batch: int, weights: dict[str, float],
             paired: bool = True):
    """Rows of image-caption pairs, half of them positives.

    Args:
      rng: the host rng (all randomness comes from it).
      batch: the number of rows (even when `paired`).
      weights: relative weights of the negative kinds ("random", "related", "swap").
      paired: every image appears twice, with a positive and with a negative, and a random
        negative is the positive of another image of the batch, so that neither the image nor
        the text alone says anything about the label. Otherwise each row is a distinct image,
        positive or negative with probability 1/2.

    Returns (images [batch] int, captions list[str], match [batch] int32, kinds list[str]).
    """
    total = sum(weights.get(k, 0.0) for k in KINDS[1:])
    probs = np.asarray([weights.get(k, 0.0) / total for k in KINDS[1:]])
    n = len(self.split)
    if paired:
      half = batch // 2
      images = rng.choice(n, size=half, replace=n < half)
      positives = [self.caption(int(i), "positive", rng)[0] for i in images]
      rows = [(int(i), c, "positive") for i, c in zip(images, positives)]
      for j, i in enumerate(images):
        kind = KINDS[1 + int(rng.choice(3, p=probs))]
        other = positives[(j + 1) % half]
        if kind == "random" and half > 1 and other not in self._refsets[int(i)]:
          rows.append((int(i), other, kind))
        else:
          rows.append((int(i),) + self.caption(int(i), kind, rng))
    else:
      images = rng.choice(n, size=batch, replace=n < batch)
      rows = []
      for i in images:
        kind = "positive" if rng.random() < 0.5 else KINDS[1 + int(rng.choice(3, p=probs))]
        rows.append((int(i),) + self.caption(int(i), kind, rng))
    images = np.asarray([r[0] for r in rows])
    captions, kinds = [r[1] for r in rows], [r[2] for r in rows]
    match = np.asarray([k == "positive" for k in kinds], np.int32)
    return images, captions, match, kinds


class TextEncoder:
  """The scorer's real tokenizer, padded to one fixed width (one compile for all batches)."""

  def __init__(self, module, scorer_config, splits):
    self.tokenizer = module.tokenizer(scorer_config)
    self.fmt = module.text_format(scorer_config)
    longest = 2
    for split in splits:
      texts = [self.fmt.text(c) for refs in split.references for c in refs]
      ids = self.tokenizer(texts, truncation=True, max_length=self.fmt.max_length)["input_ids"]
      longest = max([longest] + [len(x) for x in ids])
    # Room for a swapped word of more pieces than the one it replaces.
    self.width = min(self.fmt.max_length, longest + 2)

  def __call__(self, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = self.tokenizer([self.fmt.text(c) for c in captions], truncation=True,
                             max_length=self.width, padding="max_length", return_tensors="np")
    mask = np.asarray(encoded["attention_mask"], np.int32)
    ids = np.where(mask > 0, np.asarray(encoded["input_ids"], np.int32), self.fmt.pad_id)
    return ids, mask


# ------------------------------------------------------------------------------------------
# Evaluation.


def _image_inputs(module, scorer_config, params, split, index: np.ndarray):
  fn = jax.jit(lambda p, images: module.image_inputs(p, scorer_config, images))
  return jax.device_get(fn(params, split.scorer_images(index)))


def _scores(module, scorer_config, params, encoder, captions, image_inputs, batch_size=250):
  """Deterministic scores [N] of `captions` against `image_inputs` (aligned, [N, ...])."""
  ids, mask = encoder(captions)
  batch_size = min(batch_size, len(captions))
  fn = jax.jit(lambda p, i, m, x: module.score(p, scorer_config, i, m, x))
  out = []
  arrays = {"ids": ids, "mask": mask, "index": np.arange(len(captions))}
  for real, batch in training.host_batches(arrays, batch_size):
    inputs = jax.tree_util.tree_map(lambda x, b=batch: x[b["index"]], image_inputs)
    out.append(np.asarray(fn(params, batch["ids"], batch["mask"], inputs))[:real])
  return np.concatenate(out)


def evaluate(module, scorer_config, params, split, seed: int = 0, max_images: int = 250,
             group: int = 100) -> dict[str, float]:
  """Validation metrics of a trained scorer (deterministic: dropout off, fixed seed).

  ITM: every image (up to `max_images`) gets a positive caption and one negative of each kind
  (the swap negative is the positive with one word swapped). "accuracy" is the balanced
  accuracy of positives vs random negatives (chance 0.5; a score > 50 means "match"),
  "accuracy/<kind>" per kind, "score/<kind>" the mean score, and "swap_ranking" the fraction of
  images whose positive outscores its swapped twin.
  Contrastive (CLIP): "accuracy" is image->text retrieval among `group` captions of `group`
  images (chance 1 / group), averaged over groups and the 5 choices of reference;
  "swap_ranking" as above on the cosine.
  """
  rng = np.random.default_rng(seed)
  sampler = PairSampler(split)
  encoder = TextEncoder(module, scorer_config, [split])
  n = min(len(split), max_images)
  index = np.arange(n)
  inputs = _image_inputs(module, scorer_config, params, split, index)
  positives = [split.references[i][int(rng.integers(len(split.references[i])))] for i in index]
  swapped = [sampler.swap_negative(int(i), c, rng)[0] for i, c in zip(index, positives)]
  metrics = {}
  if module.OBJECTIVE == "itm":
    captions = {"positive": positives, "swap": swapped}
    for kind in ("random", "related"):
      captions[kind] = [sampler.caption(int(i), kind, rng)[0] for i in index]
    scores = {k: _scores(module, scorer_config, params, encoder, c, inputs)
              for k, c in captions.items()}
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
    embed = jax.jit(lambda p, i, m: module.embed_texts(p, scorer_config, i, m))
    hits = []
    for ids, mask in ids_sets:
      texts = np.asarray(embed(params, ids, mask))
      for start in range(0, n - group + 1, group):
        sims = inputs["image_embeds"][start:start + group] @ texts[start:start + group].T
        hits.append(np.argmax(sims, axis=1) == np.arange(group))
    metrics["accuracy"] = float(np.mean(np.concatenate(hits)))
    metrics["chance"] = 1.0 / group
    scores = {k: _scores(module, scorer_config, params, encoder, c, inputs)
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


def pretrain(config, module, dataset, directory: str):
  """Trains `module` at world size on `dataset`; returns (scorer config, params, summary).

  `directory` is where `pretrained_for_world` caches the result (unused here).
  """
  del directory
  s = settings(config.scorer_pretrain, module.NAME)
  scorer_config = world_config(module, config.scorer_pretrain)
  train_split, val_split = dataset["train"], dataset["val"]
  rng_init, rng_reinit, rng_dropout = jax.random.split(jax.random.key(s["seed"]), 3)
  # Jitted: some modules' init runs eagerly, op by op (seconds on a CPU).
  params = jax.jit(module.init_params, static_argnums=0)(scorer_config, rng_init)
  if s["init_std"] > 0:
    params = bert_init(params, rng_reinit, s["init_std"])
  norm = None
  if module.OBJECTIVE == "itm" and train_split.region_feats is not None:
    norm = feature_transform(train_split, s["feature_norm"])
  if norm is not None:
    _feature_kernel_path(params, norm["mean"].shape[0])  # Fail now, not after training.
  tx = _optimizer(s)
  opt_state = tx.init(params)

  def normalise(images):
    if norm is None or "region_feats" not in images:
      return images
    return dict(images, region_feats=apply_feature_transform(images["region_feats"], norm))

  @jax.jit
  def step(params, opt_state, batch, key):
    batch = dict(batch, images=normalise(batch["images"]))
    (loss, metrics), grads = jax.value_and_grad(
        lambda p: module.pretrain_loss(p, scorer_config, batch, key), has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, metrics

  sampler = PairSampler(train_split, dataset.vocab.words)
  encoder = TextEncoder(module, scorer_config, [train_split, val_split])
  contrastive = module.OBJECTIVE != "itm"
  progress = training.Progress(f"pretrain:{module.NAME}", s["steps"])
  host_rng = np.random.default_rng(s["seed"])
  batch_size = min(s["batch_size"], len(train_split))
  start, cpu_start = time.time(), time.process_time()
  for i in range(s["steps"]):
    if contrastive:  # Distinct images, each with one of its references.
      images = host_rng.choice(len(train_split), size=batch_size, replace=False)
      captions = [sampler.caption(int(i), "positive", host_rng)[0] for i in images]
      match = np.ones((batch_size,), np.int32)
    else:
      images, captions, match, _ = sampler.sample(host_rng, batch_size, s["negatives"],
                                                  s["paired"])
    ids, mask = encoder(captions)
    batch = {"text_ids": ids, "text_mask": mask, "images": train_split.scorer_images(images),
             "match": match}
    params, opt_state, loss, metrics = step(params, opt_state, batch,
                                            jax.random.fold_in(rng_dropout, i))
    if (i + 1) % s["log_every_steps"] == 0 or i + 1 == s["steps"]:
      accuracy = metrics.get("accuracy", metrics.get("accuracy/image_to_text"))
      progress.report(i + 1, {"loss": float(loss), "batch acc": float(accuracy)})
  jax.block_until_ready(params)
  seconds, cpu_seconds = time.time() - start, time.process_time() - cpu_start
  if norm is not None:
    params = fold_feature_transform(params, norm)
  metrics = evaluate(module, scorer_config, params, val_split, seed=s["seed"])
  summary = {"scorer": module.NAME, "objective": module.OBJECTIVE,
             "val_accuracy": metrics["accuracy"], "chance": metrics["chance"], "val": metrics,
             "steps": s["steps"], "seconds": seconds, "cpu_seconds": cpu_seconds,
             "steps_per_second": s["steps"] / max(seconds, 1e-9),
             "config": dataclasses.asdict(scorer_config)}
  what = "matching accuracy" if module.OBJECTIVE == "itm" else "image->text retrieval accuracy"
  details = ", ".join(f"{k} {v:.3f}" for k, v in sorted(metrics.items())
                      if k not in ("accuracy", "chance"))
  print(f"[pretrain:{module.NAME}] val {what} {metrics['accuracy']:.3f} (chance "
        f"{metrics['chance']:.3f}); {details}; {s['steps']} steps in {seconds:.0f} s "
        f"({cpu_seconds:.0f} CPU s)", flush=True)
  return scorer_config, params, summary


def _cache_key(config, module) -> dict:
  wanted = {"world": config.data.to_dict(), "version": PRETRAIN_VERSION,
            "pretrain": settings(config.scorer_pretrain, module.NAME)}
  return json.loads(json.dumps(wanted, default=str, sort_keys=True))


def pretrained_for_world(config, module, dataset, directory: str):
  """The cached tiny scorer in `directory`, pretraining it first when missing or stale.

  The cache is keyed on the world config, this scorer's pretraining settings and
  `PRETRAIN_VERSION`. Returns (scorer config, params, a description of the source).
  """
  os.makedirs(directory, exist_ok=True)
  params_path = os.path.join(directory, "params.msgpack")
  summary_path = os.path.join(directory, "pretrain.json")
  wanted = _cache_key(config, module)
  if os.path.exists(params_path) and os.path.exists(summary_path):
    with open(summary_path) as f:
      summary = json.load(f)
    if summary.get("key") == wanted:
      fields = {k: tuple(v) if isinstance(v, list) else v for k, v in summary["config"].items()}
      scorer_config = type(module.tiny_config())(**fields)
      template = jax.eval_shape(lambda: module.init_params(scorer_config, jax.random.key(0)))
      with open(params_path, "rb") as f:
        params = flax.serialization.from_bytes(template, f.read())
      print(f"[scorers] {module.NAME}: using the pretrained tiny scorer in {directory} "
            f"(val accuracy {summary['val_accuracy']:.3f})", flush=True)
      return scorer_config, jax.tree_util.tree_map(jnp.asarray, params), directory
  scorer_config, params, summary = pretrain(config, module, dataset, directory)
  summary["key"] = wanted
  tmp = f"{params_path}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(flax.serialization.to_bytes(jax.device_get(params)))
  os.replace(tmp, params_path)
  checkpoints.write_json_atomic(summary_path, summary)
  return scorer_config, params, directory
