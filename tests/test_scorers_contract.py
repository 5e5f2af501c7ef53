"""Every registered scorer through the contract: tiny config, init, image_inputs, score.

Parametrized over the registry, so a new scorer gets these checks by being registered.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scorers
from scorers import registry
from scorers import tokens


def _images(n: int) -> dict:
  rng = np.random.default_rng(0)
  boxes = np.sort(rng.uniform(0, 1, size=(n, 5, 2, 2)), axis=2).transpose(0, 1, 3, 2)
  return {"pixels": rng.integers(0, 256, size=(n, 40, 48, 3), dtype=np.uint8),
          "region_feats": rng.normal(size=(n, 5, 2048)).astype(np.float32),
          "region_boxes": boxes.reshape(n, 5, 4).astype(np.float32),
          "region_mask": np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]][:n],
                                  np.int32)}


@pytest.mark.parametrize("name", scorers.names())
def test_contract(name):
  module = scorers.get(name)
  assert isinstance(module, registry.Scorer) and module.name == name
  assert dataclasses.is_dataclass(module.tiny_config())
  assert type(module.default_config()) is type(module.tiny_config())
  config = module.tiny_config()
  hash(config)  # static argument of jitted functions
  tokenizer = module.tokenizer(config)
  config = dataclasses.replace(config, vocab_size=len(tokenizer))
  params = module.init_params(config, jax.random.key(0))
  images = module.image_inputs(params, config, _images(3))
  assert all(leaf.shape[0] == 3 for leaf in jax.tree_util.tree_leaves(images))

  fmt = module.text_format(config)
  assert isinstance(fmt, tokens.TextFormat)
  captions = ["a red circle above a blue square", "a dog", ""]
  encoded = tokenizer([fmt.text(c) for c in captions], truncation=True,
                      max_length=fmt.max_length, padding="longest", return_tensors="np")
  ids = jnp.asarray(encoded["input_ids"], jnp.int32)
  mask = jnp.asarray(encoded["attention_mask"], jnp.int32)
  score = jax.jit(lambda p, i, m, im: module.score(p, config, i, m, im))(params, ids, mask, images)
  assert score.shape == (3,) and score.dtype == jnp.float32
  assert np.all(np.isfinite(score))
  low = 0.0 if module.objective == "itm" else -100.0
  assert np.all(score >= low - 1e-3) and np.all(score <= 100.0 + 1e-3)


@pytest.mark.parametrize("name", scorers.names())
def test_pretrain_loss_has_gradients(name):
  module = scorers.get(name)
  config = module.tiny_config()
  tokenizer = module.tokenizer(config)
  config = dataclasses.replace(config, vocab_size=len(tokenizer))
  params = module.init_params(config, jax.random.key(0))
  fmt = module.text_format(config)
  encoded = tokenizer([fmt.text(c) for c in ["a red circle", "two blue squares", "a star"]],
                      truncation=True, max_length=fmt.max_length, padding="longest",
                      return_tensors="np")
  batch = {"text_ids": np.asarray(encoded["input_ids"], np.int32),
           "text_mask": np.asarray(encoded["attention_mask"], np.int32),
           "images": _images(3), "match": np.array([1, 0, 1], np.int32)}
  # Jitted: op by op, the backward pass of a BERT stack takes a minute on a CPU. An rbg key
  # compiles the dropout masks much faster on a CPU than the default threefry.
  rng = jax.random.key(1, impl="rbg")
  (loss, metrics), grads = jax.jit(jax.value_and_grad(
      lambda p: module.pretrain_loss(p, config, batch, rng), has_aux=True))(params)
  assert np.isfinite(loss)
  assert any(key.startswith("accuracy") for key in metrics), metrics
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree_util.tree_leaves(grads))


def test_unknown_scorer_lists_known_ones():
  with pytest.raises(KeyError, match="Known scorers: blip_itm, clip, lxmert, rosita, siglip, "
                     "uniter, vilbert"):
    scorers.get("blip2")


def test_a_module_without_a_scorer_object_is_refused():
  registry.register("not_a_scorer", "tests.helpers")
  try:
    with pytest.raises(TypeError, match=r"tests.helpers.SCORER must be a scorers.registry.Scorer"):
      scorers.get("not_a_scorer")
  finally:
    registry._MODULES.pop("not_a_scorer")  # pylint: disable=protected-access


def test_the_contract_checks_its_own_fields():
  fields = {f.name: None for f in dataclasses.fields(registry.Scorer) if f.name != "embed_texts"}
  with pytest.raises(ValueError, match="match_index=2"):
    registry.Scorer(**dict(fields, name="x", objective="itm", match_index=2, image_kind="regions"))
  with pytest.raises(ValueError, match="needs embed_texts"):
    registry.Scorer(**dict(fields, name="x", objective="contrastive", image_kind="pixels"))
