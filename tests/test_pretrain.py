"""Tests of vlprobe_jax/scorer_pretrain.py and scorer_pairs.py: negatives, the folded feature transform,
a few steps, evaluation and the cache."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import scorers
from configs import common
from vlprobe_jax import scorer_pairs as pretrain_pairs
from vlprobe_jax import scorer_pretrain as pretrain
from vlprobe_jax import training
from vlprobe_jax.data import synthetic

# ITM scorers that read region features (BLIP's ITM head reads pixels: nothing to fold).
ITM_SCORERS = [name for name in scorers.names() if scorers.get(name).objective == "itm"
               and scorers.get(name).image_kind == "regions"]


@pytest.fixture(scope="module")
def world():
  return synthetic.make_world(ml_collections.ConfigDict(dict(num_train=60, num_val=20,
                                                             num_test=20)))


def _config(name: str, **pretrain_fields):
  config = common.scst_config("runlocal", name)
  config.data.world.update(num_train=60, num_val=20, num_test=20)
  config.scorer_pretrain.update(**{"steps": 2, "batch_size": 8, "log_every_steps": 1,
                                  **pretrain_fields})
  return config


# ------------------------------------------------------------------------------------------
# Negatives.


def _background(split, i):
  return int(split.scenes.background[i])


def _objects(split, i):
  scenes = split.scenes
  return {(int(scenes.shape[i, k]), int(scenes.colour[i, k])) for k in range(scenes.num_objects[i])}


def test_paired_batch_negatives_are_not_references(world):
  split = world["train"]
  sampler = pretrain_pairs.PairSampler(split, world.vocab.words)
  rng = np.random.default_rng(0)
  seen = set()
  for _ in range(20):
    images, captions, match, kinds = sampler.sample(
        rng, 16, {"random": 0.5, "related": 0.25, "swap": 0.25})
    assert len(images) == len(captions) == len(match) == len(kinds) == 16
    # Paired: each image once with a positive, once with a negative.
    assert sorted(images[:8]) == sorted(images[8:])
    np.testing.assert_array_equal(match, [1] * 8 + [0] * 8)
    for i, caption, m, kind in zip(images, captions, match, kinds):
      assert (kind == "positive") == bool(m)
      assert (caption in split.references[i]) == bool(m), (i, caption, kind)
      seen.add(kind)
      if kind == "random":  # The positive of another image of the batch.
        assert caption in captions[:8]
      if kind == "related":  # Some image with this caption shares a background or object.
        owners = [j for j, refs in enumerate(split.references) if caption in refs]
        assert any(_background(split, j) == _background(split, i)
                   or _objects(split, j) & _objects(split, i) for j in owners)
  assert seen == set(pretrain_pairs.KINDS)


def test_unpaired_batch_has_distinct_images(world):
  sampler = pretrain_pairs.PairSampler(world["train"])
  images, captions, match, _ = sampler.sample(np.random.default_rng(1), 32, {"random": 1.0},
                                              paired=False)
  assert len(set(images.tolist())) == 32
  assert 0 < match.sum() < 32
  for i, caption, m in zip(images, captions, match):
    assert (caption in world["train"].references[i]) == bool(m)


def test_swap_changes_exactly_one_visual_word(world):
  sampler = pretrain_pairs.PairSampler(world["train"], world.vocab.words)
  classes = pretrain_pairs.swap_classes()
  rng = np.random.default_rng(2)
  swapped_any = 0
  for refs in world["train"].references:
    for ref in refs:
      swapped = sampler.swap(ref, rng)
      if swapped is None:
        continue
      swapped_any += 1
      old, new = ref.split(), swapped.split()
      assert len(old) == len(new)
      diff = [k for k, (a, b) in enumerate(zip(old, new)) if a != b]
      assert len(diff) == 1, (ref, swapped)
      a, b = old[diff[0]], new[diff[0]]
      assert classes[a][0] == classes[b][0] and classes[a][1] != classes[b][1], (a, b)
      assert b in world.vocab.words
      if diff[0] > 0 and old[diff[0] - 1] in ("a", "an"):  # Article still agrees.
        assert (a[0] in "aeiou") == (b[0] in "aeiou")
  assert swapped_any > 100


def test_sampling_is_deterministic(world):
  sampler = pretrain_pairs.PairSampler(world["train"], world.vocab.words)
  weights = {"random": 0.5, "related": 0.25, "swap": 0.25}
  first = sampler.sample(np.random.default_rng(5), 8, weights)
  second = sampler.sample(np.random.default_rng(5), 8, weights)
  np.testing.assert_array_equal(first[0], second[0])
  np.testing.assert_array_equal(first[2], second[2])
  assert first[1] == second[1] and first[3] == second[3]


# ------------------------------------------------------------------------------------------
# Settings and initialisation.


def test_settings_apply_per_scorer_overrides():
  block = common.scorer_pretrain_block()
  block.per_scorer.uniter = {"lr": 1e-2, "model": {"hidden_size": 48}}
  s = pretrain.settings(block, "uniter")
  assert s["lr"] == 1e-2 and s["model"]["hidden_size"] == 48
  assert pretrain.settings(block, "rosita")["lr"] == block.lr
  config = pretrain.world_config(scorers.get("uniter"), block)
  assert config.hidden_size == 48 and config.vocab_size == 28996
  block.per_scorer.uniter = {"learning_rate": 1.0}
  with pytest.raises(ValueError, match="learning_rate"):
    pretrain.settings(block, "uniter")
  block.per_scorer.uniter = {"model": {"width": 3}}
  with pytest.raises(ValueError, match="width"):
    pretrain.world_config(scorers.get("uniter"), block)


def test_bert_init():
  params = {"layer": {"kernel": jnp.ones((64, 64)), "bias": jnp.ones(64)},
            "LayerNorm": {"scale": jnp.zeros(64), "bias": jnp.ones(64)},
            "embed": {"embedding": jnp.ones((100, 64))}, "logit_scale": jnp.full((), 3.0)}
  out = pretrain.bert_init(params, jax.random.key(1), 0.02)
  assert jax.tree.structure(out) == jax.tree.structure(params)
  for leaf in (out["layer"]["kernel"], out["embed"]["embedding"]):
    assert abs(float(jnp.std(leaf)) - 0.02) < 0.002 and abs(float(jnp.mean(leaf))) < 0.002
  assert not np.any(np.asarray(out["layer"]["bias"]))
  assert not np.any(np.asarray(out["LayerNorm"]["bias"]))
  np.testing.assert_array_equal(out["LayerNorm"]["scale"], 1.0)
  assert float(out["logit_scale"]) == 3.0  # Not a kernel, embedding, bias or scale: kept.


# ------------------------------------------------------------------------------------------
# The region-feature transform, folded into the first layer.


@pytest.mark.parametrize("name", ITM_SCORERS)
def test_folded_transform_reads_raw_features(world, name):
  module = scorers.get(name)
  config = dataclasses.replace(module.tiny_config(), vocab_size=100, dropout_rate=0.0)
  params = jax.jit(module.init_params, static_argnums=0)(config, jax.random.key(0))
  images = world["val"].scorer_images(np.arange(6))
  rng = np.random.default_rng(0)
  ids = rng.integers(1, 100, size=(6, 7)).astype(np.int32)
  mask = (np.arange(7)[None] < rng.integers(3, 8, size=(6, 1))).astype(np.int32)
  logits = jax.jit(lambda p, x: module.model(config).apply(
      {"params": p}, ids, mask, module.image_inputs(p, config, x))[0])
  transform = pretrain.feature_transform(world["train"], "standard")
  normalised = dict(images, region_feats=np.asarray(
      pretrain.apply_feature_transform(jnp.asarray(images["region_feats"]), transform)))
  expected = logits(params, normalised)
  folded = pretrain.fold_feature_transform(params, transform)
  # Same function of the raw features, up to float32 rounding of 2048-term sums.
  np.testing.assert_allclose(logits(folded, images), expected, atol=2e-3, rtol=1e-3)
  # The map matters: unfolded params on raw features give other logits.
  assert np.max(np.abs(logits(params, images) - expected)) > 1e-2


def test_fold_needs_one_feature_layer():
  with pytest.raises(ValueError, match="exactly one Dense kernel"):
    pretrain.fold_feature_transform({"a": {"kernel": jnp.zeros((4, 2)), "bias": jnp.zeros(2)}},
                                    {"mean": np.zeros(8), "scale": np.ones(8)})


# ------------------------------------------------------------------------------------------
# A few steps, evaluation and the cache.


# One layer per stack: compiling dominates these tests.
_ONE_LAYER = {"rosita": {"num_layers": 1}, "clip": {"text_layers": 1, "vision_layers": 1}}


@pytest.mark.parametrize("name", sorted(_ONE_LAYER))
def test_a_few_steps_run_and_change_params(world, name, tmp_path):
  module = scorers.get(name)
  config = _config(name, model=_ONE_LAYER[name])
  scorer_config, params, summary = pretrain.pretrain(config, module, world, str(tmp_path))
  initial = pretrain.initial_params(module, scorer_config,
                                    pretrain.settings(config.scorer_pretrain, name))
  changed = jax.tree.leaves(jax.tree.map(
      lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), params, initial))
  # Most leaves moved (the feature fold alone touches one Dense layer).
  assert np.mean(changed) > 0.5, np.mean(changed)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(params))
  assert summary["steps"] == 2 and summary["cpu_seconds"] > 0
  assert 0.0 <= summary["val_accuracy"] <= 1.0
  assert summary["chance"] == (0.5 if module.objective == "itm" else 1.0 / 20)
  keys = set(summary["val"])
  assert "swap_ranking" in keys
  if module.objective == "itm":
    assert {f"accuracy/{k}" for k in pretrain_pairs.KINDS} <= keys


def test_interrupted_pretraining_resumes_to_the_same_params(world, tmp_path):
  """Pretraining runs through the one loop: killed after a step, it resumes from its checkpoint
  and replays the pair sampler's draws, ending where an uninterrupted run ends."""
  module = scorers.get("rosita")
  config = _config("rosita", model=_ONE_LAYER["rosita"], steps=3, checkpoint_every_steps=1)
  key = pretrain._cache_key(config, module)  # pylint: disable=protected-access

  def task(directory):
    return pretrain.PretrainTask(config, module, world, str(directory), key)

  whole = training.train(task(tmp_path / "whole")).params
  assert training.train(task(tmp_path / "cut"), max_steps_this_run=1).params is None
  resumed = training.train(task(tmp_path / "cut")).params
  jax.tree.map(np.testing.assert_array_equal, resumed, whole)
  assert not any(np.all(np.asarray(a) == np.asarray(b)) for a, b in zip(
      jax.tree.leaves(resumed), jax.tree.leaves(pretrain.initial_params(
          module, task(tmp_path / "x").scorer_config, pretrain.settings(
              config.scorer_pretrain, "rosita")))) if np.size(a) > 1)


def test_cache_round_trip(world, tmp_path, monkeypatch):
  module = scorers.get("uniter")
  config = _config("uniter", model={"hidden_size": 16, "intermediate_size": 32, "num_layers": 1})
  config_a, params_a, source = pretrain.pretrained_for_world(config, module, world,
                                                             str(tmp_path))
  assert source == str(tmp_path) and config_a.hidden_size == 16

  def no_training(*args, **kwargs):
    raise AssertionError("the cached scorer should have been loaded")

  monkeypatch.setattr(pretrain, "pretrain", no_training)
  config_b, params_b, _ = pretrain.pretrained_for_world(config, module, world, str(tmp_path))
  assert config_b == config_a
  jax.tree.map(np.testing.assert_array_equal, params_b, params_a)
  # Other settings for this scorer: the cache is stale and training runs again.
  config.scorer_pretrain.per_scorer.uniter = {"lr": 1e-4}
  with pytest.raises(AssertionError, match="should have been loaded"):
    pretrain.pretrained_for_world(config, module, world, str(tmp_path))
  # Settings of another scorer do not touch this one's cache.
  config.scorer_pretrain.per_scorer.uniter = {}
  config.scorer_pretrain.per_scorer.rosita = {"lr": 1e-4}
  pretrain.pretrained_for_world(config, module, world, str(tmp_path))


def test_evaluate_separates_a_perfect_scorer(world, monkeypatch):
  """A scorer that knows the references gets accuracy 1; one that scores 50 gets 0.5."""
  module = scorers.get("lxmert")
  split = world["val"]
  config = pretrain.world_config(module)

  def knows_references(score_fn, params_, encoder_, captions, inputs, batch_size=250):
    del score_fn, params_, encoder_, batch_size
    return np.asarray([100.0 if c in split.references[i] else 0.0
                       for c, i in zip(captions, inputs["index"])])

  monkeypatch.setattr(pretrain, "_scores", knows_references)
  monkeypatch.setattr(pretrain, "_image_inputs",
                      lambda m, c, p, s, index: {"index": np.asarray(index)})
  metrics = pretrain.evaluate(module, config, None, split)
  assert metrics["accuracy"] == 1.0 and metrics["swap_ranking"] == 1.0
  for kind in pretrain_pairs.KINDS:
    assert metrics[f"accuracy/{kind}"] == 1.0
  monkeypatch.setattr(pretrain, "_scores", lambda *args, **kwargs: np.full(len(args[3]), 50.0))
  metrics = pretrain.evaluate(module, config, None, split)
  assert metrics["accuracy"] == 0.5 and metrics["swap_ranking"] == 0.0
