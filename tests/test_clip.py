"""Tests of the CLIP scorer (scorers/clip.py).

Parity is against `transformers.CLIPModel` (PyTorch) built from random tiny configs, saved with
`save_pretrained` (or as an old-style `pytorch_model.bin`) and read back with `clip.load`.
Tolerances: 1e-5 absolute on embeddings, hidden states and logits (float32); 1e-6 between a
shortened and the full 77-token context; preprocessing within 2 uint8 levels of PIL.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scorers import checkpoint_files, clip, common, tokens
import scorers
from tests import helpers

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 600
SOT, EOT = VOCAB - 2, VOCAB - 1  # As in the real BPE vocabulary, EOT is the largest id.

# Two checkpoints that differ in everything that has a code path: pooling rule, activation,
# file format (and the old position_ids buffers), padding id.
VARIANTS = {
    "safetensors": dict(eos_token_id=EOT, hidden_act="quick_gelu", pad_id=EOT),
    "legacy_bin": dict(eos_token_id=2, hidden_act="gelu", pad_id=0),
}


def _hf_config(eos_token_id, hidden_act):
  # Widths, heads and depths differ between the towers so a mix-up changes shapes.
  text = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=4, max_position_embeddings=77, hidden_act=hidden_act,
              eos_token_id=eos_token_id, bos_token_id=SOT, pad_token_id=1)
  vision = dict(hidden_size=48, intermediate_size=40, num_hidden_layers=3, num_attention_heads=3,
                image_size=32, patch_size=8, hidden_act=hidden_act)
  return transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)


def _make_checkpoint(name, tmp_path_factory):
  """(variant dict, torch model, directory, our config, our params)."""
  variant = VARIANTS[name]
  torch.manual_seed(0)
  model = transformers.CLIPModel(_hf_config(variant["eos_token_id"], variant["hidden_act"]))
  model = helpers.perturb(model.eval())
  directory = str(tmp_path_factory.mktemp(name))
  helpers.save_hf(model, directory, legacy_bin=name == "legacy_bin",
                  position_ids={"text_model.embeddings.position_ids": 77,
                                "vision_model.embeddings.position_ids": 17})
  config, params = clip.load(directory)
  return variant, model, directory, config, params


hf_checkpoint, hf_default = helpers.checkpoint_fixtures(_make_checkpoint, VARIANTS)


def _texts(rng, n, length, pad_id):
  """[n, length] ids SOT w... EOT pad..., every length from 2 to `length` possible."""
  lengths = rng.integers(2, length + 1, n)
  lengths[0] = length  # At least one caption fills the context.
  ids = np.full((n, length), pad_id, np.int64)
  mask = np.zeros((n, length), np.int64)
  for i, l in enumerate(lengths):
    ids[i, 0], ids[i, 1:l - 1], ids[i, l - 1] = SOT, rng.integers(3, VOCAB - 3, l - 2), EOT
    mask[i, :l] = 1
  return ids, mask


def _forward(config, params, ids, mask, pixel_values):
  return jax.jit(lambda p, i, m, x: clip.Model(config).apply(
      {"params": p}, i, m, x, method=clip.Model.init_all))(params, ids, mask, pixel_values)


@pytest.mark.parametrize("n,length", [(1, 4), (5, 11)])
def test_parity_with_transformers(hf_checkpoint, n, length):
  variant, model, _, config, params = hf_checkpoint
  rng = np.random.default_rng(n)
  ids, mask = _texts(rng, n, length, variant["pad_id"])
  # Already at the model's size: resizing rounds to uint8 levels, and a value at a rounding
  # boundary may go either way between two compilations (preprocess has its own test).
  pixels = rng.integers(0, 256, (n, 32, 32, 3), np.uint8)
  pixel_values = np.asarray(clip.preprocess(pixels, config.image_size))
  text, image = _forward(config, params, ids.astype(np.int32), mask.astype(np.int32),
                         pixel_values)
  inputs = dict(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
  pixel_values_nchw = torch.from_numpy(pixel_values.transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    ref = model(**inputs, pixel_values=pixel_values_nchw)
    # In transformers 5 the CLIPModel output's pooler_output is already projected: ask the towers.
    ref_text, ref_image = model.text_model(**inputs), model.vision_model(pixel_values_nchw)
  close = lambda ours, theirs: np.testing.assert_allclose(
      np.asarray(ours), theirs.numpy(), rtol=0, atol=1e-5)
  close(text["text_embeds"], ref.text_embeds)
  close(image["image_embeds"], ref.image_embeds)
  close(text["text_pooled"], ref_text.pooler_output)
  close(text["text_hidden"], ref_text.last_hidden_state)
  close(image["image_pooled"], ref_image.pooler_output)
  close(image["image_hidden"], ref_image.last_hidden_state)
  logits = np.exp(np.asarray(params["logit_scale"])) * (
      np.asarray(text["text_embeds"]) @ np.asarray(image["image_embeds"]).T)
  close(logits, ref.logits_per_text)
  # The scorer path: image embeddings once, then the text tower only.
  inputs = clip.image_inputs(params, config, {"pixels": pixels})
  scores = clip.score(params, config, ids.astype(np.int32), mask.astype(np.int32), inputs)
  expected = 100 * (ref.text_embeds * ref.image_embeds).sum(-1).numpy()
  np.testing.assert_allclose(np.asarray(scores), expected, rtol=0, atol=1e-3)  # 100 x 1e-5.


def test_short_context_equals_full_context(hf_default):
  """Causal mask: the EOT state of a context of length L equals the 77-context one (to 1e-6)."""
  variant, _, _, config, params = hf_default
  ids, mask = _texts(np.random.default_rng(7), 6, 9, variant["pad_id"])
  full_ids = np.full((6, config.context_length), variant["pad_id"], np.int32)
  full_mask = np.zeros_like(full_ids)
  full_ids[:, :9], full_mask[:, :9] = ids, mask
  short = clip.embed_texts(params, config, ids.astype(np.int32), mask.astype(np.int32))
  full = clip.embed_texts(params, config, full_ids, full_mask)
  assert np.abs(np.asarray(short) - np.asarray(full)).max() < 1e-6
  assert np.abs(np.asarray(short)).max() > 0.1  # Not trivially zero.


def test_model_call_with_pixels_or_embeddings(hf_default):
  variant, _, _, config, params = hf_default
  rng = np.random.default_rng(3)
  ids, mask = _texts(rng, 3, 6, variant["pad_id"])
  pixels = rng.integers(0, 256, (3, 32, 32, 3), np.uint8)
  model = clip.Model(config)
  apply = jax.jit(lambda p, i, m, x: model.apply({"params": p}, i, m, x))
  from_pixels, out = apply(params, ids, mask, {"pixels": pixels})
  embeds = clip.image_inputs(params, config, {"pixels": pixels})
  from_embeds, _ = apply(params, ids, mask, embeds)
  np.testing.assert_allclose(from_pixels, from_embeds, rtol=0, atol=1e-5)
  np.testing.assert_allclose(np.exp(params["logit_scale"]) * out["cos"], from_pixels, rtol=1e-6)


def test_score_scales(hf_default):
  """cos = +1 / -1 by construction: cos100 gives +-100, clip_s gives 2.5 / 0."""
  _, _, _, config, params = hf_default
  ids = np.array([[SOT, 320, 123, EOT]] * 2, np.int32)
  mask = np.ones_like(ids)
  text = np.asarray(clip.embed_texts(params, config, ids, mask))
  inputs = {"image_embeds": np.stack([text[0], -text[1]])}
  cos100 = clip.score(params, config, ids, mask, inputs)
  np.testing.assert_allclose(cos100, [100.0, -100.0], atol=1e-3)
  clip_s = clip.score(params, dataclasses.replace(config, score="clip_s"), ids, mask, inputs)
  np.testing.assert_allclose(clip_s, [2.5, 0.0], atol=1e-5)


def test_load_errors(hf_checkpoint, tmp_path):
  variant, model, directory, config, _ = hf_checkpoint
  error = helpers.assert_model_type_errors(clip.load, tmp_path, "bert", "clip")
  assert str(tmp_path) in str(error.value)
  model.config.save_pretrained(str(tmp_path))  # A CLIP config.json but no weights.
  with pytest.raises(checkpoint_files.CheckpointFileError, match=r"no weights in .*model.safetensors"):
    clip.load(str(tmp_path))
  # Sizes that disagree with the weights: every mis-shaped key is listed with both shapes.
  message = helpers.wrong_width_message(
      clip.load, directory, config,
      "text_model.embeddings.token_embedding.weight: (600, 32), expects (600, 64)")
  assert directory in message and "wrong shapes" in message
  # A key the model does not have (a head we do not use) is reported, not silently dropped.
  state = dict(model.state_dict())
  state["itm_head.weight"] = torch.zeros(2, 24)
  torch.save(state, tmp_path / "pytorch_model.bin")
  with pytest.raises(common.CheckpointMismatch, match=r"unexpected[\s\S]*itm_head.weight"):
    clip.load(str(tmp_path))


@pytest.mark.parametrize("height,width,size", [(48, 64, 32), (120, 160, 32), (20, 24, 32),
                                               (33, 47, 32), (32, 32, 32), (375, 500, 224)])
def test_preprocess_matches_hf_pil(height, width, size):
  """Against Hugging Face's PIL CLIPImageProcessor: within 2 uint8 levels, on < 1% of values."""
  from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
  processor = CLIPImageProcessorPil(size={"shortest_edge": size},
                                    crop_size={"height": size, "width": size})
  levels = helpers.pil_levels(processor, clip.preprocess, height, width, size, clip.CLIP_STD)
  assert levels.max() < 2.01 and (levels > 0.01).mean() < 0.01


@pytest.fixture(scope="module")
def tiny():
  config = clip.tiny_config()
  return config, clip.init_params(config, jax.random.key(0))


def test_bfloat16_close(tiny):
  config, params = tiny
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (8, 64, 64, 3), np.uint8)
  ids = np.concatenate([np.full((8, 1), clip.SOT_ID), rng.integers(300, 40000, (8, 10)),
                        np.full((8, 1), clip.EOT_ID)], axis=1).astype(np.int32)
  mask = np.ones_like(ids)
  bf16 = dataclasses.replace(config, dtype="bfloat16")
  fp32_scores = clip.score(params, config, ids, mask, clip.image_inputs(params, config,
                                                                        {"pixels": pixels}))
  bf16_scores = clip.score(params, bf16, ids, mask, clip.image_inputs(params, bf16,
                                                                      {"pixels": pixels}))
  gap = float(np.abs(np.asarray(fp32_scores) - np.asarray(bf16_scores)).max())
  print(f"bf16 vs fp32 score gap (100 x cos scale, tiny model): {gap:.4f}")
  assert bf16_scores.dtype == jnp.float32
  assert 0 < gap < 1.0


def _pretrain_batch():
  rng = np.random.default_rng(1)
  ids = rng.integers(300, 40000, (4, 6)).astype(np.int32)
  ids[:, 0], ids[:, -1] = clip.SOT_ID, clip.EOT_ID
  return {"text_ids": ids, "text_mask": np.ones_like(ids),
          "images": {"pixels": rng.integers(0, 256, (4, 48, 48, 3), np.uint8)}}


def test_pretrain_loss_matches_numpy(tiny):
  """The symmetric InfoNCE and retrieval accuracy, recomputed in float64 from the embeddings."""
  config, params = tiny
  batch = _pretrain_batch()
  loss, metrics = clip.pretrain_loss(params, config, batch, jax.random.key(0))
  image = np.asarray(clip.embed_images(params, config, batch["images"]["pixels"]), np.float64)
  text = np.asarray(clip.embed_texts(params, config, batch["text_ids"], batch["text_mask"]),
                    np.float64)
  logits = np.exp(float(params["logit_scale"])) * image @ text.T
  log_softmax = lambda x, axis: x - np.log(np.exp(x).sum(axis, keepdims=True))
  expected = -0.5 * (np.diag(log_softmax(logits, 1)).mean()
                     + np.diag(log_softmax(logits, 0)).mean())
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(metrics["accuracy/image_to_text"],
                             (logits.argmax(1) == np.arange(4)).mean())
  np.testing.assert_allclose(metrics["accuracy/text_to_image"],
                             (logits.argmax(0) == np.arange(4)).mean())


@pytest.mark.slow  # One compile of the gradient through both towers (~20 s on 2 busy cores).
def test_pretrain_loss_learns(tiny):
  """15 Adam steps on 4 pairs: the loss halves and every image retrieves its caption."""
  import optax
  config, params = tiny
  batch = _pretrain_batch()
  optimizer = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state):
    (loss, metrics), grads = jax.value_and_grad(
        lambda p: clip.pretrain_loss(p, config, batch, None), has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss, metrics

  opt_state = optimizer.init(params)
  losses = []
  for _ in range(15):
    params, opt_state, loss, metrics = step(params, opt_state)
    losses.append(float(loss))
  assert losses[-1] < 0.5 * losses[0]
  assert float(metrics["accuracy/image_to_text"]) == 1.0


def test_contract():
  assert scorers.get("clip") is clip.SCORER
  assert (clip.SCORER.name, clip.SCORER.objective) == ("clip", "contrastive")
  base, large = clip.default_config(), clip.default_config("ViT-L/14")
  assert (base.vision_width, base.patch_size, base.text_width, base.projection_dim) == (
      768, 32, 512, 512)
  assert (large.vision_width, large.vision_layers, large.patch_size, large.projection_dim) == (
      1024, 24, 14, 768)
  # transformers' CLIPConfig defaults are the ViT-B/32 sizes.
  from_hf = clip.config_from_hf(transformers.CLIPConfig().to_dict())
  assert dataclasses.replace(from_hf, logit_scale_init=base.logit_scale_init) == base
  assert abs(from_hf.logit_scale_init - base.logit_scale_init) < 1e-4  # ln(1 / 0.07), rounded.
  assert clip.tiny_config().vocab_size == 49408 and clip.tiny_config().context_length == 77
  hash(base)  # Frozen: usable as a static jit argument.
  with pytest.raises(ValueError, match="ViT-H"):
    clip.default_config("ViT-H/14")
  with pytest.raises(ValueError, match="score='cosine'"):
    clip.Config(score="cosine")
  with pytest.raises(KeyError, match="pixels"):
    clip.image_inputs({}, base, {"region_feats": np.zeros((1, 2, 3))})


def test_tokenizer_and_text_format():
  config = dataclasses.replace(clip.tiny_config(), prompt="A photo depicts", max_text_len=32)
  tok = clip.tokenizer(config)
  assert tok("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
  fmt = clip.text_format(config)
  assert isinstance(fmt, tokens.TextFormat)
  assert (fmt.bos_id, fmt.eos_id, fmt.pad_id, fmt.max_length, fmt.prompt) == (
      49406, 49407, 49407, 32, "A photo depicts")
