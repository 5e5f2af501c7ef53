"""Cross-entropy training of the captioner: the pure step, its schedules, and the XE task.

Paper settings (self-critical.pytorch `configs/fc.yml`): Adam 5e-4 decayed x0.8 every 3 epochs,
gradients clipped by value at 0.1, 10 images x 5 captions a batch, scheduled sampling raised by
0.05 every 5 epochs up to 0.25. The loss covers every word plus the first EOS, normalised by the
number of such tokens in the whole (global) batch, so the pmapped step equals the one-device step
on the same global batch. `train` runs the stage through the one loop (`training.train`).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import optax

from vlprobe_jax import captioner as captioner_lib
from vlprobe_jax import captioner_stage
from vlprobe_jax import checkpoints
from vlprobe_jax import decoding
from vlprobe_jax import evaluation
from vlprobe_jax import training
from vlprobe_jax.training import AXIS, TrainState


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
    token_logprobs, _ = decoding.teacher_forced(config, params, fc, inputs, targets,
                                                dropout_rng=rng_dropout, ss_rng=rng_ss,
                                                ss_prob=ss_prob)
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


def make_p_xe_step(config: captioner_lib.CaptionerConfig, devices=None):
  """The pmapped XE step: (state, batch, rng, ss_prob) with a leading device axis on each."""
  return jax.pmap(functools.partial(xe_train_step, config=config), axis_name=AXIS,
                  donate_argnums=(0,), devices=devices)


class XETask(captioner_stage.CaptionerTask):
  """XE as a `training.Task`."""
  stage = label = "xe"
  eval_name = "val CIDEr"

  def __init__(self, config, dataset, stage_dir: str):
    super().__init__(config, dataset, stage_dir, config.xe)
    xcfg = config.xe
    decay = (xcfg.lr_decay_every_epochs * self.steps_per_epoch if xcfg.lr_decay_every_epochs
             else None)
    self.tx = training.make_optimizer(xcfg.lr, xcfg.grad_clip, decay, xcfg.lr_decay_rate)
    self.rng = jax.random.key(config.seed)
    self.checkpoint_meta = captioner_stage.checkpoint_meta("xe", self.cap_config)
    self.p_step = make_p_xe_step(self.cap_config, self.pmap_devices)
    self.step_rng = jax.random.fold_in(self.rng, 1)

  def initial_state(self) -> TrainState:
    params = captioner_lib.init_params(self.cap_config, jax.random.fold_in(self.rng, 0))
    init_from = self.config.xe.get("init_from")
    if init_from:
      source = checkpoints.StageCheckpoints(os.path.join(init_from, "checkpoints"),
                                            self.checkpoint_meta)
      try:
        params = source.restore_best(params)
      finally:
        source.close()
    return TrainState.create(apply_fn=None, params=params, tx=self.tx)

  def gather(self, rows):
    train = self.dataset["train"]
    return {"fc_feats": train.fc_feats[rows], "labels": train.labels[rows]}

  def train_step(self, placed, batch, step: int):
    xcfg = self.config.xe
    ss_prob = scheduled_sampling_prob(step // self.steps_per_epoch, xcfg.ss_start_epoch,
                                      xcfg.ss_increase_every_epochs, xcfg.ss_increase_prob,
                                      xcfg.ss_max_prob)
    return self.p_step(placed, batch, self.step_keys(self.step_rng, step),
                       jnp.full((len(self.devices),), ss_prob, jnp.float32))

  def progress_values(self, scalars: dict, done: int) -> dict:
    scalars["train/epoch"] = done / self.steps_per_epoch
    return {"loss": scalars["train/loss"], "epoch": scalars["train/epoch"]}

  def evaluate(self, state, done: int) -> training.Evaluation:
    captions = self.val_captions(state.params)
    score = evaluation.cider(self.dataset["val"], captions)
    return training.Evaluation(score=score, scalars={"val/cider": score},
                               summary=f"val CIDEr {score:.3f}", example=captions[0])


def train(config, dataset, stage_dir: str, *,
          max_steps_this_run: int | None = None) -> training.StageResult:
  """Runs, resumes or reports finished the XE stage; the result holds the best params.

  Start order: the latest checkpoint in `stage_dir`, else `config.xe.init_from` (a stage
  directory whose best checkpoint seeds the params), else random init.
  """
  return training.train(XETask(config, dataset, stage_dir),
                        max_steps_this_run=max_steps_this_run)


def best_params(config, vocab_size: int, stage_dir: str) -> Any:
  """The params of the best checkpoint of a finished XE stage in `stage_dir`.

  Raises:
    FileNotFoundError: the stage has no best checkpoint (it has not run or not evaluated yet).
  """
  cap_config = captioner_stage.captioner_config(config, vocab_size)
  params = evaluation.best_params(stage_dir, cap_config,
                                  captioner_stage.checkpoint_meta("xe", cap_config))
  if params is None:
    raise FileNotFoundError(f"No finished XE stage in {stage_dir} (no best checkpoint): run the "
                            "xe stage first (add it to --config.stages).")
  return params
