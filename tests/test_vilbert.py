"""Tests of the ViLBERT scorer against golden vectors from the original PyTorch code.

Assets (copied from the project's golden set, see tests/assets/LICENSES.md): `vilbert_tiny.bin`
(tiny random model saved by the original `BertForMultiModalPreTraining`), its config, its exact
forward inputs/outputs, and the key list of the full base checkpoint.

Tolerances (from the golden README: the float64-vs-float32 gap of the original is <= 1.9e-6 on
hidden states and <= 1.3e-7 on logits): hidden states and pooled outputs atol=1e-5, rtol=1e-4;
ITM logits and match probability atol=1e-5; checkpoint values exact (==).
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
from scorers import checkpoint_files
from scorers import common
from scorers import vilbert

ASSETS = os.path.join(os.path.dirname(__file__), "assets")
TINY_BIN = os.path.join(ASSETS, "vilbert_tiny.bin")


def _asset_json(name):
  with open(os.path.join(ASSETS, name)) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def golden():
  return dict(np.load(os.path.join(ASSETS, "vilbert_tiny_io.npz")))


@pytest.fixture(scope="module")
def tiny_state_dict():
  import torch
  return checkpoint_files.state_dict_to_numpy(torch.load(TINY_BIN, map_location="cpu", weights_only=True))


@pytest.fixture(scope="module")
def tiny_params():
  _, params = vilbert.load(TINY_BIN, vilbert.tiny_config())
  return params


@pytest.fixture(scope="module")
def score_fn():
  return jax.jit(vilbert.score, static_argnums=1)


@pytest.fixture(scope="module")
def forward():
  """(score, (logits, out_dict)) of the tiny model in one compiled program (compiles are slow)."""
  config = vilbert.tiny_config()

  @jax.jit
  def run(params, text_ids, text_mask, inputs):
    return (vilbert.score(params, config, text_ids, text_mask, inputs),
            vilbert.Model(config).apply({"params": params}, text_ids, text_mask, inputs))
  return run


def _golden_text(golden):
  return (golden["inputs/input_ids"].astype(np.int32),
          golden["inputs/attention_mask"].astype(np.int32))


def _golden_image_inputs(golden):
  return {"image_feat": golden["inputs/image_feat"], "image_loc": golden["inputs/image_loc"],
          "image_mask": golden["inputs/image_attention_mask"].astype(np.int32)}


def _golden_regions(golden):
  """The raw detections behind the golden inputs (row 0 there is the prepended global region)."""
  return {"region_feats": golden["inputs/image_feat"][:, 1:],
          "region_boxes": golden["inputs/image_loc"][:, 1:, :4],
          "region_mask": golden["inputs/image_attention_mask"][:, 1:].astype(np.int32)}


# ------------------------------------------------------------------------------------ config


def test_tiny_config_is_the_golden_config():
  info = _asset_json("vilbert_tiny_config.json")
  assert vilbert.config_from_original(info["resolved_config"]) == vilbert.tiny_config()


def test_default_config_is_the_base_config():
  base = _asset_json("vilbert_base_keys.json")["resolved_config"]
  assert vilbert.config_from_original(base) == vilbert.default_config()
  assert vilbert.default_config().max_text_len == 30
  assert vilbert.default_config("bert_base_2layer_2conect").t_biattention_id == (10, 11)


def test_schedule_reproduces_the_traced_tiny_order():
  # Traced with hooks on the original model (golden README).
  assert vilbert.layer_schedule(vilbert.tiny_config()) == (
      "layer.0", "layer.1", "c_layer.0", "layer.2", "v_layer.0", "c_layer.1", "v_layer.1",
      "layer.3")


def test_schedule_of_the_base_model():
  # The released base config (v_biattention_id 0-5, t_biattention_id 6-11): text layers 0-5,
  # co-attention 0, then 5 rounds of (text, visual, co-attention), then the last visual and
  # text layer.
  assert vilbert.layer_schedule(vilbert.default_config()) == (
      "layer.0", "layer.1", "layer.2", "layer.3", "layer.4", "layer.5", "c_layer.0",
      "layer.6", "v_layer.0", "c_layer.1", "layer.7", "v_layer.1", "c_layer.2",
      "layer.8", "v_layer.2", "c_layer.3", "layer.9", "v_layer.3", "c_layer.4",
      "layer.10", "v_layer.4", "c_layer.5", "v_layer.5", "layer.11")


def test_inconsistent_config_is_refused():
  with pytest.raises(ValueError, match="differ in length"):
    dataclasses.replace(vilbert.tiny_config(), t_biattention_id=(2,))
  with pytest.raises(ValueError, match="not divisible"):
    dataclasses.replace(vilbert.tiny_config(), v_num_attention_heads=5)


def test_module_follows_the_registry_contract():
  spec = scorers.get("vilbert")
  assert spec is vilbert.SCORER
  assert (spec.name, spec.objective, spec.match_index) == ("vilbert", "itm", 0)
  hash(spec.default_config())  # Static jit argument.


# ------------------------------------------------------------------------------- image inputs


def test_image_inputs_build_the_original_reader_layout(golden):
  built = vilbert.image_inputs(None, vilbert.tiny_config(), _golden_regions(golden))
  # The global row is sum/count in the original, a masked mean here: float32 rounding only.
  np.testing.assert_allclose(built["image_feat"], golden["inputs/image_feat"],
                             rtol=1e-6, atol=1e-6)
  # The original computes the area in pixels, here from normalised boxes.
  np.testing.assert_allclose(built["image_loc"], golden["inputs/image_loc"], atol=1e-6)
  np.testing.assert_array_equal(built["image_mask"], golden["inputs/image_attention_mask"])
  assert built["image_mask"].dtype == jnp.int32


def test_image_inputs_truncate_after_the_global_mean():
  feats = np.arange(4, dtype=np.float32)[None, :, None] * np.ones((1, 4, 2048), np.float32)
  boxes = np.tile(np.array([0.0, 0.0, 0.5, 0.5], np.float32), (1, 4, 1))
  config = dataclasses.replace(vilbert.tiny_config(), max_regions=3)
  built = vilbert.image_inputs(None, config, {
      "region_feats": feats, "region_boxes": boxes, "region_mask": np.ones((1, 4), np.int32)})
  assert built["image_feat"].shape == (1, 3, 2048)
  # The mean runs over all 4 detections (0+1+2+3)/4, then only the first 2 are kept.
  np.testing.assert_allclose(built["image_feat"][0, :, 0], [1.5, 0.0, 1.0])
  np.testing.assert_allclose(built["image_loc"][0, 1], [0.0, 0.0, 0.5, 0.5, 0.25])


# -------------------------------------------------------------------------------- checkpoints


def _flax_leaf(params, key):
  """Independent of the converter: where a ViLBERT checkpoint key must land, and its value."""
  parts = []
  for piece in key.split("."):
    if piece.isdigit():
      parts[-1] += f"_{piece}"
    else:
      parts.append(piece)
  *module, leaf = parts
  node = params
  for name in module:
    node = node[name]
  if leaf == "bias":
    return node["bias"], False
  if module[-1].startswith("LayerNorm"):
    return node["scale"], False
  if module[-1].endswith("_embeddings") and module[-2] == "embeddings":
    return node["embedding"], False
  return node["kernel"], True


def test_load_is_exact(tiny_state_dict, tiny_params):
  used = [k for k in tiny_state_dict if not k.startswith(("cls.predictions.",
                                                          "cls.imagePredictions."))]
  for key in used:
    leaf, transposed = _flax_leaf(tiny_params, key)
    expected = tiny_state_dict[key].T if transposed else tiny_state_dict[key]
    assert leaf.shape == expected.shape, key
    assert np.array_equal(leaf, expected), key
  assert len(jax.tree_util.tree_leaves(tiny_params)) == len(used)
  assert any("q_dense1" in k for k in used)  # Loaded although the forward never uses it.


def test_fake_base_checkpoint_loads_strictly_with_default_config():
  keys = _asset_json("vilbert_base_keys.json")["keys"]
  assert len(keys) == 533
  # Zero-strided arrays: the right shapes without allocating 250M parameters.
  state_dict = {k: np.broadcast_to(np.float32(0.5), shape) for k, shape, _ in keys}
  params = vilbert.convert_state_dict(state_dict, vilbert.default_config(), source="base keys")
  ignored = [k for k, _, _ in keys if k.startswith(("cls.predictions.", "cls.imagePredictions."))]
  assert len(jax.tree_util.tree_leaves(params)) == len(keys) - len(ignored)
  assert params["bert"]["encoder"]["c_layer_5"]["biattention"]["query1"]["kernel"].shape == (
      1024, 1024)
  assert params["bert"]["t_pooler"]["dense"]["kernel"].shape == (768, 1024)


def test_missing_unexpected_and_misshaped_keys_are_listed(tiny_state_dict):
  broken = dict(tiny_state_dict)
  del broken["bert.encoder.c_layer.1.biattention.key2.weight"]
  broken["bert.encoder.c_layer.1.biattention.logit1.weight"] = np.zeros((2, 40), np.float32)
  with pytest.raises(common.CheckpointMismatch) as error:
    vilbert.convert_state_dict(broken, vilbert.tiny_config())
  assert error.value.missing == ["bert/encoder/c_layer_1/biattention/key2/kernel"]
  assert error.value.unexpected == ["bert.encoder.c_layer.1.biattention.logit1.weight"]
  wider = dataclasses.replace(vilbert.tiny_config(), bi_hidden_size=44)
  with pytest.raises(common.CheckpointMismatch) as error:
    vilbert.convert_state_dict(tiny_state_dict, wider)
  assert any("biattention.query1.weight" in w for w in error.value.wrong_shapes)


def test_multi_task_heads_are_ignored_and_logged(tiny_state_dict, caplog):
  extended = {f"module.{k}": v for k, v in tiny_state_dict.items()}  # DataParallel prefix.
  extended["vil_logit.weight"] = np.zeros((1, 40), np.float32)
  extended["vil_prediction.logit_fc.0.weight"] = np.zeros((80, 40), np.float32)
  extended["bert.embeddings.task_embeddings.weight"] = np.zeros((20, 32), np.float32)
  with caplog.at_level(logging.INFO, logger="scorers.common"):
    params = vilbert.convert_state_dict(extended, vilbert.tiny_config())
  assert "vil_logit.weight" in caplog.text and "cls.predictions.bias" in caplog.text
  assert "task_specific_tokens" in caplog.text
  assert np.array_equal(params["cls"]["bi_seq_relationship"]["bias"],
                        tiny_state_dict["cls.bi_seq_relationship.bias"])


# ------------------------------------------------------------------------------------ parity


def test_forward_matches_golden(golden, tiny_params, forward):
  scores, (logits, out) = forward(tiny_params, *_golden_text(golden), _golden_image_inputs(golden))
  np.testing.assert_allclose(logits, golden["outputs/itm_logits"], rtol=0, atol=1e-5)
  # match_prob is softmax[:, 0]; atol 1e-5 on the probability is 1e-3 on the 0-100 scale.
  np.testing.assert_allclose(scores, 100 * golden["outputs/match_prob"], rtol=0, atol=1e-3)
  assert scores.shape == (3,) and scores.dtype == jnp.float32
  for name in ("pooled_output_t", "pooled_output_v", "pooled_output_fused",
               "sequence_output_t", "sequence_output_v"):
    # Padding positions included: the port masks exactly as the original does.
    np.testing.assert_allclose(out[name], golden[f"outputs/{name}"], rtol=1e-4, atol=1e-5,
                               err_msg=name)


def test_score_from_raw_regions_matches_golden(golden, tiny_params, forward):
  inputs = vilbert.image_inputs(tiny_params, vilbert.tiny_config(), _golden_regions(golden))
  scores, _ = forward(tiny_params, *_golden_text(golden), inputs)
  np.testing.assert_allclose(scores, 100 * golden["outputs/match_prob"], rtol=0, atol=1e-3)


def test_q_dense_has_no_effect(golden, tiny_params, forward):
  params = jax.tree_util.tree_map(np.array, tiny_params)
  for block in ("c_layer_0", "c_layer_1"):
    for name in ("q_dense1", "q_dense2"):
      leaf = params["bert"]["encoder"][block]["biOutput"][name]
      leaf["kernel"] += 3.0
      leaf["bias"] -= 1.0
  inputs = _golden_image_inputs(golden)
  perturbed, _ = forward(params, *_golden_text(golden), inputs)
  original, _ = forward(tiny_params, *_golden_text(golden), inputs)
  np.testing.assert_array_equal(perturbed, original)


def test_bfloat16_stays_close_to_float32(golden, tiny_params, score_fn):
  config = dataclasses.replace(vilbert.tiny_config(), dtype="bfloat16")
  half = score_fn(tiny_params, config, *_golden_text(golden), _golden_image_inputs(golden))
  gap = float(np.abs(np.asarray(half) - 100 * golden["outputs/match_prob"]).max())
  # Measured on the tiny golden model (CPU): 0.057 points on the 0-100 scale against the
  # float32 original. Non-zero shows that bfloat16 compute really ran; params stay float32.
  assert 0.0 < gap < 0.2, gap
  assert half.dtype == jnp.float32


# ------------------------------------------------------------------------------------ training


def test_pretrain_loss_uses_index_0_as_match_and_dropout(golden, tiny_params, forward):
  config = vilbert.tiny_config()
  text_ids, text_mask = _golden_text(golden)
  batch = {"text_ids": text_ids, "text_mask": text_mask, "images": _golden_regions(golden),
           "match": np.array([1, 0, 1], np.int32)}

  # Gradients are left to the pretraining tests: compiling the backward pass here would
  # double this test's time.
  @jax.jit
  def loss_and_logits(params, batch, rng):
    loss, metrics = vilbert.pretrain_loss(params, config, batch, rng)
    # The same forward with the same dropout key, outside pretrain_loss.
    logits, _ = vilbert.Model(config).apply(
        {"params": params}, batch["text_ids"], batch["text_mask"],
        vilbert.image_inputs(None, config, batch["images"]), deterministic=False,
        rngs={"dropout": rng})
    return loss, metrics, logits

  # An rbg key only to keep compilation short; pretrain_loss takes any key.
  rng, other_rng = jax.random.split(jax.random.key(3, impl="rbg"))
  loss, metrics, logits = loss_and_logits(tiny_params, batch, rng)
  logp = jax.nn.log_softmax(logits)
  expected = -np.mean([logp[0, 0], logp[1, 1], logp[2, 0]])  # matched -> index 0
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(metrics["accuracy"], np.mean(
      np.argmax(logits, axis=-1) == np.array([0, 1, 0])))
  other_loss, _, _ = loss_and_logits(tiny_params, batch, other_rng)
  assert other_loss != loss  # Dropout is on.
  _, (deterministic_logits, _) = forward(tiny_params, text_ids, text_mask,
                                        _golden_image_inputs(golden))
  assert not np.allclose(logits, deterministic_logits, atol=1e-4)


def test_text_format_is_uncased_bert_with_30_tokens():
  config = vilbert.default_config()
  fmt = vilbert.text_format(config)
  assert (fmt.bos_id, fmt.eos_id, fmt.pad_id, fmt.max_length) == (101, 102, 0, 30)
  assert (fmt.prompt, fmt.strip_punctuation) == ("", False)
  tokenizer = vilbert.tokenizer(config)
  assert len(tokenizer) == config.vocab_size
  assert tokenizer.tokenize("A Red Circle") == ["a", "red", "circle"]
