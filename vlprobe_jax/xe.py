"""Cross-entropy training of the captioner: the pure step and its schedules.

Paper settings (self-critical.pytorch `configs/fc.yml`): Adam 5e-4 decayed x0.8 every 3 epochs,
gradients clipped by value at 0.1, 10 images x 5 captions a batch, scheduled sampling raised by
0.05 every 5 epochs up to 0.25. The loss covers every word plus the first EOS, normalised by the
number of such tokens in the whole (global) batch, so the pmapped step equals the one-device step
on the same global batch.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from vlprobe_jax import captioner as captioner_lib
from vlprobe_jax import checkpoints
from vlprobe_jax import decoding
from vlprobe_jax import evaluation
from vlprobe_jax import training

AXIS = "batch"


class TrainState(train_state.TrainState):
  """Params + optimizer state + step (Flax's TrainState; no extra fields)."""


def make_optimizer(lr: float, grad_clip: float, decay_every_steps: int | None = None,
                   decay_rate: float = 1.0) -> optax.GradientTransformation:
  """Clip by value, then Adam with an optional staircase exponential decay."""
  if decay_every_steps:
    lr = optax.exponential_decay(lr, transition_steps=decay_every_steps, decay_rate=decay_rate,
                                 staircase=True)
  parts = [optax.clip(grad_clip)] if grad_clip else []
  return optax.chain(*parts, optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8))


def scheduled_sampling_prob(epoch: int, start_epoch: int, increase_every: int,
                            increase_prob: float, max_prob: float) -> float:
  """ss_prob(epoch) = min(increase_prob * floor((epoch - start) / every), max); 0 before start."""
  if start_epoch < 0 or epoch < start_epoch:
    return 0.0
  return min(increase_prob * ((epoch - start_epoch) // increase_every), max_prob)


def shift_labels(labels: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """labels [N, L] word ids (0-padded) -> (inputs, targets, mask), each [N, L + 1].

  inputs = [0 (BOS), w1..wL]; targets = [w1..wL, 0]; mask covers every word and the first EOS.
  """
  zeros = jnp.zeros_like(labels[:, :1])
  inputs = jnp.concatenate([zeros, labels], axis=1)
  targets = jnp.concatenate([labels, zeros], axis=1)
  # A position counts if it is a word or the first 0 after the words.
  words = (targets > 0).astype(jnp.int32)
  previous_is_word = jnp.concatenate([jnp.ones_like(words[:, :1]), words[:, :-1]], axis=1)
  mask = jnp.where(words > 0, 1, previous_is_word).astype(jnp.float32)
  return inputs, targets, mask


def teacher_forced(config: captioner_lib.CaptionerConfig, params: Any, fc_feats: jax.Array,
                   inputs: jax.Array, targets: jax.Array, *, dropout_rng: jax.Array | None,
                   ss_rng: jax.Array | None = None,
                   ss_prob: jax.Array | float = 0.0) -> tuple[jax.Array, jax.Array]:
  """Log-probs of `targets` and the entropy of each step, the captioner fed `inputs`.

  Only the chosen token's log-prob and the entropy leave each step, never the [N, T, V] table,
  which keeps memory flat in the vocabulary size.

  Args:
    config, params: the captioner.
    fc_feats: [N, D] image features.
    inputs: [N, T] tokens fed at each step (0 = BOS first).
    targets: [N, T] tokens whose log-probs are wanted.
    dropout_rng: step t uses dropout key `fold_in(dropout_rng, t)`, as
      `decoding.captioner_step_fn` does, so a sampling pass and this pass share masks.
    ss_rng, ss_prob: with `ss_rng`, each input after the first is replaced, per row with
      probability `ss_prob`, by a token sampled from the previous step (scheduled sampling).

  Returns:
    (token log-probs [N, T], entropies [N, T]).
  """
  step_fn = decoding.captioner_step_fn(config, params, dropout_rng)
  state = decoding.initial_state(config, params, fc_feats)
  batch = inputs.shape[0]

  def body(carry, t):
    state, previous_logprobs = carry
    tokens = inputs[:, t]
    if ss_rng is not None:
      key = jax.random.fold_in(ss_rng, t)
      use_sample = (jax.random.uniform(key, (batch,)) < ss_prob) & (t > 0)
      sampled = jax.random.categorical(jax.random.fold_in(key, 1), previous_logprobs, axis=-1)
      tokens = jnp.where(use_sample, jax.lax.stop_gradient(sampled), tokens)
    logprobs, state = step_fn(tokens, state, t)
    chosen = jnp.take_along_axis(logprobs, targets[:, t, None], axis=-1)[:, 0]
    entropy = -jnp.sum(jnp.exp(logprobs) * logprobs, axis=-1)
    carried = logprobs if ss_rng is not None else previous_logprobs
    return (state, carried), (chosen, entropy)

  # The previous step's distribution is carried only when scheduled sampling needs it.
  init_logprobs = jnp.zeros((batch, config.vocab_size) if ss_rng is not None else (batch, 1),
                            jnp.float32)
  _, (chosen, entropy) = jax.lax.scan(body, (state, init_logprobs), jnp.arange(inputs.shape[1]))
  return chosen.T, entropy.T


def xe_train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array,
                  ss_prob: jax.Array, *, config: captioner_lib.CaptionerConfig):
  """One XE step on one device's shard; call through `make_p_xe_step` (pmap over AXIS).

  Args:
    state: the replicated TrainState.
    batch: "fc_feats" [B, D] float32 and "labels" [B, C, L] int32 (C captions per image).
    rng: the step's key (already folded with the step and the device index).
    ss_prob: scalar scheduled-sampling probability.

  Returns:
    (new state, measurements dict of scalars).
  """
  fc = batch["fc_feats"]
  labels = batch["labels"]
  captions_per_image = labels.shape[1]
  fc = jnp.repeat(fc, captions_per_image, axis=0)  # image-major, as repeat_tensors
  labels = labels.reshape(-1, labels.shape[-1])
  inputs, targets, mask = shift_labels(labels)
  rng_dropout, rng_ss = jax.random.split(rng)
  global_tokens = jax.lax.psum(mask.sum(), AXIS)

  def loss_fn(params):
    token_logprobs, _ = teacher_forced(config, params, fc, inputs, targets,
                                       dropout_rng=rng_dropout, ss_rng=rng_ss, ss_prob=ss_prob)
    return -(token_logprobs * mask).sum() / global_tokens

  local_loss, grads = jax.value_and_grad(loss_fn)(state.params)
  grads = jax.lax.psum(grads, AXIS)
  new_state = state.apply_gradients(grads=grads)
  measurements = {
      "train/loss": jax.lax.psum(local_loss, AXIS),
      "train/grad_norm": optax.tree.norm(grads),
      "train/ss_prob": ss_prob,
  }
  return new_state, measurements


def make_p_xe_step(config: captioner_lib.CaptionerConfig):
  """The pmapped XE step: (state, batch, rng, ss_prob) with a leading device axis on each."""
  return jax.pmap(functools.partial(xe_train_step, config=config), axis_name=AXIS,
                  donate_argnums=(0,))


def captioner_config(config, vocab_size: int) -> captioner_lib.CaptionerConfig:
  """The CaptionerConfig of a run config (its `captioner` fields) and a vocabulary size."""
  fields = dict(config.captioner)
  fields["vocab_size"] = vocab_size
  return captioner_lib.CaptionerConfig(**fields)


def train(config, dataset, stage_dir: str, *, max_steps_this_run: int | None = None):
  """Runs (or resumes) the XE stage; returns the params of the best checkpoint.

  Resume order: the latest checkpoint in `stage_dir`, else `config.xe.init_from` (a stage
  directory whose best checkpoint seeds the params), else random init.

  Args:
    config: the run config (fields `seed`, `captioner`, `xe`, `eval`).
    dataset: a `Dataset` with "train" and "val" splits.
    stage_dir: where checkpoints and metrics of this stage go.
    max_steps_this_run: stop after this many steps (tests use it to simulate an interruption).
  """
  xcfg = config.xe
  cap_config = captioner_config(config, dataset.vocab.size)
  train_split, val_split = dataset["train"], dataset["val"]
  per_epoch = training.steps_per_epoch(len(train_split), xcfg.images_per_batch)
  total = xcfg.get("total_steps") or xcfg.epochs * per_epoch
  decay = xcfg.lr_decay_every_epochs * per_epoch if xcfg.lr_decay_every_epochs else None
  tx = make_optimizer(xcfg.lr, xcfg.grad_clip, decay, xcfg.lr_decay_rate)
  rng = jax.random.key(config.seed)
  params = captioner_lib.init_params(cap_config, jax.random.fold_in(rng, 0))
  state = TrainState.create(apply_fn=None, params=params, tx=tx)
  ckpt = checkpoints.StageCheckpoints(
      f"{stage_dir}/checkpoints", {"stage": "xe", "captioner": dataclasses_asdict(cap_config)})
  if ckpt.latest_step() is not None:
    state = ckpt.restore_latest(state)
    training.log.info("xe: resuming from step %d in %s", int(state.step), ckpt.directory)
    print(f"[xe] resuming from step {int(state.step)} ({ckpt.directory})", flush=True)
  elif xcfg.get("init_from"):
    source = checkpoints.StageCheckpoints(f"{xcfg.init_from}/checkpoints",
                                          {"stage": "xe", "captioner": dataclasses_asdict(cap_config)})
    state = state.replace(params=source.restore_best(state.params))
    source.close()
  start = int(state.step)
  if start >= total:
    ckpt.close()
    return best_params(config, dataset.vocab.size, stage_dir, "xe")

  devices = jax.local_devices()
  p_step = make_p_xe_step(cap_config)
  replicated = training.replicate(state, devices)
  writer = training.MetricWriter(stage_dir)
  progress = training.Progress("xe", total, start)
  stop = total if max_steps_this_run is None else min(total, start + max_steps_this_run)
  step_rng = jax.random.fold_in(rng, 1)
  for step in range(start, stop):
    index = training.batch_indices(len(train_split), xcfg.images_per_batch, config.seed, step)
    batch = {"fc_feats": train_split.fc_feats[index], "labels": train_split.labels[index]}
    ss_prob = scheduled_sampling_prob(step // per_epoch, xcfg.ss_start_epoch,
                                      xcfg.ss_increase_every_epochs, xcfg.ss_increase_prob,
                                      xcfg.ss_max_prob)
    replicated, measurements = p_step(
        replicated, training.shard(batch, len(devices)),
        training.device_keys(step_rng, step, len(devices)),
        jnp.full((len(devices),), ss_prob, jnp.float32))
    done = step + 1
    if done % xcfg.log_every_steps == 0 or done == stop:
      scalars = training.unreplicate(measurements)
      scalars["train/epoch"] = done / per_epoch
      writer.write(done, scalars)
      progress.report(done, {"loss": scalars["train/loss"], "epoch": scalars["train/epoch"]})
    if done % xcfg.eval_every_steps == 0 or done == total:
      current = training.unreplicate(replicated)
      captions = evaluation.split_captions(cap_config, current.params, val_split,
                                           dataset.vocab, config.eval)
      score = evaluation.cider(val_split, captions)
      writer.write(done, {"val/cider": score})
      improved = ckpt.maybe_save_best(done, current.params, score)
      print(f"[xe] step {done}: val CIDEr {score:.3f}{' (best so far)' if improved else ''}"
            f" | e.g. \"{captions[0]}\"", flush=True)
    if done % xcfg.checkpoint_every_steps == 0 or done == stop:
      ckpt.save_latest(done, training.unreplicate(replicated))
  writer.close()
  ckpt.close()
  if stop < total:
    return None
  return best_params(config, dataset.vocab.size, stage_dir, "xe")


def dataclasses_asdict(config) -> dict:
  return dataclasses.asdict(config)


def best_params(config, vocab_size: int, stage_dir: str, stage: str):
  """The params of the best checkpoint of the XE stage in `stage_dir`."""
  cap_config = captioner_config(config, vocab_size)
  return best_params_with_meta(cap_config, stage_dir,
                               {"stage": stage, "captioner": dataclasses_asdict(cap_config)})


def best_params_with_meta(cap_config, stage_dir: str, meta: dict):
  """The best params in `<stage_dir>/checkpoints`, written under the description `meta`."""
  params = jax.eval_shape(lambda: captioner_lib.init_params(cap_config, jax.random.key(0)))
  ckpt = checkpoints.StageCheckpoints(f"{stage_dir}/checkpoints", meta)
  try:
    return ckpt.restore_best(params)
  finally:
    ckpt.close()
