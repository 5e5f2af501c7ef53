"""Self-critical sequence training with a VLP model's match score as the reward.

`scst_train_step(state, scorer_params, batch, rng)` is one compiled function (pmapped over the
local devices): greedy decode (no gradient, dropout off), K samples per image (dropout on), both
re-tokenized on the device into the scorer's vocabulary and scored, the advantage against the
baseline, the masked policy-gradient loss, gradients summed over devices, the optax update, and a
`measurements` dict that stays on the device. No strings, no Python tokenizer, no host round trip.

Loss (self-critical.pytorch RewardCriterion): -sum(logp(sample_t) * advantage * mask_t) /
sum(mask), mask = (seq > 0) shifted right with a leading 1 (the first EOS counts). The log-probs
come from a teacher-forced pass over the samples that reuses the sampling pass's dropout masks, so
they are exactly the log-probs of the policy that drew the samples.
Baselines: "greedy" (the paper: the greedy caption's score) or "mean" (the mean score of the
other K-1 samples of the same image; new self-critical, arXiv 2003.09971).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from vlprobe_jax import captioner as captioner_lib
from vlprobe_jax import checkpoints
from vlprobe_jax import decoding
from vlprobe_jax import evaluation
from vlprobe_jax import training
from vlprobe_jax import xe

AXIS = xe.AXIS
# reward_fn(scorer_params, word_ids [N, T], image_inputs (leading dim N)) -> scores [N]
RewardFn = Callable[[Any, jax.Array, Any], jax.Array]


def sequence_mask(seq: jax.Array) -> jax.Array:
  """(seq > 0) shifted right with a leading 1: every word plus the first EOS. [N, T] float32."""
  words = (seq > 0).astype(jnp.float32)
  return jnp.concatenate([jnp.ones_like(words[:, :1]), words[:, :-1]], axis=1)


def advantages(sample_scores: jax.Array, greedy_scores: jax.Array, baseline: str) -> jax.Array:
  """sample_scores [B, K], greedy_scores [B] -> advantage [B, K]."""
  if baseline == "greedy":
    return sample_scores - greedy_scores[:, None]
  if baseline == "mean":
    k = sample_scores.shape[1]
    others = (sample_scores.sum(axis=1, keepdims=True) - sample_scores) / (k - 1)
    return sample_scores - others
  raise ValueError(f"config.scst.baseline must be 'greedy' or 'mean'; found {baseline!r}.")


def policy_gradient_loss(token_logprobs: jax.Array, advantage: jax.Array, mask: jax.Array,
                         normaliser: jax.Array) -> jax.Array:
  """-sum(logp * advantage * mask) / normaliser; token_logprobs, mask [N, T], advantage [N]."""
  return -jnp.sum(token_logprobs * advantage[:, None] * mask) / normaliser


def repeat_images(tree: Any, times: int) -> Any:
  """Repeats every leaf `times` times along axis 0, image-major ([i0, i0, .., i1, i1, ..])."""
  return jax.tree_util.tree_map(lambda x: jnp.repeat(x, times, axis=0), tree)


def scst_train_step(state: xe.TrainState, scorer_params: Any, batch: dict[str, Any],
                    rng: jax.Array, *, config: captioner_lib.CaptionerConfig,
                    reward_fn: RewardFn, num_samples: int, baseline: str, max_length: int,
                    temperature: float = 1.0, image_inputs_fn: Callable | None = None):
  """One SCST step on one device's shard of images (call through `make_p_scst_step`).

  Args:
    state: the captioner TrainState (donated).
    scorer_params: the frozen scorer's params (not donated, never updated).
    batch: "fc_feats" [B, D] and "image_inputs" (the scorer's caption-independent inputs, each
      with leading dim B; or, with `image_inputs_fn`, the raw scorer images, turned into inputs
      here once per image).
    rng: this step's key on this device.

  Returns:
    (new state, measurements of scalars, still on the device).
  """
  fc = batch["fc_feats"]
  images = batch["image_inputs"]
  if image_inputs_fn is not None:
    with jax.named_scope("image_inputs"):
      images = image_inputs_fn(scorer_params, images)
  num_images = fc.shape[0]
  rng_sample, rng_dropout = jax.random.split(rng)
  params = jax.lax.stop_gradient(state.params)

  # The named scopes label the phases in profiler traces (vlprobe_jax/profile_summary.py).
  with jax.named_scope("decode"):
    greedy_seq, _ = decoding.decode_captions(config, params, fc, max_length, method="greedy")
    fc_samples = jnp.repeat(fc, num_samples, axis=0)
    init = decoding.initial_state(config, params, fc_samples)
    sample_seq, _ = decoding.sample(decoding.captioner_step_fn(config, params, rng_dropout), init,
                                    num_images * num_samples, max_length, rng_sample, temperature)

  # One scorer call for greedy and samples together.
  all_seq = jnp.concatenate([greedy_seq, sample_seq], axis=0)
  all_images = jax.tree_util.tree_map(
      lambda x: jnp.concatenate([x, jnp.repeat(x, num_samples, axis=0)], axis=0), images)
  with jax.named_scope("reward"):
    scores = jax.lax.stop_gradient(reward_fn(scorer_params, all_seq, all_images))
  greedy_scores = scores[:num_images]
  sample_scores = scores[num_images:].reshape(num_images, num_samples)
  advantage = advantages(sample_scores, greedy_scores, baseline).reshape(-1)

  mask = sequence_mask(sample_seq)
  inputs = jnp.concatenate([jnp.zeros_like(sample_seq[:, :1]), sample_seq[:, :-1]], axis=1)
  global_tokens = jax.lax.psum(mask.sum(), AXIS)

  def loss_fn(params):
    token_logprobs, entropy = xe.teacher_forced(config, params, fc_samples, inputs, sample_seq,
                                                dropout_rng=rng_dropout)
    loss = policy_gradient_loss(token_logprobs, advantage, mask, global_tokens)
    return loss, entropy

  with jax.named_scope("policy_gradient"):
    (local_loss, entropy), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = jax.lax.psum(grads, AXIS)
  with jax.named_scope("update"):
    new_state = state.apply_gradients(grads=grads)

  def mean(x):
    return jax.lax.pmean(jnp.mean(x), AXIS)

  lengths = jnp.sum(sample_seq > 0, axis=1)
  measurements = {
      "train/loss": jax.lax.psum(local_loss, AXIS),
      "reward/sample_mean": mean(sample_scores),
      "reward/greedy_mean": mean(greedy_scores),
      "reward/advantage_mean": mean(advantage),
      "reward/advantage_std": jax.lax.pmean(jnp.std(advantage), AXIS),
      "sample/length_mean": mean(lengths),
      "greedy/length_mean": mean(jnp.sum(greedy_seq > 0, axis=1)),
      "sample/eos_rate": mean(jnp.any(sample_seq == 0, axis=1)),
      "sample/entropy": jax.lax.psum(jnp.sum(entropy * mask), AXIS) / global_tokens,
      "train/grad_norm": optax.tree.norm(grads),
  }
  return new_state, measurements


def make_p_scst_step(config: captioner_lib.CaptionerConfig, reward_fn: RewardFn,
                     num_samples: int, baseline: str, max_length: int,
                     temperature: float = 1.0, devices=None, image_inputs_fn=None):
  """pmapped `scst_train_step`: (state, scorer_params, batch, rng), each with a device axis.

  The captioner state is donated; the scorer params are not (they are reused every step).
  """
  step = functools.partial(scst_train_step, config=config, reward_fn=reward_fn,
                           num_samples=num_samples, baseline=baseline, max_length=max_length,
                           temperature=temperature, image_inputs_fn=image_inputs_fn)
  return jax.pmap(step, axis_name=AXIS, donate_argnums=(0,), devices=devices)


def train(config, dataset, stage_dir: str, init_params: Any, scorer, *,
          max_steps_this_run: int | None = None):
  """Runs (or resumes) the SCST stage from `init_params`; returns the best params.

  Args:
    config: the run config (`seed`, `captioner`, `scst`, `eval`).
    dataset: a `Dataset` with "train" and "val" splits.
    stage_dir: where this stage's checkpoints and metrics go.
    init_params: the captioner params to start from (the best XE checkpoint).
    scorer: a `scoring.LoadedScorer`: the reward.
    max_steps_this_run: stop early (tests use it to simulate an interruption).

  Returns:
    The params of the best checkpoint (highest mean val reward of greedy captions), or None when
    stopped early.
  """
  scfg = config.scst
  cap_config = xe.captioner_config(config, dataset.vocab.size)
  train_split, val_split = dataset["train"], dataset["val"]
  per_epoch = training.steps_per_epoch(len(train_split), scfg.images_per_batch)
  total = scfg.get("total_steps") or scfg.epochs * per_epoch
  state = xe.TrainState.create(apply_fn=None, params=init_params,
                               tx=xe.make_optimizer(scfg.lr, scfg.grad_clip))
  meta = {"stage": "scst", "captioner": xe.dataclasses_asdict(cap_config), "scorer": scorer.name}
  ckpt = checkpoints.StageCheckpoints(f"{stage_dir}/checkpoints", meta)
  if ckpt.latest_step() is not None:
    state = ckpt.restore_latest(state)
    print(f"[scst] resuming from step {int(state.step)} ({ckpt.directory})", flush=True)
  start = int(state.step)
  if start >= total:
    ckpt.close()
    return xe.best_params_with_meta(cap_config, stage_dir, meta)

  devices = jax.local_devices()
  sharding = training.device_sharding(devices)
  # Cached image inputs (computed once per image for the whole run) suit the synthetic world;
  # on COCO they would not fit in host memory, so the step computes them once per image per step.
  cached = scfg.get("cache_image_inputs", True)
  p_step = make_p_scst_step(cap_config, scorer.reward_fn, scfg.num_samples, scfg.baseline,
                            scfg.max_length, scfg.temperature, devices=devices,
                            image_inputs_fn=None if cached else scorer.image_inputs_fn)
  replicated = training.replicate(state, devices)
  scorer_params = training.replicate(scorer.params, devices)
  train_images = scorer.image_inputs(train_split) if cached else None
  writer = training.MetricWriter(stage_dir)
  progress = training.Progress(f"scst:{scorer.name}", total, start)
  stop = total if max_steps_this_run is None else min(total, start + max_steps_this_run)
  step_rng = jax.random.fold_in(jax.random.key(config.seed), 2)
  print(f"[scst] reward: {scorer.name} match score; {scfg.images_per_batch} images x "
        f"{scfg.num_samples} samples a step, baseline {scfg.baseline}, {total} steps", flush=True)
  for step in range(start, stop):
    index = training.batch_indices(len(train_split), scfg.images_per_batch, config.seed, step)
    images = (jax.tree_util.tree_map(lambda x: x[index], train_images) if cached
              else train_split.scorer_images(index))
    batch = {"fc_feats": train_split.fc_feats[index], "image_inputs": images}
    batch = jax.device_put(training.shard(batch, len(devices)), sharding)
    keys = jax.device_put(training.device_keys(step_rng, step, len(devices)), sharding)
    # Everything the step needs is on the device already: any hidden transfer is an error.
    with jax.transfer_guard("disallow"):
      replicated, measurements = p_step(replicated, scorer_params, batch, keys)
    done = step + 1
    if done % scfg.log_every_steps == 0 or done == stop:
      scalars = training.unreplicate(measurements)
      writer.write(done, scalars)
      progress.report(done, {"reward(sample)": scalars["reward/sample_mean"],
                             "reward(greedy)": scalars["reward/greedy_mean"],
                             "len": scalars["sample/length_mean"]})
    if done % scfg.eval_every_steps == 0 or done == total:
      current = training.unreplicate(replicated)
      captions = evaluation.split_captions(cap_config, current.params, val_split,
                                           dataset.vocab, config.eval)
      val_score = float(scorer.score_texts(captions, val_split).mean())
      val_cider = evaluation.cider(val_split, captions)
      writer.write(done, {"val/reward": val_score, "val/cider": val_cider})
      improved = ckpt.maybe_save_best(done, current.params, val_score)
      print(f"[scst] step {done}: val {scorer.name} score {val_score:.2f}, CIDEr {val_cider:.3f}"
            f"{' (best so far)' if improved else ''} | e.g. \"{captions[0]}\"", flush=True)
    if done % scfg.checkpoint_every_steps == 0 or done == stop:
      ckpt.save_latest(done, training.unreplicate(replicated))
  writer.close()
  ckpt.close()
  if stop < total:
    return None
  return xe.best_params_with_meta(cap_config, stage_dir, meta)
