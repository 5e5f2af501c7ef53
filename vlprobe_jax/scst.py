"""Self-critical sequence training with a VLP model's match score as the reward.

`scst_train_step(state, scorer_params, batch, rng)` is one compiled function (pmapped over the
local devices): greedy decode (no gradient, dropout off), K samples per image (dropout on), both
re-tokenized on the device into the scorer's vocabulary and scored, the advantage against the
baseline, the masked policy-gradient loss, gradients summed over devices, the optax update, and a
`measurements` dict that stays on the device. No strings, no Python tokenizer, no host round trip.

Loss (self-critical.pytorch RewardCriterion): -sum(logp(sample_t) * advantage * mask_t) /
sum(mask), mask = (seq > 0) shifted right with a leading 1 (the first EOS counts). The log-probs
are exactly those of the policy that drew the samples: either from a teacher-forced replay over
the samples that reuses the sampling pass's dropout masks (`scst.policy_gradient="replay"`), or
kept from the sampling pass itself, back-propagated through its scan ("sampling"; one forward
pass fewer).
Baselines: "greedy" (the paper: the greedy caption's score) or "mean" (the mean score of the
other K-1 samples of the same image; new self-critical, arXiv 2003.09971).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from vlprobe_jax import captioner as captioner_lib
from vlprobe_jax import captioner_stage
from vlprobe_jax import decoding
from vlprobe_jax import devices as devices_lib
from vlprobe_jax import evaluation
from vlprobe_jax import training
from vlprobe_jax.training import AXIS, TrainState
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


# Where the policy gradient's log-probs come from: "replay" runs the captioner a second time,
# teacher-forced over the samples (the same dropout masks); "sampling" keeps them from the
# sampling pass and back-propagates through it, which saves that second forward pass. Both give
# the same log-probs and gradients (tests/test_scst.py).
POLICY_GRADIENT_PASSES = ("replay", "sampling")


class Rewarded(NamedTuple):
  """The samples of one step and what their scores make of them."""
  sample_seq: jax.Array  # [N, T]
  sample_scores: jax.Array  # [B, K]
  greedy_scores: jax.Array  # [B]
  advantage: jax.Array  # [N]
  mask: jax.Array  # [N, T]
  global_tokens: jax.Array  # the loss normaliser: mask.sum() over every device


def policy_gradient(config: captioner_lib.CaptionerConfig, params: Any, fc_samples: jax.Array,
                    reward: Callable[[jax.Array], Rewarded], *, rng_sample: jax.Array,
                    rng_dropout: jax.Array, max_length: int, temperature: float, mode: str):
  """Draws the samples, scores them and differentiates the policy-gradient loss.

  Args:
    params: the captioner params (differentiated).
    fc_samples: [N, D] image features, one row per sample.
    reward: sample_seq [N, T] -> `Rewarded` (no gradient flows through it).
    mode: one of POLICY_GRADIENT_PASSES.

  Returns:
    ((loss, (entropy [N, T], Rewarded)), gradients).
  """
  if mode not in POLICY_GRADIENT_PASSES:
    raise ValueError(f"config.scst.policy_gradient must be one of {POLICY_GRADIENT_PASSES}; "
                     f"found {mode!r}.")
  num = fc_samples.shape[0]

  def draw(p, with_entropy):
    init = decoding.initial_state(config, p, fc_samples)
    return decoding.sample(decoding.captioner_step_fn(config, p, rng_dropout), init, num,
                           max_length, rng_sample, temperature, with_entropy=with_entropy)

  if mode == "replay":
    with jax.named_scope("decode"):
      sample_seq, _ = draw(jax.lax.stop_gradient(params), False)
    rewarded = reward(sample_seq)
    inputs = jnp.concatenate([jnp.zeros_like(sample_seq[:, :1]), sample_seq[:, :-1]], axis=1)

    def loss_fn(p):
      with jax.named_scope("policy_gradient"):
        token_logprobs, entropy = decoding.teacher_forced(config, p, fc_samples, inputs,
                                                          sample_seq, dropout_rng=rng_dropout)
        loss = policy_gradient_loss(token_logprobs, rewarded.advantage, rewarded.mask,
                                    rewarded.global_tokens)
      return loss, (entropy, rewarded)
  else:

    def loss_fn(p):
      with jax.named_scope("decode"):
        sample_seq, token_logprobs, entropy = draw(p, True)
      rewarded = reward(jax.lax.stop_gradient(sample_seq))
      with jax.named_scope("policy_gradient"):
        loss = policy_gradient_loss(token_logprobs, rewarded.advantage, rewarded.mask,
                                    rewarded.global_tokens)
      return loss, (entropy, rewarded)

  return jax.value_and_grad(loss_fn, has_aux=True)(params)


def scst_train_step(state: TrainState, scorer_params: Any, batch: dict[str, Any],
                    rng: jax.Array, *, config: captioner_lib.CaptionerConfig,
                    reward_fn: RewardFn, num_samples: int, baseline: str, max_length: int,
                    temperature: float = 1.0, image_inputs_fn: Callable | None = None,
                    policy_gradient_pass: str = "replay"):
  """One SCST step on one device's shard of images (call through `make_p_scst_step`).

  Args:
    state: the captioner TrainState (donated).
    scorer_params: the frozen scorer's params (not donated, never updated).
    batch: "fc_feats" [B, D] and "image_inputs" (the scorer's caption-independent inputs, each
      with leading dim B; or, with `image_inputs_fn`, the raw scorer images, turned into inputs
      here once per image).
    rng: this step's key on this device.
    policy_gradient_pass: one of POLICY_GRADIENT_PASSES.

  Returns:
    (new state, measurements of scalars, still on the device).
  """
  fc = batch["fc_feats"]
  images = batch["image_inputs"]
  if image_inputs_fn is not None:
    with jax.named_scope("image_inputs"):
      # Region features arrive in their store's dtype (float16 stores: half the host copy and
      # transfer); the scorers read float32, as from a float32 store (the cast is exact).
      if "region_feats" in images and images["region_feats"].dtype == jnp.float16:
        images = {**images, "region_feats": images["region_feats"].astype(jnp.float32)}
      images = image_inputs_fn(scorer_params, images)
  num_images = fc.shape[0]
  rng_sample, rng_dropout = jax.random.split(rng)

  # The named scopes label the phases in profiler traces (vlprobe_jax/bench/profile.py).
  with jax.named_scope("decode"):
    greedy_seq, _ = decoding.decode_captions(config, jax.lax.stop_gradient(state.params), fc,
                                             max_length, method="greedy")
  fc_samples = jnp.repeat(fc, num_samples, axis=0)
  # One scorer call for greedy and samples together.
  all_images = jax.tree_util.tree_map(
      lambda x: jnp.concatenate([x, jnp.repeat(x, num_samples, axis=0)], axis=0), images)

  def reward(sample_seq) -> Rewarded:
    all_seq = jnp.concatenate([greedy_seq, sample_seq], axis=0)
    with jax.named_scope("reward"):
      scores = jax.lax.stop_gradient(reward_fn(scorer_params, all_seq, all_images))
    greedy_scores = scores[:num_images]
    sample_scores = scores[num_images:].reshape(num_images, num_samples)
    advantage = advantages(sample_scores, greedy_scores, baseline).reshape(-1)
    mask = sequence_mask(sample_seq)
    return Rewarded(sample_seq, sample_scores, greedy_scores, advantage, mask,
                    jax.lax.psum(mask.sum(), AXIS))

  (local_loss, (entropy, rewarded)), grads = policy_gradient(
      config, state.params, fc_samples, reward, rng_sample=rng_sample, rng_dropout=rng_dropout,
      max_length=max_length, temperature=temperature, mode=policy_gradient_pass)
  with jax.named_scope("policy_gradient"):
    grads = jax.lax.psum(grads, AXIS)
  with jax.named_scope("update"):
    new_state = state.apply_gradients(grads=grads)

  def mean(x):
    return jax.lax.pmean(jnp.mean(x), AXIS)

  sample_seq, mask, global_tokens = rewarded.sample_seq, rewarded.mask, rewarded.global_tokens
  lengths = jnp.sum(sample_seq > 0, axis=1)
  measurements = {
      "train/loss": jax.lax.psum(local_loss, AXIS),
      "reward/sample_mean": mean(rewarded.sample_scores),
      "reward/greedy_mean": mean(rewarded.greedy_scores),
      "reward/advantage_mean": mean(rewarded.advantage),
      "reward/advantage_std": jax.lax.pmean(jnp.std(rewarded.advantage), AXIS),
      "sample/length_mean": mean(lengths),
      "greedy/length_mean": mean(jnp.sum(greedy_seq > 0, axis=1)),
      "sample/eos_rate": mean(jnp.any(sample_seq == 0, axis=1)),
      "sample/entropy": jax.lax.psum(jnp.sum(entropy * mask), AXIS) / global_tokens,
      "train/grad_norm": optax.tree.norm(grads),
  }
  return new_state, measurements


def make_p_scst_step(config: captioner_lib.CaptionerConfig, reward_fn: RewardFn,
                     num_samples: int, baseline: str, max_length: int,
                     temperature: float = 1.0, devices=None, image_inputs_fn=None,
                     policy_gradient_pass: str = "replay"):
  """pmapped `scst_train_step`: (state, scorer_params, batch, rng), each with a device axis.

  The captioner state is donated; the scorer params are not (they are reused every step).
  """
  step = functools.partial(scst_train_step, config=config, reward_fn=reward_fn,
                           num_samples=num_samples, baseline=baseline, max_length=max_length,
                           temperature=temperature, image_inputs_fn=image_inputs_fn,
                           policy_gradient_pass=policy_gradient_pass)
  return jax.pmap(step, axis_name=AXIS, donate_argnums=(0,), devices=devices)


class SCSTTask(captioner_stage.CaptionerTask):
  """SCST as a `training.Task`, from `init_params` with `scorer`'s match score as the reward.

  Image inputs are cached per image for the whole run (`scst.cache_image_inputs`, the synthetic
  world); on COCO they would not fit in host memory, so the step computes them once per image
  per step from the stored regions or pixels.
  """
  stage = "scst"

  def __init__(self, config, dataset, stage_dir: str, init_params: Any, scorer):
    super().__init__(config, dataset, stage_dir, config.scst)
    scfg = config.scst
    self.init_params, self.scorer = init_params, scorer
    self.label = f"scst:{scorer.name}"
    self.eval_name = f"val {scorer.name} score"
    self.checkpoint_meta = captioner_stage.checkpoint_meta("scst", self.cap_config,
                                                           scorer=scorer.name)
    self.cached = scfg.get("cache_image_inputs", True)
    self.p_step = make_p_scst_step(self.cap_config, scorer.reward_fn, scfg.num_samples,
                                   scfg.baseline, scfg.max_length, scfg.temperature,
                                   devices=self.pmap_devices,
                                   image_inputs_fn=None if self.cached else scorer.image_inputs_fn,
                                   policy_gradient_pass=scfg.get("policy_gradient", "replay"))
    self.step_rng = jax.random.fold_in(jax.random.key(config.seed), 2)
    self.scorer_params = None
    self.train_images = None

  def initial_state(self) -> TrainState:
    scfg = self.config.scst
    return TrainState.create(apply_fn=None, params=self.init_params,
                             tx=training.make_optimizer(scfg.lr, scfg.grad_clip))

  def place(self, state):
    if self.scorer_params is None:
      scfg = self.config.scst
      self.scorer_params = devices_lib.replicate(self.scorer.params, self.devices)
      if self.cached:
        self.train_images = self.scorer.image_inputs(self.dataset["train"])
      if jax.process_index() == 0:
        print(f"[scst] reward: {self.scorer.name} match score; {scfg.images_per_batch} images "
              f"x {scfg.num_samples} samples a step, baseline {scfg.baseline}, "
              f"{self.total_steps} steps", flush=True)
    return super().place(state)

  def gather(self, rows):
    train = self.dataset["train"]
    images = (jax.tree_util.tree_map(lambda x: x[rows], self.train_images) if self.cached
              else train.scorer_images(rows, feats_dtype=None))
    return {"fc_feats": train.fc_feats[rows], "image_inputs": images}

  def train_step(self, placed, batch, step: int):
    keys = jax.device_put(self.step_keys(self.step_rng, step),
                          devices_lib.device_sharding(self.devices))
    # Everything the step needs is on the device already: any hidden transfer is an error.
    with jax.transfer_guard("disallow"):
      return self.p_step(placed, self.scorer_params, batch, keys)

  def progress_values(self, scalars: dict, done: int) -> dict:
    return {"reward(sample)": scalars["reward/sample_mean"],
            "reward(greedy)": scalars["reward/greedy_mean"],
            "len": scalars["sample/length_mean"]}

  def evaluate(self, state, done: int) -> training.Evaluation:
    val_split = self.dataset["val"]
    captions = self.val_captions(state.params)
    val_score = float(self.scorer.score_texts(captions, val_split).mean())
    val_cider = evaluation.cider(val_split, captions)
    return training.Evaluation(
        score=val_score, scalars={"val/reward": val_score, "val/cider": val_cider},
        summary=f"val {self.scorer.name} score {val_score:.2f}, CIDEr {val_cider:.3f}",
        example=captions[0])


def train(config, dataset, stage_dir: str, init_params: Any, scorer, *,
          max_steps_this_run: int | None = None) -> training.StageResult:
  """Runs, resumes or reports finished the SCST stage; the result holds the params of the best
  checkpoint (highest mean val reward of greedy captions).

  Args:
    config: the run config (`seed`, `captioner`, `scst`, `eval`).
    dataset: a `Dataset` with "train" and "val" splits.
    stage_dir: where this stage's checkpoints and metrics go.
    init_params: the captioner params to start from (the best XE checkpoint).
    scorer: a `scoring.LoadedScorer`: the reward.
    max_steps_this_run: stop early (tests use it to simulate an interruption).
  """
  return training.train(SCSTTask(config, dataset, stage_dir, init_params, scorer),
                        max_steps_this_run=max_steps_this_run)
