"""What the two captioner stages (XE, SCST) share: the captioner config of a run, and the
parts of their `training.Task`: the state replicated over the local devices, batches of images in
shuffled epochs through the one pipeline, greedy captions of the val split for the eval."""

from __future__ import annotations

import dataclasses

import jax

from vlprobe_jax import captioner as captioner_lib
from vlprobe_jax import devices as devices_lib
from vlprobe_jax import evaluation
from vlprobe_jax.data import pipeline


def captioner_config(config, vocab_size: int) -> captioner_lib.CaptionerConfig:
  """The CaptionerConfig of a run config (its `captioner` fields) and a vocabulary size."""
  fields = dict(config.captioner)
  fields["vocab_size"] = vocab_size
  return captioner_lib.CaptionerConfig(**fields)


def checkpoint_meta(stage: str, cap_config: captioner_lib.CaptionerConfig, **more) -> dict:
  """What a captioner stage's checkpoints are of (checked when they are restored).

  The params are float32 whatever the compute dtype (`captioner.dtype`), so the record keeps
  "dtype" at float32: a bfloat16-compute SCST run starts from a float32-compute XE checkpoint,
  and workdirs written before the compute dtype could change still match.
  """
  captioner = dict(dataclasses.asdict(cap_config), dtype="float32")
  return {"stage": stage, "captioner": captioner, **more}


class CaptionerTask:
  """The parts of a pmapped captioner stage: state replicated over the local devices, batches
  of images in shuffled epochs through the one pipeline, eval on the val split."""

  def __init__(self, config, dataset, stage_dir: str, block):
    self.config, self.dataset, self.stage_dir, self.block = config, dataset, stage_dir, block
    self.cap_config = captioner_config(config, dataset.vocab.size)
    self.devices = jax.local_devices()  # where this process places its state and batches
    self.pmap_devices = devices_lib.pmap_devices()  # what the pmapped step reduces over
    self.rows = pipeline.EpochRows(len(dataset["train"]), block.images_per_batch,
                                   seed=config.seed)
    self.steps_per_epoch = self.rows.steps_per_epoch
    self.total_steps = block.get("total_steps") or block.epochs * self.steps_per_epoch
    self.log_every_steps = block.log_every_steps
    self.eval_every_steps = block.eval_every_steps
    self.checkpoint_every_steps = block.checkpoint_every_steps
    self.keep_checkpoints = block.get("keep_checkpoints", 2)

  def gather(self, rows):
    raise NotImplementedError

  def batches(self, start_step: int, stop_step: int):
    return pipeline.BatchIterator(self.rows.source(self.gather), start_step=start_step,
                                  stop_step=stop_step, devices=self.devices)

  def place(self, state):
    return devices_lib.replicate(state, self.devices)

  def fetch(self, placed):
    return devices_lib.unreplicate(placed)

  def step_keys(self, rng: jax.Array, step: int) -> jax.Array:
    """[local devices, 2] uint32: this process's device keys of `step`, as raw key data.

    Raw data, not typed key arrays: with several processes pmap turns a typed key argument
    into a host array and copies it to the devices again (a host-to-device transfer that
    SCST's transfer guard refuses); a uint32 array already on the devices is used as it is.
    The random bits are the same.
    """
    return jax.random.key_data(devices_lib.device_keys(
        rng, step, len(self.devices), jax.process_index(), jax.process_count()))

  def val_captions(self, params) -> list[str]:
    return evaluation.split_captions(self.cap_config, params, self.dataset["val"],
                                     self.dataset.vocab, self.config.eval)
