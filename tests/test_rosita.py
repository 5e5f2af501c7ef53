"""ROSITA scorer: golden parity with the original PyTorch net, strict conversion, contract.

Golden files (`tests/assets/rosita_tiny*`, `rosita_base_keys.json`) were produced by running
MILVLG/rosita's own model code (see `tests/assets/LICENSES.md`). Tolerances are the ones the golden
README suggests from its float64 re-run (worst float64-vs-float32 gap 1.7e-6 on the region
outputs, 1.3e-7 on logits): atol 1e-5 / rtol 1e-4 for hidden and pooled states, atol 1e-5 for
ITM logits and match probabilities.
"""

import dataclasses
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scorers
from scorers import common
from scorers import rosita
from tests import helpers

# Parity is about the port's math: matmuls at full float32 precision (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("full_float32_matmuls")

ASSETS = os.path.join(os.path.dirname(__file__), "assets")
CKPT = os.path.join(ASSETS, "rosita_tiny.pkl")
# One compiled scorer per (config, shapes), shared by the tests: eager Flax is slow on CPU.
SCORE = jax.jit(rosita.score, static_argnums=1)


@pytest.fixture(scope="module")
def golden():
  return helpers.load_golden(rosita, "rosita", "rosita_tiny.pkl")


def golden_inputs(io):
  """The original batch (text padded to 14, 6 region slots) as our int32 arrays and masks."""
  images = {"imgfeat": io["inputs/imgfeat_input"], "bbox": io["inputs/imgfeat_bbox"],
            "img_mask": io["inputs/imgfeat_mask"].astype(np.int32)}
  return (io["inputs/text_ids"].astype(np.int32), io["inputs/text_mask"].astype(np.int32), images)


def torch_key(path):
  """Flax param path -> the original `module.key`."""
  return helpers.torch_key(path, "layers")


def test_contract_fields():
  assert scorers.get("rosita") is rosita.SCORER
  assert (rosita.SCORER.name, rosita.SCORER.objective, rosita.SCORER.match_index) == ("rosita", "itm", 1)
  config = rosita.default_config()
  hash(config)
  assert (config.vocab_size, config.hidden_size, config.num_layers, config.max_text_len) == (
      30522, 768, 12, 30)
  with pytest.raises(ValueError, match="only 'base'"):
    rosita.default_config("large")
  golden_config = json.load(open(os.path.join(ASSETS, "rosita_tiny_config.json")))
  model = golden_config["model_config"]
  tiny = rosita.tiny_config()
  assert (tiny.vocab_size, tiny.hidden_size, tiny.num_layers, tiny.num_heads,
          tiny.intermediate_size, tiny.box_dim) == (
              golden_config["init_map"]["vocab_size"], model["HSIZE"], model["LAYER"],
              model["HHEAD"], model["HFF"], model["BBOXFEAT_SIZE"])
  assert tiny.hidden_size // tiny.num_heads == model["HBASE"]


def test_load_is_exact(golden):
  import torch
  _, _, params = golden
  checkpoint = torch.load(CKPT, weights_only=True)
  state = {f"{module}.{key}": value.numpy() for module, sub in checkpoint.items()
           for key, value in sub.items()}
  assert {torch_key(p) for p in helpers.flat_params(params)} == set(state)
  helpers.assert_params_equal(params, state, torch_key)


def test_golden_parity(golden):
  io, config, params = golden
  text_ids, text_mask, images = golden_inputs(io)
  logits, out = jax.jit(rosita.Model(config).apply)({"params": params}, text_ids, text_mask,
                                                     images)
  np.testing.assert_allclose(logits, io["outputs/itm_logits"], atol=1e-5, rtol=0)
  prob = jax.nn.softmax(logits)[:, rosita.MATCH_INDEX]
  np.testing.assert_allclose(prob, io["outputs/match_prob"], atol=1e-5, rtol=0)
  np.testing.assert_allclose(out["pooled_output"], io["outputs/pooled_output"],
                             atol=1e-5, rtol=1e-4)
  # Padding positions included: our layout is the original's ([text ; regions], masked).
  np.testing.assert_allclose(out["text_output"], io["outputs/text_output"], atol=1e-5, rtol=1e-4)
  np.testing.assert_allclose(out["image_output"], io["outputs/imgfeat_output"],
                             atol=1e-5, rtol=1e-4)
  np.testing.assert_array_equal(
      out["sequence_output"], np.concatenate([out["text_output"], out["image_output"]], axis=1))


def test_image_inputs_rebuild_golden_boxes_and_scores(golden):
  io, config, params = golden
  text_ids, text_mask, images = golden_inputs(io)
  regions = {"region_feats": images["imgfeat"], "region_boxes": images["bbox"][..., :4],
             "region_mask": images["img_mask"]}
  inputs = rosita.image_inputs(params, config, regions)
  # The area column comes from pixel boxes in the original; from normalised corners here.
  np.testing.assert_allclose(inputs["bbox"], images["bbox"], atol=1e-6)
  scores = SCORE(params, config, text_ids, text_mask, inputs)
  assert scores.shape == (3,) and scores.dtype == jnp.float32
  np.testing.assert_allclose(scores, 100 * io["outputs/match_prob"], atol=1e-3, rtol=0)


def test_bfloat16_close_to_float32(golden):
  io, config, params = golden
  text_ids, text_mask, images = golden_inputs(io)
  gap, out = helpers.bfloat16_gap(rosita, SCORE, config, params, text_ids, text_mask, images)
  # Measured on this tiny model: max |bf16 - fp32| = 0.033 points on the 0-100 scale on CPU,
  # 0.081 on one H200 (fp32 at "highest" matmul precision)
  # (golden scores 40.4-41.6). The bound leaves room for other backends.
  assert gap < 0.5, gap
  assert out["pooled_output"].dtype == jnp.bfloat16


def fake_base_checkpoint(layout):
  """The base key list of `layout` ("itr_net" or "pretrain_net") as a per-module .pkl dict."""
  import torch
  modules = json.load(open(os.path.join(ASSETS, "rosita_base_keys.json")))[layout]["state"]
  # Zero-stride zeros keep the ~450 MB checkpoint a few bytes; shapes are the point here (values
  # are checked exactly on the tiny checkpoint).
  return {module: {key: torch.zeros(()).expand(*shape) for key, shape, _ in entries}
          for module, entries in modules.items()}, modules


@pytest.mark.parametrize("layout", ["itr_net", "pretrain_net"])
def test_base_checkpoint_key_lists_load_strictly(layout, tmp_path, caplog):
  import torch
  checkpoint, modules = fake_base_checkpoint(layout)
  if layout == "pretrain_net":
    # What run_pretrain.py stores beside the modules; all weights_only-safe types.
    checkpoint.update(epoch=20, amp={"loss_scaler0": {"loss_scale": 65536.0, "unskipped": 7}},
                      net_optim={"state": {0: {"step": torch.tensor(3.0)}},
                                 "param_groups": [{"lr": 1e-4, "params": [0]}]})
  path = str(tmp_path / f"{layout}.pkl")
  torch.save(checkpoint, path)
  with caplog.at_level(logging.INFO, logger="scorers.common"):
    config, params = rosita.load(path)
  assert config == rosita.default_config()
  expected = {f"{module}.{key}": tuple(shape) for module, entries in modules.items()
              if module in ("text_embeddings", "visual_embeddings", "backbone", "pooler",
                            "mm_itm_head")
              for key, shape, _ in entries}
  helpers.assert_param_shapes(params, expected, torch_key)
  if layout == "pretrain_net":
    for skipped in ("text_mlm_head", "imgfeat_head", "epoch", "net_optim", "amp"):
      assert skipped in caplog.text


def test_mismatches_are_listed(tmp_path):
  import torch
  checkpoint = torch.load(CKPT, weights_only=True)
  del checkpoint["mm_itm_head"]["dense.bias"]
  checkpoint["backbone"]["layers.0.ffn.dense0.weight"] = torch.zeros(3, 3)
  checkpoint["backbone"]["layers.3.ffn.dense0.bias"] = torch.zeros(64)
  checkpoint["vqa_head"] = {"dense.weight": torch.zeros(2, 2)}
  path = str(tmp_path / "broken.pkl")
  torch.save(checkpoint, path)
  with pytest.raises(common.CheckpointMismatch) as error:
    rosita.load(path, rosita.tiny_config())
  assert error.value.missing == ["mm_itm_head/dense/bias"]
  assert error.value.unexpected == ["backbone.layers.3.ffn.dense0.bias", "vqa_head.dense.weight"]
  assert [w.split(":")[0] for w in error.value.wrong_shapes] == [
      "backbone.layers.0.ffn.dense0.weight"]


def test_not_a_rosita_checkpoint(tmp_path):
  import torch
  path = str(tmp_path / "flat.pkl")
  torch.save({"word_embeddings.weight": torch.zeros(3, 2)}, path)
  with pytest.raises(ValueError, match="per-module state dicts"):
    rosita.load(path, rosita.tiny_config())


def test_untrusted_pickle_needs_trust_flag(tmp_path, golden):
  import torch
  _, config, params = golden
  checkpoint = torch.load(CKPT, weights_only=True)
  checkpoint["net_optim"] = helpers.Opaque("optimizer internals")
  path = str(tmp_path / "with_object.pkl")
  torch.save(checkpoint, path)
  with pytest.raises(ValueError, match="trust_pickle=True"):
    rosita.load(path, config)
  _, trusted = rosita.load(path, config, trust_pickle=True)
  jax.tree.map(np.testing.assert_array_equal, trusted, params)


def golden_batch(io):
  """The golden pairs as a `pretrain_loss` batch, the second labelled a mismatch."""
  text_ids, text_mask, images = golden_inputs(io)
  return {"text_ids": text_ids, "text_mask": text_mask,
          "images": {"region_feats": images["imgfeat"], "region_boxes": images["bbox"][..., :4],
                     "region_mask": images["img_mask"]},
          "match": np.array([1, 0, 1], np.int32)}


def test_pretrain_loss_is_itm_cross_entropy(golden):
  io, config, params = golden
  batch = golden_batch(io)
  # Without dropout the loss is the cross-entropy of the original's logits: by hand.
  logits = io["outputs/itm_logits"].astype(np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = -logp[np.arange(3), batch["match"]].mean()
  no_dropout = dataclasses.replace(config, dropout_rate=0.0)
  loss, metrics = jax.jit(rosita.pretrain_loss, static_argnums=1)(
      params, no_dropout, batch, jax.random.PRNGKey(0))
  np.testing.assert_allclose(loss, expected, atol=1e-5)
  np.testing.assert_allclose(metrics["accuracy"],
                             np.mean(logits.argmax(-1) == batch["match"]))


def test_pretrain_loss_has_dropout_and_gradients(golden):
  io, config, params = golden
  batch = golden_batch(io)
  # An rbg key compiles dropout much faster on CPU than the default threefry.
  grad_fn = jax.jit(jax.value_and_grad(rosita.pretrain_loss, has_aux=True), static_argnums=1)
  (loss_a, _), grads = grad_fn(params, config, batch, jax.random.key(1, impl="rbg"))
  (loss_b, _), _ = grad_fn(params, config, batch, jax.random.key(2, impl="rbg"))
  assert float(loss_a) != float(loss_b)  # Dropout is on.
  peaks = {p: float(jnp.abs(g).max()) for p, g in helpers.flat_params(grads).items()}
  assert all(np.isfinite(v) and v > 0 for v in peaks.values()), peaks


def test_tokenizer_is_uncased_bert_and_text_format():
  config = rosita.default_config()
  tok = rosita.tokenizer(config)
  assert len(tok) == config.vocab_size
  assert tok("Dog")["input_ids"] == tok("dog")["input_ids"]
  fmt = rosita.text_format(config)
  assert (fmt.bos_id, fmt.eos_id, fmt.pad_id, fmt.max_length) == (
      tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, 30)
  assert fmt.strip_punctuation and fmt.text("a dog, on grass.") == "a dog on grass"
