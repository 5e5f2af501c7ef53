"""Tests of the SigLIP scorer (scorers/siglip.py, scorers/siglip_model.py).

Parity is against `transformers.SiglipModel` (PyTorch) built from random tiny configs, saved with
`save_pretrained` (or as an old-style `pytorch_model.bin`) next to the test SentencePiece model
and read back with `siglip.load`. Tolerances: 1e-5 absolute on embeddings, pooled and hidden
states and logits (float32); 1e-3 on the 0-100 scores (100 x 1e-5); preprocessing within 1 uint8
level of the PIL image processor.
"""

import dataclasses
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scorers
from scorers import checkpoint_files, common, siglip, tokens
from tests import helpers

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 1000  # The test SentencePiece model's size, so real tokenizer output embeds.
CONTEXT = 24
PAD = 1
# Every test uses these shapes, so each jitted function compiles once per config: XLA's CPU
# compile time, not the arithmetic, is what these tests pay for.
N, LENGTH = 5, 11

# Two checkpoints that differ in everything with a code path: activation, file format (and the
# old position_ids buffers), and whether the text tower sees the padding (the original) or not.
VARIANTS = {
    "safetensors": dict(hidden_act="gelu_pytorch_tanh", text_mask=False),
    "legacy_bin": dict(hidden_act="gelu", text_mask=True),
}


def _hf_config(hidden_act):
  # Widths, heads and depths differ between the towers so a mix-up changes shapes; the text head
  # projects 32 -> 48, the vision width.
  text = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
              num_attention_heads=4, max_position_embeddings=CONTEXT, hidden_act=hidden_act,
              projection_size=48, bos_token_id=None, eos_token_id=PAD, pad_token_id=PAD)
  vision = dict(hidden_size=48, intermediate_size=56, num_hidden_layers=2, num_attention_heads=3,
                image_size=32, patch_size=8, hidden_act=hidden_act)
  return transformers.SiglipConfig(text_config=text, vision_config=vision)


def _make_checkpoint(name, tmp_path_factory):
  """(variant, torch model, directory, our config, our params)."""
  variant = VARIANTS[name]
  torch.manual_seed(0)
  # Noise on every parameter, the logit scale and bias included.
  model = helpers.perturb(transformers.SiglipModel(_hf_config(variant["hidden_act"])).eval())
  directory = str(tmp_path_factory.mktemp(name))
  helpers.save_hf(model, directory, legacy_bin=name == "legacy_bin",
                  position_ids={"text_model.embeddings.position_ids": CONTEXT,
                                "vision_model.embeddings.position_ids": 16})
  shutil.copy(tokens.SIGLIP_TEST_SPM, os.path.join(directory, "spiece.model"))
  config, params = siglip.load(directory)
  config = dataclasses.replace(config, text_mask=variant["text_mask"])
  return variant, model, directory, config, params


hf_checkpoint, hf_default = helpers.checkpoint_fixtures(_make_checkpoint, VARIANTS)


def _texts(rng, n, length):
  """[n, length] ids w... </s> pad... ; every length from 1 to `length`, one row full."""
  lengths = rng.integers(1, length + 1, n)
  lengths[0] = length
  ids = np.full((n, length), PAD, np.int64)
  mask = np.zeros((n, length), np.int64)
  for i, l in enumerate(lengths):
    ids[i, :l - 1], ids[i, l - 1] = rng.integers(3, VOCAB, l - 1), PAD
    mask[i, :l] = 1
  return ids, mask


def _batch(seed=0):
  """(ids [N, LENGTH] int32, mask, pixels [N, 32, 32, 3] uint8)."""
  rng = np.random.default_rng(seed)
  ids, mask = _texts(rng, N, LENGTH)
  return ids.astype(np.int32), mask.astype(np.int32), rng.integers(0, 256, (N, 32, 32, 3),
                                                                   np.uint8)


def _apply(config, params, method, *args):
  return jax.jit(lambda p, *a: siglip.Model(config).apply({"params": p}, *a, method=method))(
      params, *args)


def test_parity_with_transformers(hf_checkpoint):
  """Both towers, the logits and the scorer path (safetensors); the text tower with the
  attention mask and erf GELU (legacy_bin: the same code runs both towers' layers)."""
  variant, model, _, config, params = hf_checkpoint
  ids, mask, pixels = _batch()
  text = _apply(config, params, siglip.Model.encode_text, ids, mask)
  # The reference sees what SigLIP's processor gives: padding="max_length" (CONTEXT), and the
  # attention mask only in the variant that uses it.
  full_ids = np.full((N, CONTEXT), PAD, np.int64)
  full_mask = np.zeros((N, CONTEXT), np.int64)
  full_ids[:, :LENGTH], full_mask[:, :LENGTH] = ids, mask
  inputs = dict(input_ids=torch.from_numpy(full_ids))
  if variant["text_mask"]:
    inputs["attention_mask"] = torch.from_numpy(full_mask)
  close = lambda ours, theirs: np.testing.assert_allclose(
      np.asarray(ours), theirs.numpy(), rtol=0, atol=1e-5)
  with torch.no_grad():
    ref_text = model.text_model(**inputs)
  close(text["text_pooled"], ref_text.pooler_output)
  close(text["text_hidden"], ref_text.last_hidden_state)
  if variant["text_mask"]:
    return
  pixel_values = np.asarray(siglip.preprocess(pixels, config.image_size))
  image = _apply(config, params, siglip.Model.encode_image, pixel_values)
  pixel_values_nchw = torch.from_numpy(pixel_values.transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    ref = model(**inputs, pixel_values=pixel_values_nchw)
    ref_image = model.vision_model(pixel_values_nchw)
  close(text["text_embeds"], ref.text_embeds)
  close(image["image_embeds"], ref.image_embeds)
  close(image["image_pooled"], ref_image.pooler_output)
  close(image["image_hidden"], ref_image.last_hidden_state)
  logits = np.exp(float(params["logit_scale"][0])) * (
      np.asarray(text["text_embeds"]) @ np.asarray(image["image_embeds"]).T
  ) + float(params["logit_bias"][0])
  close(logits, ref.logits_per_text)
  # The scorer path: image embeddings once, then the text tower only, at the given width.
  inputs_jax = siglip.image_inputs(params, config, {"pixels": pixels})
  scores = siglip.score(params, config, ids, mask, inputs_jax)
  expected = 100 * torch.sigmoid(torch.diagonal(ref.logits_per_text)).numpy()
  np.testing.assert_allclose(np.asarray(scores), expected, rtol=0, atol=1e-3)
  assert np.ptp(expected) > 0.5  # The pairs score differently, or the comparison proves little.


def test_padding_is_part_of_the_input(hf_default):
  """Without the mask the padding is attended to: `score` pads any narrower text back to
  max_text_len (the parity test compares 11 tokens with transformers' 24), with `pad_id`, and
  another pad id changes the score."""
  _, _, _, config, params = hf_default
  ids, mask, pixels = _batch()
  images = siglip.image_inputs(params, config, {"pixels": pixels})
  padded = siglip.score(params, config, ids, mask, images)
  other_pad = siglip.score(params, dataclasses.replace(config, pad_id=5), ids, mask, images)
  assert np.abs(np.asarray(other_pad) - np.asarray(padded)).max() > 1e-3
  with pytest.raises(ValueError, match="max_text_len"):
    siglip.embed_texts(params, config, np.ones((1, CONTEXT + 1), np.int32),
                       np.ones((1, CONTEXT + 1), np.int32))


def test_score_scales(hf_default):
  """cos = +1 / -1 by construction: prob100 = 100 sigmoid(+-scale + bias), cos100 = +-100."""
  _, _, _, config, params = hf_default
  ids, mask, _ = _batch()
  text = np.asarray(siglip.embed_texts(params, config, ids, mask))
  sign = np.array([1, -1, 1, -1, 1], np.float32)
  inputs = {"image_embeds": text * sign[:, None]}
  scale, bias = np.exp(float(params["logit_scale"][0])), float(params["logit_bias"][0])
  sigmoid = lambda x: 1 / (1 + np.exp(-x))
  np.testing.assert_allclose(siglip.score(params, config, ids, mask, inputs),
                             100 * sigmoid(sign * scale + bias), atol=1e-3)
  cos100 = siglip.score(params, dataclasses.replace(config, score="cos100"), ids, mask, inputs)
  np.testing.assert_allclose(cos100, 100 * sign, atol=1e-3)


def test_load_errors(hf_default, tmp_path):
  _, model, directory, config, _ = hf_default
  helpers.assert_model_type_errors(siglip.load, tmp_path, "siglip2", "siglip")
  model.config.save_pretrained(str(tmp_path))  # A SigLIP config.json, no spiece.model.
  with pytest.raises(checkpoint_files.CheckpointFileError, match="no spiece.model"):
    siglip.load(str(tmp_path))
  shutil.copy(tokens.SIGLIP_TEST_SPM, tmp_path / "spiece.model")
  with pytest.raises(checkpoint_files.CheckpointFileError, match=r"no weights in"):
    siglip.load(str(tmp_path))
  helpers.wrong_width_message(
      siglip.load, directory, config,
      "text_model.embeddings.token_embedding.weight: (1000, 32), expects (1000, 64)")
  # A SentencePiece model whose pieces may cross spaces cannot be re-tokenized per word.
  from sentencepiece import sentencepiece_model_pb2
  proto = sentencepiece_model_pb2.ModelProto()
  proto.ParseFromString((tmp_path / "spiece.model").read_bytes())
  proto.trainer_spec.split_by_whitespace = False
  (tmp_path / "spiece.model").write_bytes(proto.SerializeToString())
  with pytest.raises(ValueError, match="split_by_whitespace=False"):
    siglip.load(str(tmp_path))
  shutil.copy(tokens.SIGLIP_TEST_SPM, tmp_path / "spiece.model")
  state = dict(model.state_dict())
  del state["vision_model.head.attention.in_proj_bias"]
  state["text_model.pooler.weight"] = torch.zeros(2, 2)
  torch.save(state, tmp_path / "pytorch_model.bin")
  with pytest.raises(common.CheckpointMismatch) as error:
    siglip.load(str(tmp_path))
  assert error.value.missing == ["vision_model/head/attention/in_proj_bias"]
  assert error.value.unexpected == ["text_model.pooler.weight"]


@pytest.mark.parametrize("height,width", [(48, 64), (375, 500), (20, 24), (32, 32)])
def test_preprocess_matches_hf_pil(height, width):
  """Against Hugging Face's PIL SiglipImageProcessor: within 1 uint8 level, on < 1% of values.

  (The default SiglipImageProcessor resizes with torchvision, which is not installed here.)
  """
  from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil
  processor = SiglipImageProcessorPil(size={"height": 32, "width": 32})
  levels = helpers.pil_levels(processor, siglip.preprocess, height, width, 32, 0.5)
  assert levels.max() < 1.01 and (levels > 0.01).mean() < 0.01


def test_pretrain_loss_matches_numpy_and_transformers(hf_default):
  """The pairwise sigmoid loss, recomputed in float64 and by SiglipModel(return_loss=True)."""
  _, model, _, config, params = hf_default
  ids, mask, pixels = _batch()
  batch = {"text_ids": ids, "text_mask": mask, "images": {"pixels": pixels}}
  loss, metrics = siglip.pretrain_loss(params, config, batch, jax.random.key(0))
  image = np.asarray(siglip.embed_images(params, config, batch["images"]["pixels"]), np.float64)
  text = np.asarray(siglip.embed_texts(params, config, batch["text_ids"], batch["text_mask"]),
                    np.float64)
  logits = (np.exp(float(params["logit_scale"][0])) * text @ image.T
            + float(params["logit_bias"][0]))
  labels = 2 * np.eye(N) - 1
  expected = np.mean(np.sum(np.log1p(np.exp(-labels * logits)), axis=1))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(metrics["accuracy/pairs"], np.mean((logits > 0) == (labels > 0)))
  full_ids = np.full((N, CONTEXT), PAD, np.int64)
  full_ids[:, :LENGTH] = ids
  pixel_values = np.asarray(siglip.preprocess(batch["images"]["pixels"], 32))
  with torch.no_grad():
    ref = model(input_ids=torch.from_numpy(full_ids), return_loss=True,
                pixel_values=torch.from_numpy(pixel_values.transpose(0, 3, 1, 2).copy()))
  np.testing.assert_allclose(loss, ref.loss.item(), rtol=1e-5)


def test_bfloat16_close(hf_default):
  _, _, _, config, params = hf_default
  ids, mask, pixels = _batch()
  bf16 = dataclasses.replace(config, dtype="bfloat16")
  fp32_scores = siglip.score(params, config, ids, mask,
                             siglip.image_inputs(params, config, {"pixels": pixels}))
  bf16_scores = siglip.score(params, bf16, ids, mask,
                             siglip.image_inputs(params, bf16, {"pixels": pixels}))
  gap = float(np.abs(np.asarray(fp32_scores) - np.asarray(bf16_scores)).max())
  print(f"bf16 vs fp32 score gap (100 x sigmoid scale, tiny model): {gap:.4f}")
  assert bf16_scores.dtype == jnp.float32
  assert 0 < gap < 1.0


def test_contract_and_configs():
  assert scorers.get("siglip") is siglip.SCORER
  assert (siglip.SCORER.objective, siglip.SCORER.image_kind) == ("contrastive", "pixels")
  base = siglip.default_config()
  assert (base.vision_width, base.patch_size, base.image_size, base.text_width) == (
      768, 16, 224, 768)
  assert (base.vocab_size, base.max_text_len, base.pad_id) == (32000, 64, 1)
  # transformers' SiglipConfig defaults are the base-patch16-224 sizes.
  from_hf = siglip.config_from_hf(transformers.SiglipConfig().to_dict())
  assert from_hf == base
  large = siglip.default_config("so400m-patch14-384")
  assert (large.vision_width, large.vision_layers, large.image_size) == (1152, 27, 384)
  with pytest.raises(ValueError, match="so400m-patch14-224"):
    siglip.default_config("so400m-patch14-224")
  with pytest.raises(ValueError, match="projection_size=32 differs"):
    siglip.Config(projection_size=32)
  with pytest.raises(KeyError, match="pixels"):
    siglip.image_inputs({}, base, {"region_feats": np.zeros((1, 2, 3))})


def test_tokenizer_and_text_format():
  config = siglip.tiny_config()
  tok = siglip.tokenizer(config)
  ids = tok("A Red circle, above the SKY!")["input_ids"]
  assert tok.convert_ids_to_tokens(ids) == ["▁a", "▁red", "▁circle", "▁above", "▁the", "▁sky",
                                            "</s>"]
  assert tok("a dog", padding="max_length")["input_ids"][-1] == PAD  # pads with </s> to 64
  assert len(tok("a dog", padding="max_length")["input_ids"]) == 64
  fmt = siglip.text_format(config)
  assert (fmt.add_bos, fmt.eos_id, fmt.pad_id, fmt.max_length) == (False, 1, 1, 64)
  assert fmt == tokens.text_format(tok, 64)
