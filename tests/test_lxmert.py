"""Tests for scorers/lxmert.py: parity with transformers' LxmertForPreTraining, both checkpoint
layouts, strict loading, the precomputed image path, bf16, and the ITM pretraining loss."""

import dataclasses
import functools
import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util

from scorers import common
from scorers import lxmert
from scorers import tokens
from scorers import registry
from tests import helpers

# A tiny HF model with every structural feature of the base one (all three stacks, two cross
# layers so their order and the shared cross-attention are exercised, 2048-d regions). Few
# layers because XLA's CPU compile time, not the arithmetic, is what these tests pay for.
HF_SIZES = dict(vocab_size=64, hidden_size=32, num_attention_heads=4, intermediate_size=48,
                l_layers=1, r_layers=1, x_layers=2, num_qa_labels=3, num_object_labels=5,
                num_attr_labels=4, initializer_range=0.2)
TEXT_LENS = (7, 4, 2)    # The batch is padded to 7: two rows carry text padding.
REGION_COUNTS = (5, 3, 1)  # Out of 5 slots: two rows carry region padding.


def _hf_model():
  torch.manual_seed(0)
  model = transformers.LxmertForPreTraining(transformers.LxmertConfig(**HF_SIZES)).eval()
  # HF initialises LayerNorms to 1/0 and biases to 0; perturb every tensor so that a parameter
  # loaded into the wrong place (or transposed wrongly) changes the outputs.
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model


def _inputs(vocab=HF_SIZES["vocab_size"], feat_dim=2048, seed=1):
  rng = np.random.default_rng(seed)
  n, t, r = len(TEXT_LENS), max(TEXT_LENS), max(REGION_COUNTS)
  text_mask = (np.arange(t)[None] < np.array(TEXT_LENS)[:, None]).astype(np.int32)
  ids = rng.integers(5, vocab, (n, t))
  ids[:, 0] = 1  # Stand-ins for [CLS]; the tiny vocab has no 101.
  ids = np.where(text_mask, ids, 0).astype(np.int32)
  x1y1 = rng.uniform(0, 0.5, (n, r, 2))
  boxes = np.concatenate([x1y1, x1y1 + rng.uniform(0.1, 0.5, (n, r, 2))], -1).astype(np.float32)
  images = {"region_feats": rng.normal(size=(n, r, feat_dim)).astype(np.float32),
            "region_boxes": boxes,
            "region_mask": (np.arange(r)[None] < np.array(REGION_COUNTS)[:, None]).astype(np.int32)}
  return ids, text_mask, images


# Jitted once per module: every test below uses the same shapes, so each compiles once.
@functools.partial(jax.jit, static_argnums=1)
def _apply(params, config, *args):
  return lxmert.Model(config).apply({"params": params}, *args)


_image_inputs = jax.jit(lxmert.image_inputs, static_argnums=1)
_score = jax.jit(lxmert.score, static_argnums=1)


def _score_raw(params, config, ids, text_mask, images):
  return _score(params, config, ids, text_mask, _image_inputs(params, config, images))


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
  """(HF model, its save_pretrained directory, our (config, params) loaded from it)."""
  model = _hf_model()
  directory = str(tmp_path_factory.mktemp("lxmert_hf"))
  model.save_pretrained(directory)
  return model, directory, lxmert.load(directory)


def _flat(params):
  return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}


def test_contract_names():
  spec = registry.get("lxmert")
  assert spec is lxmert.SCORER
  assert (spec.name, spec.objective, spec.match_index, spec.image_kind) == (
      "lxmert", "itm", 1, "regions")
  hash(spec.tiny_config())  # Configs are static jit arguments.


def test_default_config_is_the_released_base():
  base = lxmert.default_config()
  assert (base.vocab_size, base.hidden_size, base.num_heads, base.intermediate_size) == (
      30522, 768, 12, 3072)
  assert (base.l_layers, base.r_layers, base.x_layers) == (9, 5, 5)
  assert (base.visual_feat_dim, base.visual_pos_dim, base.max_text_len) == (2048, 4, 20)
  assert lxmert.default_config("base") == base
  with pytest.raises(ValueError, match="unknown variant"):
    lxmert.default_config("large")


def test_hf_config_json_gives_the_sizes(hf_checkpoint):
  _, _, (config, _) = hf_checkpoint
  assert (config.vocab_size, config.hidden_size, config.num_heads, config.intermediate_size) == (
      64, 32, 4, 48)
  assert (config.l_layers, config.r_layers, config.x_layers) == (1, 1, 2)
  assert config.dtype == "float32" and config.max_text_len == 20


def test_parity_with_transformers(hf_checkpoint):
  """Tolerances (fp32): ITM logits and pooled output 1e-5 absolute; hidden states 1e-4."""
  model, _, (config, params) = hf_checkpoint
  ids, text_mask, images = _inputs()
  with torch.no_grad():
    kwargs = dict(input_ids=torch.tensor(ids, dtype=torch.long),
                  visual_feats=torch.tensor(images["region_feats"]),
                  visual_pos=torch.tensor(images["region_boxes"]),
                  attention_mask=torch.tensor(text_mask),
                  visual_attention_mask=torch.tensor(images["region_mask"]))
    ref_logits = model(**kwargs).cross_relationship_score.numpy()
    ref = model.lxmert(**kwargs)
  logits, out = _apply(params, config, ids, text_mask, images)
  np.testing.assert_allclose(logits, ref_logits, atol=1e-5, rtol=0)
  np.testing.assert_allclose(out["pooled_output"], ref.pooled_output.numpy(), atol=1e-5, rtol=0)
  np.testing.assert_allclose(out["language_output"], ref.language_output.numpy(), atol=1e-4,
                             rtol=0)
  np.testing.assert_allclose(out["vision_output"], ref.vision_output.numpy(), atol=1e-4, rtol=0)
  # The pairs must score differently, or the comparison above proves little.
  assert np.ptp(ref_logits[:, 1] - ref_logits[:, 0]) > 0.1
  # The scorer's scale, through the path SCST uses (regions encoded once): 100 x softmax[:, 1].
  expected = 100 * torch.softmax(torch.tensor(ref_logits), -1)[:, 1].numpy()
  np.testing.assert_allclose(_score_raw(params, config, ids, text_mask, images), expected,
                             atol=1e-3, rtol=0)


def test_score_takes_raw_regions_too(hf_checkpoint):
  _, _, (config, params) = hf_checkpoint
  ids, text_mask, images = _inputs()
  inputs = _image_inputs(params, config, images)
  assert inputs["visual_hidden"].shape == (3, 5, config.hidden_size)
  assert inputs["region_mask"].dtype == jnp.int32
  logits, _ = _apply(params, config, ids, text_mask, images)  # Raw regions, all in one.
  np.testing.assert_allclose(_score(params, config, ids, text_mask, inputs),
                             100 * jax.nn.softmax(logits)[:, 1], atol=1e-4, rtol=0)


def test_masked_regions_and_tokens_do_not_change_the_score(hf_checkpoint):
  _, _, (config, params) = hf_checkpoint
  ids, text_mask, images = _inputs()
  base = _score_raw(params, config, ids, text_mask, images)
  noisy = dict(images)
  noisy["region_feats"] = np.where(images["region_mask"][..., None] == 1,
                                   images["region_feats"], 100.0).astype(np.float32)
  noisy_ids = np.where(text_mask == 1, ids, 7).astype(np.int32)
  np.testing.assert_allclose(_score_raw(params, config, noisy_ids, text_mask, noisy), base,
                             atol=1e-4, rtol=0)
  # A real region does change it.
  changed = dict(images, region_feats=images["region_feats"] * 2)
  assert np.abs(_score_raw(params, config, ids, text_mask, changed) - base).max() > 1e-3


def test_original_pth_layout_loads_to_the_same_params(hf_checkpoint, tmp_path, caplog):
  model, _, (config, params) = hf_checkpoint
  # The airsplay layout: `bert.*` instead of `lxmert.*`, saved from DataParallel (`module.`),
  # the tied MLM decoder included.
  state = {"module." + ("bert." + k[len("lxmert."):] if k.startswith("lxmert.") else k): v
           for k, v in model.state_dict().items()}
  assert "module.cls.predictions.decoder.weight" in state
  path = str(tmp_path / "Epoch20_LXRT.pth")
  torch.save(state, path)
  with caplog.at_level(logging.INFO, logger="scorers.common"):
    loaded_config, loaded = lxmert.load(path, config)
  assert loaded_config == config
  assert "answer_head" in caplog.text and "obj_predict_head" in caplog.text
  flat, expected = _flat(loaded), _flat(params)
  assert flat.keys() == expected.keys()
  for key in expected:
    np.testing.assert_array_equal(flat[key], expected[key], err_msg=key)
  # Without a config, a file gets the released base sizes, which this tiny file does not fit.
  with pytest.raises(common.CheckpointMismatch, match="wrong shapes"):
    lxmert.load(path)


def test_pytorch_model_bin_directory(hf_checkpoint, tmp_path):
  model, _, (config, params) = hf_checkpoint
  model.config.save_pretrained(str(tmp_path))
  torch.save(model.state_dict(), str(tmp_path / "pytorch_model.bin"))
  _, loaded = lxmert.load(str(tmp_path))
  np.testing.assert_array_equal(loaded["cls"]["seq_relationship"]["kernel"],
                                params["cls"]["seq_relationship"]["kernel"])


def test_sharded_safetensors_directory(hf_checkpoint, tmp_path):
  from safetensors.torch import save_file
  model, _, (config, params) = hf_checkpoint
  model.config.save_pretrained(str(tmp_path))
  state = {k: v.contiguous() for k, v in model.state_dict().items()
           if k != "cls.predictions.decoder.weight"}  # Tied to the word embeddings.
  keys = sorted(state)
  shards = {"model-00001-of-00002.safetensors": keys[::2],
            "model-00002-of-00002.safetensors": keys[1::2]}
  for name, shard_keys in shards.items():
    save_file({k: state[k] for k in shard_keys}, str(tmp_path / name))
  with open(tmp_path / "model.safetensors.index.json", "w") as f:
    json.dump({"weight_map": {k: name for name, ks in shards.items() for k in ks}}, f)
  _, loaded = lxmert.load(str(tmp_path))
  flat, expected = _flat(loaded), _flat(params)
  for key in expected:
    np.testing.assert_array_equal(flat[key], expected[key], err_msg=key)


@pytest.mark.parametrize("edit, field, listed", [
    ("drop", "missing", "lxmert/encoder/x_layers_1/visual_attention/att/key/bias"),
    ("reshape", "wrong_shapes", "cls.seq_relationship.weight"),
    ("extra", "unexpected", "bert.encoder.x_layers.7.lang_inter.dense.weight"),
])
def test_strict_loading(hf_checkpoint, tmp_path, edit, field, listed):
  model, _, (config, _) = hf_checkpoint
  state = {"bert." + k[len("lxmert."):] if k.startswith("lxmert.") else k: v
           for k, v in model.state_dict().items()}
  if edit == "drop":
    del state["bert.encoder.x_layers.1.visual_attention.att.key.bias"]
  elif edit == "reshape":
    state["cls.seq_relationship.weight"] = torch.zeros(3, 32)
  else:
    state["bert.encoder.x_layers.7.lang_inter.dense.weight"] = torch.zeros(48, 32)
  path = str(tmp_path / "model_LXRT.pth")
  torch.save(state, path)
  with pytest.raises(common.CheckpointMismatch) as error:
    lxmert.load(path, config)
  assert any(listed in item for item in getattr(error.value, field))
  assert listed in str(error.value)


def test_checkpoint_without_the_itm_head_is_refused(hf_checkpoint, tmp_path):
  model, _, (config, _) = hf_checkpoint
  state = {k: v for k, v in model.state_dict().items() if not k.startswith("cls.")}
  path = str(tmp_path / "lxmert_backbone.pth")
  torch.save(state, path)
  with pytest.raises(common.CheckpointMismatch, match="cls/seq_relationship/kernel"):
    lxmert.load(path, config)


def test_bfloat16_scores_stay_close(hf_checkpoint):
  # Measured on this tiny model and batch (CPU): max |bf16 - fp32| = 0.38 score points on the
  # 0-100 scale. The bound is loose on purpose: it catches a broken cast, not rounding.
  _, _, (config, params) = hf_checkpoint
  ids, text_mask, images = _inputs()
  fp32 = _score_raw(params, config, ids, text_mask, images)
  bf16_config = dataclasses.replace(config, dtype="bfloat16")
  inputs = _image_inputs(params, bf16_config, images)
  assert inputs["visual_hidden"].dtype == jnp.bfloat16
  bf16 = _score(params, bf16_config, ids, text_mask, inputs)
  assert bf16.dtype == jnp.float32
  assert np.abs(np.asarray(bf16) - np.asarray(fp32)).max() < 3.0


def _itm_batch(config, seed=0):
  ids, text_mask, images = _inputs(vocab=config.vocab_size, feat_dim=config.visual_feat_dim,
                                   seed=seed)
  return {"text_ids": ids, "text_mask": text_mask, "images": images,
          "match": np.array([1, 0, 1], np.int32)}


def test_pretrain_loss_is_itm_cross_entropy_without_dropout(hf_checkpoint):
  _, _, (config, params) = hf_checkpoint
  batch = _itm_batch(config)
  no_dropout = dataclasses.replace(config, dropout_rate=0.0)
  loss, metrics = jax.jit(lxmert.pretrain_loss, static_argnums=1)(
      params, no_dropout, batch, jax.random.key(0))
  scores = _score_raw(params, config, batch["text_ids"], batch["text_mask"], batch["images"])
  helpers.assert_itm_cross_entropy(loss, metrics, scores, batch["match"])


def test_pretrain_loss_has_dropout_and_gradients(hf_checkpoint):
  _, _, (config, params) = hf_checkpoint
  batch = _itm_batch(config)
  grad_fn = jax.jit(jax.value_and_grad(lxmert.pretrain_loss, has_aux=True), static_argnums=1)
  # rbg keys: XLA's own bit generator compiles far faster on CPU than threefry dropout masks.
  (loss_a, _), grads = grad_fn(params, config, batch, jax.random.key(1, impl="rbg"))
  (loss_b, _), _ = grad_fn(params, config, batch, jax.random.key(2, impl="rbg"))
  assert np.isfinite(loss_a) and loss_a != loss_b  # Different dropout masks.
  flat = _flat(grads)
  for key in ("lxmert/encoder/visn_fc/visn_fc/kernel",
              "lxmert/encoder/x_layers_0/visual_attention/att/query/kernel",
              "lxmert/encoder/r_layers_0/attention/self/key/kernel",
              "cls/seq_relationship/kernel"):
    assert np.abs(flat[key]).max() > 0, key


def test_tiny_config_params():
  # Traced, not run: a real init compiles for seconds on CPU and the other tests run the model.
  config = lxmert.tiny_config()
  params = jax.eval_shape(lambda rng: lxmert.init_params(config, rng), jax.random.key(0))
  flat = _flat(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), params))
  assert flat["lxmert/embeddings/word_embeddings/embedding"].shape == (30522, 32)
  assert flat["lxmert/encoder/visn_fc/visn_fc/kernel"].shape == (2048, 32)
  assert {v.dtype for v in flat.values()} == {np.dtype(np.float32)}
  assert sum(k.startswith("lxmert/encoder/x_layers_1/") for k in flat) > 0
  assert not any(k.startswith("lxmert/encoder/x_layers_2/") for k in flat)


def test_missing_regions_are_reported(hf_checkpoint):
  _, _, (config, params) = hf_checkpoint
  with pytest.raises(KeyError, match="region_feats"):
    lxmert.image_inputs(params, config, {"pixels": np.zeros((1, 4, 4, 3), np.uint8)})
  with pytest.raises(ValueError, match="visual_feat_dim"):
    lxmert.image_inputs(params, config, {"region_feats": np.zeros((1, 2, 16), np.float32),
                                         "region_boxes": np.zeros((1, 2, 4), np.float32)})


def test_tokenizer_and_text_format():
  config = lxmert.default_config()
  fmt = lxmert.text_format(config)
  assert isinstance(fmt, tokens.TextFormat)
  assert (fmt.bos_id, fmt.eos_id, fmt.pad_id, fmt.max_length) == (101, 102, 0, 20)
  tok = lxmert.tokenizer(config)
  ids = tok("A dog on the grass")["input_ids"]
  assert ids[0] == fmt.bos_id and ids[-1] == fmt.eos_id
  assert tok.convert_ids_to_tokens(ids[1:-1]) == ["a", "dog", "on", "the", "grass"]
