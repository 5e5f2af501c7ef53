"""Tests of the BLIP ITM scorer (scorers/blip_itm.py, scorers/blip_itm_model.py).

Parity is against `transformers.BlipForImageTextRetrieval` (PyTorch, `use_itm_head=True`) built
from a random tiny config, saved with `save_pretrained` and read back with `blip_itm.load`.
Tolerances (float32): 1e-5 absolute on the ITM logits, the patch embeddings and the text
encoder's last hidden states; 1e-3 on the 0-100 scores (100 x 1e-5); preprocessing within 1
uint8 level of the PIL image processor.
"""

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scorers
from scorers import blip_itm, checkpoint_files, common, tokens
from scorers import pixels as pixels_lib
from tests import helpers

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# The real vocabulary size, so that [ENC] (30523) and real tokenizer output embed.
HF_TEXT = dict(vocab_size=30524, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
               num_attention_heads=4, max_position_embeddings=40, encoder_hidden_size=48)
HF_VISION = dict(hidden_size=48, intermediate_size=56, num_hidden_layers=2, num_attention_heads=3,
                 image_size=32, patch_size=8)
# Every test uses these shapes, so each jitted function compiles once per config.
N, LENGTH = 4, 9


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
  """(HF model, its save_pretrained directory, our (config, params) loaded from it)."""
  torch.manual_seed(0)
  config = transformers.BlipConfig(text_config=HF_TEXT, vision_config=HF_VISION,
                                   image_text_hidden_size=16)
  model = helpers.perturb(transformers.BlipForImageTextRetrieval(config).eval())
  directory = str(tmp_path_factory.mktemp("blip_hf"))
  model.save_pretrained(directory)
  return model, directory, blip_itm.load(directory)


def _batch(seed=0):
  """ids [N, LENGTH] int32 ([CLS] w... [SEP] 0...; one row full), mask, pixels [N, 32, 32, 3]."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(2, LENGTH + 1, N)
  lengths[0] = LENGTH
  ids = np.zeros((N, LENGTH), np.int32)
  mask = np.zeros((N, LENGTH), np.int32)
  for i, l in enumerate(lengths):
    ids[i, 0], ids[i, l - 1] = blip_itm.CLS_ID, 102
    ids[i, 1:l - 1] = rng.integers(1000, 30000, l - 2)
    mask[i, :l] = 1
  return ids, mask, rng.integers(0, 256, (N, 32, 32, 3), np.uint8)


_apply = jax.jit(lambda params, config, *args: blip_itm.Model(config).apply({"params": params},
                                                                           *args),
                 static_argnums=1)
_score = jax.jit(blip_itm.score, static_argnums=1)


def _reference(model, ids, mask, pixels, first=None):
  """transformers' ITM logits [N, 2], text last hidden states and patch embeddings."""
  ids = ids.copy()
  if first is not None:
    ids[:, 0] = first
  pixel_values = np.asarray(blip_itm.preprocess(pixels, 32)).transpose(0, 3, 1, 2).copy()
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(ids.astype(np.int64)),
                pixel_values=torch.from_numpy(pixel_values),
                attention_mask=torch.from_numpy(mask.astype(np.int64)), use_itm_head=True)
  return out.itm_score.numpy(), out.question_embeds.numpy(), out.last_hidden_state.numpy()


def test_parity_with_transformers(hf_checkpoint):
  """[ENC] first (BLIP's ITM convention), the patch embeddings, the cross-attending text layers
  and the head; then the scorer path (image side once, cross K/V cached) on [CLS] ids."""
  model, _, (config, params) = hf_checkpoint
  ids, mask, pixels = _batch()
  ref_logits, ref_text, ref_image = _reference(model, ids, mask, pixels, first=blip_itm.ENC_ID)
  logits, out = _apply(params, config, ids, mask, {"pixels": pixels})
  np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=1e-5)
  np.testing.assert_allclose(out["image_embeds"], ref_image, rtol=0, atol=1e-5)
  np.testing.assert_allclose(out["text_hidden"], ref_text, rtol=0, atol=1e-5)
  assert np.ptp(ref_logits[:, 1] - ref_logits[:, 0]) > 0.1  # The pairs score differently.
  inputs = blip_itm.image_inputs(params, config, {"pixels": pixels})
  assert inputs["cross_key"].shape == (N, 2, config.num_positions, 32)
  expected = 100 * torch.softmax(torch.from_numpy(ref_logits), -1)[:, 1].numpy()
  np.testing.assert_allclose(_score(params, config, ids, mask, inputs), expected, rtol=0,
                             atol=1e-3)
  # [CLS] left in place (transformers' and the demo's way) is a different, also exact, score.
  cls_config = dataclasses.replace(config, first_token="cls")
  cls_logits, _ = _apply(params, cls_config, ids, mask, {"pixels": pixels})
  np.testing.assert_allclose(cls_logits, _reference(model, ids, mask, pixels)[0], rtol=0,
                             atol=1e-5)
  assert np.abs(np.asarray(cls_logits) - ref_logits).max() > 1e-3


def test_image_inputs_without_the_kv_cache(hf_checkpoint):
  """`cache_cross_kv=False` keeps the patch embeddings (the model projects K/V per caption)."""
  _, _, (config, params) = hf_checkpoint
  _, _, pixels = _batch()
  plain = dataclasses.replace(config, cache_cross_kv=False)
  inputs = blip_itm.image_inputs(params, plain, {"pixels": pixels})
  assert set(inputs) == {"image_embeds"} and inputs["image_embeds"].shape == (N, 17, 48)
  model = hf_checkpoint[0]
  pixel_values = np.asarray(blip_itm.preprocess(pixels, 32)).transpose(0, 3, 1, 2).copy()
  with torch.no_grad():
    ref = model.vision_model(torch.from_numpy(pixel_values)).last_hidden_state.numpy()
  np.testing.assert_allclose(inputs["image_embeds"], ref, rtol=0, atol=1e-5)


def test_padding_does_not_change_the_score(hf_checkpoint):
  _, _, (config, params) = hf_checkpoint
  ids, mask, pixels = _batch()
  inputs = blip_itm.image_inputs(params, config, {"pixels": pixels})
  base = _score(params, config, ids, mask, inputs)
  noisy = np.where(mask == 1, ids, 7).astype(np.int32)
  np.testing.assert_allclose(_score(params, config, noisy, mask, inputs), base, rtol=0, atol=1e-4)
  other_image = {k: v[::-1] for k, v in inputs.items()}
  assert np.abs(np.asarray(_score(params, config, ids, mask, other_image)) - base).max() > 1e-3


def test_strict_loading(hf_checkpoint, tmp_path, caplog):
  model, directory, (config, params) = hf_checkpoint
  model.config.save_pretrained(str(tmp_path))
  state = dict(model.state_dict())
  state["text_encoder.embeddings.position_ids"] = torch.arange(40)[None]
  torch.save(state, tmp_path / "pytorch_model.bin")
  with caplog.at_level(logging.INFO, logger="scorers.common"):
    _, loaded = blip_itm.load(str(tmp_path))
  assert "vision_proj.weight" in caplog.text and "text_proj.bias" in caplog.text
  np.testing.assert_array_equal(loaded["itm_head"]["kernel"], params["itm_head"]["kernel"])
  del state["text_encoder.encoder.layer.1.crossattention.self.value.bias"]
  state["itm_head.weight"] = torch.zeros(3, 32)
  state["text_encoder.pooler.dense.weight"] = torch.zeros(32, 32)
  torch.save(state, tmp_path / "pytorch_model.bin")
  with pytest.raises(common.CheckpointMismatch) as error:
    blip_itm.load(str(tmp_path))
  assert error.value.missing == [
      "text_encoder/encoder/layer_1/crossattention/self/value/bias"]
  assert error.value.unexpected == ["text_encoder.pooler.dense.weight"]
  assert error.value.wrong_shapes == ["itm_head.weight: (3, 32), expects (2, 32)"]


def test_load_errors(hf_checkpoint, tmp_path):
  model, _, _ = hf_checkpoint
  helpers.assert_model_type_errors(blip_itm.load, tmp_path, "clip", "blip")
  model.config.save_pretrained(str(tmp_path))
  with pytest.raises(checkpoint_files.CheckpointFileError, match="no weights in"):
    blip_itm.load(str(tmp_path))
  (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\n")
  with pytest.raises(ValueError, match=r"\[ENC\] the id 7; the config expects 30523"):
    blip_itm.load(str(tmp_path))


@pytest.mark.parametrize("height,width", [(48, 64), (375, 500), (20, 24)])
def test_preprocess_matches_hf_pil(height, width):
  """Against Hugging Face's PIL BlipImageProcessor: within 1 uint8 level, on < 1% of values.

  (The default BlipImageProcessor resizes with torchvision, which is not installed here.)
  """
  from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil
  processor = BlipImageProcessorPil(size={"height": 32, "width": 32})
  levels = helpers.pil_levels(processor, blip_itm.preprocess, height, width, 32,
                              pixels_lib.CLIP_STD)
  assert levels.max() < 1.01 and (levels > 0.01).mean() < 0.01


def test_pretrain_loss_is_itm_cross_entropy(hf_checkpoint):
  _, _, (config, params) = hf_checkpoint
  ids, mask, pixels = _batch()
  batch = {"text_ids": ids, "text_mask": mask, "images": {"pixels": pixels},
           "match": np.array([1, 0, 1, 0], np.int32)}
  loss, metrics = jax.jit(blip_itm.pretrain_loss, static_argnums=1)(params, config, batch,
                                                                    jax.random.key(0))
  scores = _score(params, config, ids, mask, blip_itm.image_inputs(params, config,
                                                                    {"pixels": pixels}))
  helpers.assert_itm_cross_entropy(loss, metrics, scores, batch["match"])


def test_bfloat16_scores_stay_close(hf_checkpoint):
  # A loose bound: it catches a broken cast, not rounding (measured gap printed).
  _, _, (config, params) = hf_checkpoint
  ids, mask, pixels = _batch()
  fp32 = _score(params, config, ids, mask, blip_itm.image_inputs(params, config,
                                                                 {"pixels": pixels}))
  bf16_config = dataclasses.replace(config, dtype="bfloat16")
  inputs = blip_itm.image_inputs(params, bf16_config, {"pixels": pixels})
  assert inputs["cross_key"].dtype == jnp.bfloat16
  bf16 = _score(params, bf16_config, ids, mask, inputs)
  gap = float(np.abs(np.asarray(bf16) - np.asarray(fp32)).max())
  print(f"bf16 vs fp32 score gap (100 x softmax scale, tiny model): {gap:.4f}")
  assert bf16.dtype == jnp.float32 and gap < 3.0


def test_contract_and_configs():
  spec = scorers.get("blip_itm")
  assert spec is blip_itm.SCORER
  assert (spec.objective, spec.match_index, spec.image_kind) == ("itm", 1, "pixels")
  base = blip_itm.default_config()
  assert (base.vision_width, base.patch_size, base.image_size, base.num_positions) == (
      768, 16, 384, 577)
  assert (base.vocab_size, base.hidden_size, base.num_layers, base.max_text_len) == (
      30524, 768, 12, 35)
  assert blip_itm.default_config("large").vision_layers == 24
  with pytest.raises(ValueError, match="first_token='sep'"):
    blip_itm.Config(first_token="sep")
  with pytest.raises(KeyError, match="pixels"):
    blip_itm.image_inputs({}, base, {"region_feats": np.zeros((1, 2, 3))})
  hash(blip_itm.tiny_config())


def test_tokenizer_and_text_format():
  config = blip_itm.tiny_config()
  tok = blip_itm.tokenizer(config)
  assert len(tok) == 30524
  assert tok.convert_tokens_to_ids([tokens.BLIP_DEC, tokens.BLIP_ENC]) == [30522, 30523]
  assert tok("A dog on the grass")["input_ids"] == [101, 1037, 3899, 2006, 1996, 5568, 102]
  fmt = blip_itm.text_format(config)
  assert (fmt.bos_id, fmt.eos_id, fmt.pad_id, fmt.max_length) == (30523, 102, 0, 35)
  cls_fmt = blip_itm.text_format(dataclasses.replace(config, first_token="cls"))
  assert cls_fmt.bos_id == 101
