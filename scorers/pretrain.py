"""Tiny scorers for the synthetic world, pretrained on it with each model's own objective.

No VLP weights can be downloaded on a fresh machine, so on the synthetic world every scorer is
its own Flax module at `tiny_config()` sizes (with the real tokenizer's vocabulary), pretrained
here: image-text matching with mismatched captions as negatives (LXMERT, UNITER, ROSITA,
ViLBERT: `common.itm_loss` through each module's `pretrain_loss`), or the symmetric contrastive
loss (CLIP). The result is cached in `<workdir>/scorers/<name>/` with its validation accuracy,
and reused by later runs and stages.

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
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vlprobe_jax import checkpoints
from vlprobe_jax import training


def world_config(module, pretrain_config=None):
  """`module.tiny_config()` with the vocabulary size of the scorer's real tokenizer."""
  tiny = module.tiny_config()
  vocab_size = len(module.tokenizer(tiny))
  overrides = {"vocab_size": vocab_size}
  if pretrain_config is not None and pretrain_config.get("max_text_len"):
    overrides["max_text_len"] = pretrain_config.max_text_len
  return dataclasses.replace(tiny, **overrides)


def _encode(scorer_config, module, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
  tokenizer = module.tokenizer(scorer_config)
  fmt = module.text_format(scorer_config)
  encoded = tokenizer([fmt.text(c) for c in captions], truncation=True,
                      max_length=fmt.max_length, padding="longest", return_tensors="np")
  mask = np.asarray(encoded["attention_mask"], np.int32)
  ids = np.where(mask > 0, np.asarray(encoded["input_ids"], np.int32), fmt.pad_id)
  return ids, mask


def _pairs(split, rng: np.random.Generator, batch: int, objective: str):
  """Image indices, caption (image, reference) choices and match labels of one batch."""
  images = rng.choice(len(split), size=batch, replace=False)
  refs = rng.integers(0, len(split.references[0]), size=batch)
  caption_images = images.copy()
  match = np.ones((batch,), np.int32)
  if objective == "itm":
    # Half the pairs get the caption of another image: the mismatched negatives.
    negative = rng.random(batch) < 0.5
    others = (images + rng.integers(1, len(split), size=batch)) % len(split)
    caption_images = np.where(negative, others, images)
    match = (~negative).astype(np.int32)
  return images, caption_images, refs, match


def _batch(module, scorer_config, split, images, caption_images, refs, match):
  captions = [split.references[i][r % len(split.references[i])]
              for i, r in zip(caption_images, refs)]
  ids, mask = _encode(scorer_config, module, captions)
  return {"text_ids": ids, "text_mask": mask, "images": split.scorer_images(images),
          "match": match}


def evaluate(module, scorer_config, params, split, seed: int = 0, batch: int = 100) -> float:
  """Validation accuracy: ITM accuracy on balanced pairs, or CLIP image->text retrieval
  accuracy among `batch` captions (chance = 1 / batch)."""
  rng = np.random.default_rng(seed)
  batch = min(batch, len(split))
  pairs = _pairs(split, rng, batch, module.OBJECTIVE)
  data = _batch(module, scorer_config, split, *pairs)
  _, metrics = jax.jit(lambda p, b: module.pretrain_loss(p, scorer_config, b, jax.random.key(0)))(
      params, data)
  if module.OBJECTIVE == "itm":
    # pretrain_loss has dropout on; score deterministically instead.
    images = jax.jit(lambda p, i: module.image_inputs(p, scorer_config, i))(params, data["images"])
    scores = module.score(params, scorer_config, data["text_ids"], data["text_mask"], images)
    return float(np.mean((np.asarray(scores) > 50.0) == (data["match"] == 1)))
  return float(_accuracy(metrics))


def _accuracy(metrics) -> jax.Array:
  """The batch accuracy a scorer's pretrain_loss reports (CLIP: image->text retrieval)."""
  return metrics["accuracy"] if "accuracy" in metrics else metrics["accuracy/image_to_text"]


def pretrain(config, module, dataset, directory: str):
  """Trains `module` at world size on `dataset`; returns (scorer config, params, summary)."""
  pcfg = config.scorer_pretrain
  scorer_config = world_config(module, pcfg)
  train_split, val_split = dataset["train"], dataset["val"]
  rng = jax.random.key(pcfg.seed)
  params = module.init_params(scorer_config, rng)
  warmup = min(pcfg.warmup_steps, max(pcfg.steps // 2, 1))
  schedule = optax.warmup_cosine_decay_schedule(0.0, pcfg.lr, warmup, max(pcfg.steps, warmup + 1))
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, batch, key):
    (loss, metrics), grads = jax.value_and_grad(
        lambda p: module.pretrain_loss(p, scorer_config, batch, key), has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, metrics

  progress = training.Progress(f"pretrain:{module.NAME}", pcfg.steps)
  host_rng = np.random.default_rng(pcfg.seed)
  batch_size = min(pcfg.batch_size, len(train_split))
  start = time.time()
  for i in range(pcfg.steps):
    pairs = _pairs(train_split, host_rng, batch_size, module.OBJECTIVE)
    batch = _batch(module, scorer_config, train_split, *pairs)
    params, opt_state, loss, metrics = step(params, opt_state, batch, jax.random.fold_in(rng, i))
    if (i + 1) % pcfg.log_every_steps == 0 or i + 1 == pcfg.steps:
      progress.report(i + 1, {"loss": float(loss), "batch acc": float(_accuracy(metrics))})
  accuracy = evaluate(module, scorer_config, params, val_split)
  chance = 0.5 if module.OBJECTIVE == "itm" else 1.0 / min(100, len(val_split))
  summary = {"scorer": module.NAME, "objective": module.OBJECTIVE, "val_accuracy": accuracy,
             "chance": chance, "steps": pcfg.steps, "seconds": time.time() - start,
             "config": dataclasses.asdict(scorer_config)}
  what = "matching accuracy" if module.OBJECTIVE == "itm" else "image->text retrieval accuracy"
  print(f"[pretrain:{module.NAME}] val {what} {accuracy:.3f} (chance {chance:.3f})", flush=True)
  return scorer_config, params, summary


def pretrained_for_world(config, module, dataset, directory: str):
  """The cached tiny scorer in `directory`, pretraining it first when missing or stale.

  Returns (scorer config, params, a description of the source).
  """
  os.makedirs(directory, exist_ok=True)
  params_path = os.path.join(directory, "params.msgpack")
  summary_path = os.path.join(directory, "pretrain.json")
  wanted = {"world": config.data.to_dict(), "pretrain": config.scorer_pretrain.to_dict()}
  if os.path.exists(params_path) and os.path.exists(summary_path):
    with open(summary_path) as f:
      summary = json.load(f)
    if summary.get("key") == json.loads(json.dumps(wanted, default=str)):
      fields = {k: tuple(v) if isinstance(v, list) else v for k, v in summary["config"].items()}
      scorer_config = type(module.tiny_config())(**fields)
      template = jax.eval_shape(lambda: module.init_params(scorer_config, jax.random.key(0)))
      with open(params_path, "rb") as f:
        params = flax.serialization.from_bytes(template, f.read())
      print(f"[scorers] {module.NAME}: using the pretrained tiny scorer in {directory} "
            f"(val accuracy {summary['val_accuracy']:.3f})", flush=True)
      return scorer_config, jax.tree_util.tree_map(jnp.asarray, params), directory
  scorer_config, params, summary = pretrain(config, module, dataset, directory)
  summary["key"] = json.loads(json.dumps(wanted, default=str))
  tmp = f"{params_path}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(flax.serialization.to_bytes(jax.device_get(params)))
  os.replace(tmp, params_path)
  checkpoints.write_json_atomic(summary_path, summary)
  return scorer_config, params, directory
