"""`validate(config)`: every value a run depends on is checked before anything runs.

launch.py calls it on the resolved config (after the command-line overrides) and prints each
problem on one line naming the field, the value found and what is allowed, instead of failing
hours later (a baseline read when SCST first compiles) or never (a negative batch size that
silently trains on other batches, NaN from a one-sample mean baseline). It also normalises the
name lists: `--config.stages=xe,eval` arrives as ('xe,eval',) and leaves as ('xe', 'eval').
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections

import scorers
from vlprobe_jax import stages as stages_lib

ENTRY_POINTS = ("stages", "analysis", "bench_reward", "rehearsal")


class ConfigError(ValueError):
  """The config holds values the run cannot use; one line per problem."""


class _Checker:
  """Collects problems as 'config.<field>=<value>: <what is allowed>'."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.problems: list[str] = []

  def get(self, field: str) -> Any:
    node = self.config
    for part in field.split("."):
      node = node[part]
    return node

  def has(self, field: str) -> bool:
    node = self.config
    for part in field.split("."):
      if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
        return False
      node = node[part]
    return True

  def fail(self, field: str, allowed: str) -> None:
    value = self.get(field) if self.has(field) else "(missing)"
    self.problems.append(f"config.{field}={value!r}: {allowed}")

  def check(self, field: str, ok: Callable[[Any], bool], allowed: str) -> None:
    if not self.has(field):
      self.problems.append(f"config.{field} is missing: {allowed}")
      return
    try:
      good = ok(self.get(field))
    except (TypeError, ValueError):
      good = False
    if not good:
      self.fail(field, allowed)

  def int_at_least(self, field: str, low: int) -> None:
    self.check(field, lambda v: _is_int(v) and v >= low, f"expected an integer >= {low}")

  def positive(self, field: str) -> None:
    self.check(field, lambda v: _is_number(v) and v > 0, "expected a number > 0")

  def at_least(self, field: str, low: float) -> None:
    self.check(field, lambda v: _is_number(v) and v >= low, f"expected a number >= {low}")

  def fraction(self, field: str, high_open: bool = False) -> None:
    bound = "< 1" if high_open else "<= 1"
    self.check(field, lambda v: _is_number(v) and 0 <= v and (v < 1 if high_open else v <= 1),
               f"expected a number >= 0 and {bound}")

  def one_of(self, field: str, choices) -> None:
    self.check(field, lambda v: v in choices, f"expected one of {', '.join(map(repr, choices))}")

  def names(self, field: str, known, allow_empty: bool) -> None:
    """Normalises a list of names (comma strings allowed) in place and checks each."""
    if not self.has(field):
      return
    value = self.get(field)
    items = [value] if isinstance(value, str) else list(value or ())
    names = tuple(n.strip() for item in items for n in str(item).split(",") if n.strip())
    parent, _, leaf = field.rpartition(".")
    (self.get(parent) if parent else self.config)[leaf] = names
    unknown = [n for n in names if n not in known]
    if unknown:
      self.fail(field, f"unknown {', '.join(map(repr, unknown))}; expected names from "
                       f"{', '.join(known)}, separated by commas")
    elif not names and not allow_empty:
      self.fail(field, f"expected one or more of {', '.join(known)}, separated by commas")

  def existing_path(self, field: str, what: str) -> None:
    self.check(field, lambda v: not v or os.path.exists(v), f"{what} does not exist")


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks `config` and normalises its name lists in place; returns it.

  Raises:
    ConfigError: one line per problem.
  """
  checker = _Checker(config)
  checker.one_of("entry", ENTRY_POINTS)
  entry = config.get("entry")
  with config.unlocked():
    if entry == "stages":
      _check_stages(checker)
    elif entry == "analysis":
      _check_analysis(checker)
    elif entry == "bench_reward":
      _check_bench(checker)
    elif entry == "rehearsal":
      _check_rehearsal(checker)
  if checker.problems:
    raise ConfigError("\n".join(checker.problems))
  return config


def _check_training_block(c: _Checker, block: str) -> None:
  """What XE and SCST share: the step size, the batch, the length and the cadence."""
  c.positive(f"{block}.lr")
  c.at_least(f"{block}.grad_clip", 0)
  _check_batch(c, f"{block}.images_per_batch")
  c.int_at_least(f"{block}.total_steps", 0)
  if c.has(f"{block}.total_steps") and not c.get(f"{block}.total_steps"):
    c.int_at_least(f"{block}.epochs", 1)
  for field in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps"):
    c.int_at_least(f"{block}.{field}", 1)
  c.int_at_least(f"{block}.keep_checkpoints", 1)


def _check_batch(c: _Checker, field: str) -> None:
  """A global image batch: positive, split evenly over every device of every process."""
  c.int_at_least(field, 1)
  value = c.get(field) if c.has(field) else None
  devices = jax.device_count()
  if _is_int(value) and value >= 1 and value % devices:
    c.fail(field, f"expected a multiple of the {devices} devices "
                  f"({jax.process_count()} process(es) x {jax.local_device_count()}), so that "
                  "every device gets the same share")
  world = c.config.data.get("world") if c.has("data.world") else None
  if world is not None and _is_int(value) and _is_int(world.get("num_train")) and (
      value > world.num_train):
    c.fail(field, f"expected at most the {world.num_train} training images "
                  "(data.world.num_train)")


def _check_stages(c: _Checker) -> None:
  config = c.config
  c.int_at_least("seed", 0)
  c.check("workdir", lambda v: isinstance(v, str) and v, "expected a directory path")
  c.names("stages", stages_lib.STAGES, allow_empty=False)
  c.names("scorers", scorers.names(), allow_empty=True)
  _check_data(c)
  for field in ("fc_dim", "embed_size", "rnn_size"):
    c.int_at_least(f"captioner.{field}", 1)
  c.fraction("captioner.dropout", high_open=True)
  c.one_of("captioner.dtype", ("float32", "bfloat16"))
  _check_training_block(c, "xe")
  c.int_at_least("xe.lr_decay_every_epochs", 0)
  c.check("xe.lr_decay_rate", lambda v: _is_number(v) and 0 < v <= 1,
          "expected a number > 0 and <= 1")
  c.int_at_least("xe.ss_start_epoch", -1)
  c.int_at_least("xe.ss_increase_every_epochs", 1)
  c.fraction("xe.ss_increase_prob")
  c.fraction("xe.ss_max_prob")
  c.existing_path("xe.init_from", "the XE stage directory to start from")
  c.one_of("eval.method", ("greedy", "beam"))
  c.int_at_least("eval.beam_size", 1)
  c.int_at_least("eval.max_length", 1)
  c.int_at_least("eval.batch_size", 1)
  if "scst" in config:
    _check_scst(c)
  if "scorer_checkpoints" in config:
    for name in config.scorer_checkpoints:
      c.existing_path(f"scorer_checkpoints.{name}", "the checkpoint")
  if "scorer_dtype" in config:
    c.one_of("scorer_dtype", ("", "float32", "bfloat16"))
  if "scorer_gelu" in config:
    c.one_of("scorer_gelu", ("exact", "tanh"))
  if "scorer_pretrain" in config:
    for field in ("steps", "warmup_steps"):
      c.int_at_least(f"scorer_pretrain.{field}", 1 if field == "steps" else 0)
    c.int_at_least("scorer_pretrain.batch_size", 2)
    c.positive("scorer_pretrain.lr")
    c.int_at_least("scorer_pretrain.log_every_steps", 1)
    c.int_at_least("scorer_pretrain.checkpoint_every_steps", 1)
    c.one_of("scorer_pretrain.feature_norm", ("standard", "none"))


def _check_scst(c: _Checker) -> None:
  config = c.config
  c.one_of("scst.scorer", tuple(scorers.names()))
  _check_training_block(c, "scst")
  c.one_of("scst.baseline", ("greedy", "mean"))
  c.int_at_least("scst.num_samples", 1)
  if config.scst.get("baseline") == "mean" and config.scst.get("num_samples") == 1:
    c.fail("scst.num_samples", "the mean baseline compares each sample with the mean of the "
                               "other samples of its image, so it needs at least 2 (or use "
                               "scst.baseline=greedy)")
  if c.has("scst.policy_gradient"):  # absent in configs written before it
    c.one_of("scst.policy_gradient", ("replay", "sampling"))
  c.positive("scst.temperature")
  c.int_at_least("scst.max_length", 1)


def _check_data(c: _Checker) -> None:
  c.one_of("data.name", ("synthetic", "coco"))
  name = c.config.data.get("name")
  if name == "synthetic":
    for field in ("num_train", "num_val", "num_test"):
      c.int_at_least(f"data.world.{field}", 1)
  elif name == "coco":
    data = c.config.data
    c.one_of("data.source", ("karpathy_json", "tfds"))
    c.one_of("data.on_error", ("stop", "skip"))
    c.int_at_least("data.max_images", 0)
    c.int_at_least("data.count_threshold", 0)
    c.int_at_least("data.max_length", 1)
    c.int_at_least("data.captions_per_image", 1)
    if data.get("source") == "karpathy_json":
      c.check("data.karpathy_json", bool, "expected the path of dataset_coco.json (or "
                                          "data.source='tfds')")
      c.existing_path("data.karpathy_json", "the Karpathy split file")
    c.check("data.fc_store", bool, "expected the path of an fc feature store (python -m "
                                   "vlprobe_jax.data.feature_store build --kind fc ...)")
    for field in ("fc_store", "region_store", "clip_store", "pixel_store", "image_dir"):
      c.existing_path(f"data.{field}", "that path")


def _check_analysis(c: _Checker) -> None:
  c.names("scorers", scorers.names(), allow_empty=True)
  for field in ("runs", "captions"):
    for n, path in enumerate(c.config.get(field) or ()):
      if not os.path.exists(path):
        c.problems.append(f"config.{field}[{n}]={path!r}: that path does not exist")
  if not c.config.get("runs") and not c.config.get("captions"):
    c.fail("runs", "expected finished workdirs (runs=<dir>) and/or captions files "
                   "(captions=<file>) to analyse")
  for field in ("references", "lm_corpus", "spice_dir"):
    c.existing_path(field, "that path")
  c.one_of("bad_captions", ("refuse", "skip"))
  c.one_of("tokenizer", ("auto", "ptb", "lower"))
  c.positive("java_timeout_s")
  c.int_at_least("seed", 0)
  c.int_at_least("top_k", 1)


def _check_bench(c: _Checker) -> None:
  c.one_of("scorer", tuple(scorers.names()))
  c.one_of("scorer_size", ("default", "tiny"))
  c.one_of("dtype", ("auto", "float32", "bfloat16"))
  c.one_of("baseline", ("greedy", "mean"))
  c.check("images_per_batch", lambda v: all(int(x) > 0 for x in str(v).split(",")),
          "expected positive integers separated by commas, e.g. '50,250,1000'")
  c.int_at_least("num_samples", 1)
  c.int_at_least("max_length", 1)
  for field in ("warmup", "repeats", "steps_per_repeat", "pool_batches"):
    c.int_at_least(field, 1)
  c.existing_path("scorer_checkpoint", "the checkpoint")
  c.one_of("captioner.dtype", ("float32", "bfloat16"))
  for field, choices in (("attention", ("auto", "xla", "cudnn")), ("gelu", ("exact", "tanh")),
                         ("policy_gradient", ("replay", "sampling"))):
    if c.has(field):
      c.one_of(field, choices)
  if c.has("length_groups"):
    c.int_at_least("length_groups", 1)
  if c.has("variants"):
    from vlprobe_jax.bench import build  # pylint: disable=g-import-not-at-top
    try:
      build.parse_variants(c.config.variants)
    except ValueError as error:
      c.problems.append(str(error))


def _check_rehearsal(c: _Checker) -> None:
  """configs/rehearsal.py: the parts, the world's size, the checkpoint formats, the run."""
  from vlprobe_jax.bench import rehearsal  # pylint: disable=g-import-not-at-top
  from vlprobe_jax.bench import rehearsal_checkpoints  # pylint: disable=g-import-not-at-top
  c.check("data_dir", lambda v: isinstance(v, str) and v, "expected a directory path")
  c.names("parts", rehearsal.PARTS, allow_empty=False)
  c.check("world.scale", lambda v: _is_number(v) and 0 < v <= 1,
          "expected a fraction of COCO's 123,287 images, > 0 and <= 1")
  c.check("world.regions_fraction", lambda v: _is_number(v) and 0 < v <= 1,
          "expected the fraction of the images that get regions, > 0 and <= 1")
  for field in ("captions_per_image", "target_vocab", "num_word_types"):
    c.int_at_least(f"world.{field}", 1)
  c.int_at_least("world.count_threshold", 0)
  c.fraction("world.multi_piece_fraction")
  c.check("stores.region_dtypes", lambda v: v and set(v) <= {"float16", "float32"},
          "expected float16 and/or float32")
  c.names("checkpoints.formats", tuple(rehearsal_checkpoints.FORMATS), allow_empty=True)
  c.one_of("checkpoints.size", ("base", "tiny"))
  for field in ("batch_size", "steps", "prefetch"):
    c.int_at_least(f"pipeline.{field}", 1)
  c.check("pipeline.threads", lambda v: v and all(_is_int(t) and t >= 1 for t in v),
          "expected thread counts >= 1")
  c.one_of("run.checkpoint_format", tuple(rehearsal_checkpoints.FORMATS))
  c.one_of("run.region_dtype", ("float16", "float32"))
  for field in ("rnn_size", "images_per_batch", "xe_steps", "checkpoint_every_steps",
                "eval_batch_size"):
    c.int_at_least(f"run.{field}", 1)
  c.int_at_least("run.kill_after_step", 1)
  if c.has("run.kill_after_step") and c.has("run.scst_steps") and _is_int(
      c.config.run.scst_steps) and c.config.run.scst_steps <= c.config.run.get("kill_after_step"):
    c.fail("run.scst_steps", "expected more SCST steps than run.kill_after_step (the kill comes "
                             "mid-SCST)")
  fmt = c.config.run.get("checkpoint_format")
  if fmt in rehearsal_checkpoints.FORMATS and (
      rehearsal_checkpoints.FORMATS[fmt][0] != c.config.run.get("scorer")):
    c.fail("run.checkpoint_format", f"expected a format of the {c.config.run.get('scorer')!r} "
                                    "scorer (run.scorer)")
