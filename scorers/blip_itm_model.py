"""The Flax BLIP of scorers/blip_itm.py: a port of Hugging Face's `BlipForImageTextRetrieval`
(its image-text matching path, `use_itm_head=True`).

Submodules carry the names of the checkpoint keys, so `common.torch_to_flax` maps a checkpoint
with one value transform (the patch convolution, OIHW -> HWIO):
  * `vision_model`: a ViT (pre-LN layers with a fused `self_attn.qkv` and `self_attn.projection`,
    `class_embedding` and a learned `position_embedding` [1, 1 + P, D] as plain parameters),
    then `post_layernorm` on every token: the patch embeddings [N, 1 + P, D] every caption
    cross-attends to (577 x 768 for ViT-B/16 at 384 pixels);
  * `text_encoder`: BERT (word + position embeddings, no token types; post-LN layers from
    scorers/layers.py) whose every layer adds a `crossattention` block (queries from the text,
    keys and values from the image) between self-attention and the feed-forward;
  * `itm_head`: Linear(D, 2) on the first token's last hidden state; index 1 means "match".

The image side is caption-independent, and so are the cross-attention keys and values of every
layer: `cross_kv` projects them once per image ([N, L, 1 + P, D] each), so that scoring a caption
runs only the text layers. At ViT-B/16 384 px sizes the K/V projections are about 8.2 GMACs per
caption, against about 3.9 for everything else of a 35-token caption.

The first token: BLIP's retrieval training and evaluation replace [CLS] by [ENC] before the ITM
pass (`encoder_input_ids[:, 0] = tokenizer.enc_token_id` in models/blip_retrieval.py and
train_retrieval.py); the demo module models/blip_itm.py and transformers'
`BlipForImageTextRetrieval` feed the tokenizer's [CLS] as is. `Config.first_token` picks: "enc"
(default, as the ITM head was trained) puts `enc_token_id` first whatever the ids hold, "cls"
leaves the ids alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from scorers import clip_model
from scorers import common
from scorers import layers
from scorers import pixels as pixels_lib

CLS_ID, SEP_ID, PAD_ID = 101, 102, 0
DEC_ID, ENC_ID = 30522, 30523  # Added after bert-base-uncased by BLIP's `init_tokenizer`.
MATCH_INDEX = 1  # BLIP: itm_labels = 1 for the positives; `softmax(itm_output)[:, 1]` scores.


@dataclasses.dataclass(frozen=True)
class Config:
  """BLIP ITM sizes and text settings (defaults: Salesforce/blip-itm-base-coco)."""
  vision_width: int = 768
  vision_layers: int = 12
  vision_heads: int = 12
  vision_mlp: int = 3072
  patch_size: int = 16
  image_size: int = 384
  hidden_act: str = "gelu"  # The vision MLP's; the text side is BERT's erf GELU.
  vision_eps: float = 1e-5
  vocab_size: int = 30524
  hidden_size: int = 768
  num_heads: int = 12
  intermediate_size: int = 3072
  num_layers: int = 12
  max_position: int = 512
  dropout_rate: float = 0.0  # hidden_dropout_prob and attention_probs_dropout_prob.
  max_text_len: int = 35  # BLIP's ITM and retrieval code: padding to 35, truncation.
  first_token: str = "enc"  # "enc" (BLIP's ITM training and evaluation) or "cls" (HF, demo).
  enc_token_id: int = ENC_ID
  cache_cross_kv: bool = True  # image_inputs gives per-layer cross K/V (else patch embeddings).
  dtype: str = "float32"
  vocab_path: str = ""  # "" = the bundled bert-base-uncased vocabulary.

  def __post_init__(self):
    problems = clip_model.config_problems(self, ("vision_width", "vision_heads"),
                                          ("hidden_size", "num_heads"))
    if self.first_token not in ("enc", "cls"):
      problems.append(f"first_token={self.first_token!r}: expected 'enc' or 'cls'")
    if not 2 <= self.max_text_len <= self.max_position:
      problems.append(f"max_text_len={self.max_text_len}: expected 2..max_position "
                      f"({self.max_position})")
    if self.image_size < self.patch_size:
      problems.append(f"image_size={self.image_size} is smaller than patch_size="
                      f"{self.patch_size}")
    clip_model.raise_config_problems("scorers/blip_itm.py", problems)

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def num_positions(self) -> int:
    """Image tokens: the class token and the patches (577 at 384 px, patch 16)."""
    return 1 + (self.image_size // self.patch_size) ** 2


_VARIANTS = {
    "base": Config(),
    "large": Config(vision_width=1024, vision_layers=24, vision_heads=16, vision_mlp=4096),
}


def default_config(variant: str | None = None) -> Config:
  """The released sizes: "base" (ViT-B/16, blip-itm-base-coco) or "large" (ViT-L/16)."""
  return common.variant_config(_VARIANTS, variant, "base", "scorers/blip_itm_model.py")


def tiny_config() -> Config:
  """Two narrow layers per side on 32-pixel images; keeps BLIP's real 30,524-token vocabulary."""
  return Config(vision_width=64, vision_layers=2, vision_heads=4, vision_mlp=128, patch_size=8,
                image_size=32, hidden_size=64, num_heads=4, intermediate_size=128, num_layers=2)


def preprocess(pixels: jax.Array, image_size: int) -> jax.Array:
  """BLIP's image transform: [N, H, W, 3] uint8 -> [N, S, S, 3] float32.

  Resize to S x S (bicubic, `pixels.resize_square`), /255, normalise with CLIP's mean and std,
  as BLIP's eval transform and Hugging Face's BlipImageProcessor. Against its PIL variant the
  result differs by at most 1 uint8 level (tests/test_blip_itm.py::test_preprocess_matches_hf_pil).
  """
  return pixels_lib.square_transform(pixels, image_size, pixels_lib.CLIP_MEAN,
                                     pixels_lib.CLIP_STD)


# ---------------------------------------------------------------------------------------------
# The vision transformer (`vision_model.*`).


def _vision_norm(name: str, config: Config, dtype) -> nn.LayerNorm:
  return layers.layer_norm(name, dtype, config.vision_eps)


class BlipAttention(nn.Module):
  """Self-attention with one fused `qkv` projection and an output `projection`."""
  config: Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = self.config
    head_dim = c.vision_width // c.vision_heads
    qkv = layers.dense(3 * c.vision_width, "qkv", self.dtype)(x)
    qkv = qkv.reshape(x.shape[:-1] + (3, c.vision_heads, head_dim))
    query, key, value = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
    out = layers.dot_product_attention(query, key, value)  # every patch is real: no mask
    return layers.dense(c.vision_width, "projection", self.dtype)(out.reshape(x.shape))


class BlipEncoderLayer(nn.Module):
  """x + self_attn(layer_norm1(x)), then x + mlp(layer_norm2(x))."""
  config: Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = self.config
    x = x + BlipAttention(c, self.dtype, name="self_attn")(_vision_norm("layer_norm1", c,
                                                                        self.dtype)(x))
    h = _vision_norm("layer_norm2", c, self.dtype)(x)
    return x + clip_model.CLIPMLP(c, c.vision_width, c.vision_mlp, self.dtype, name="mlp")(h)


class BlipVisionModel(nn.Module):
  """`embeddings` ([class; patches] + positions) -> `encoder.layers_N` -> `post_layernorm`."""
  config: Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pixel_values):
    """[N, S, S, 3] normalised pixels -> [N, 1 + P, vision_width] patch embeddings."""
    c = self.config
    clip_model.check_image_size(pixel_values, c.image_size, "blip_itm")
    x = BlipVisionEmbeddings(c, self.dtype, name="embeddings")(pixel_values.astype(self.dtype))
    x = BlipEncoder(c, self.dtype, name="encoder")(x)
    return _vision_norm("post_layernorm", c, self.dtype)(x)


class BlipEncoder(nn.Module):
  """`layers_N` (`encoder.layers.N` in the checkpoints)."""
  config: Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i in range(self.config.vision_layers):
      x = BlipEncoderLayer(self.config, self.dtype, name=f"layers_{i}")(x)
    return x


class BlipVisionEmbeddings(nn.Module):
  """[`class_embedding`; `patch_embedding`(pixels)] + `position_embedding`."""
  config: Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pixel_values):
    c = self.config
    width = c.vision_width
    patches = clip_model.patch_embeddings(pixel_values, width, c.patch_size, self.dtype)
    n = patches.shape[0]
    cls = self.param("class_embedding", nn.initializers.normal(0.02), (1, 1, width), jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (n, 1, width)), patches], 1)
    positions = self.param("position_embedding", nn.initializers.normal(0.02),
                           (1, c.num_positions, width), jnp.float32)
    return x + positions.astype(self.dtype)


# ---------------------------------------------------------------------------------------------
# The image-grounded text encoder (`text_encoder.*`) and the model.


class BlipTextEmbeddings(nn.Module):
  """`word_embeddings` + `position_embeddings` (0..T-1) -> `LayerNorm` -> dropout."""
  config: Config

  @nn.compact
  def __call__(self, ids, deterministic: bool = True):
    c, dtype = self.config, self.config.compute_dtype
    embed = lambda n, name: nn.Embed(n, c.hidden_size, dtype=dtype, param_dtype=jnp.float32,
                                     name=name)
    x = (embed(c.vocab_size, "word_embeddings")(ids)
         + embed(c.max_position, "position_embeddings")(jnp.arange(ids.shape[1])[None]))
    x = layers.layer_norm("LayerNorm", dtype)(x)
    return nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)


class CrossSelfAttention(nn.Module):
  """`query` from the text; `key`, `value` from the image, projectable once per image (`kv`)."""
  config: Config

  def setup(self):
    c, dtype = self.config, self.config.compute_dtype
    self.query = layers.dense(c.hidden_size, "query", dtype)
    self.key = layers.dense(c.hidden_size, "key", dtype)
    self.value = layers.dense(c.hidden_size, "value", dtype)
    self.dropout = nn.Dropout(c.dropout_rate)

  def kv(self, image_embeds):
    """[N, P, vision_width] -> (keys, values) [N, P, hidden_size] each."""
    return self.key(image_embeds), self.value(image_embeds)

  def __call__(self, hidden, keys, values, deterministic: bool = True):
    c = self.config
    head_dim = c.hidden_size // c.num_heads
    split = lambda x: x.reshape(x.shape[:-1] + (c.num_heads, head_dim))
    # Every image token is real: no mask. Dropout on the weights only in training.
    dropout = None if deterministic else (lambda w: self.dropout(w, deterministic=False))
    out = layers.dot_product_attention(
        split(self.query(hidden)), split(keys.astype(c.compute_dtype)),
        split(values.astype(c.compute_dtype)), None, dropout)
    return out.reshape(hidden.shape[:-1] + (c.hidden_size,))


class CrossAttention(nn.Module):
  """`crossattention`: `self` (CrossSelfAttention) + `output` (dense, dropout, residual LN)."""
  config: Config

  def setup(self):
    c = self.config
    self.self = CrossSelfAttention(c)
    self.output = layers.BertResidualOutput(c.hidden_size, c.dropout_rate, c.compute_dtype)

  def kv(self, image_embeds):
    return self.self.kv(image_embeds)

  def __call__(self, hidden, keys, values, deterministic: bool = True):
    attended = self.self(hidden, keys, values, deterministic)
    return self.output(attended, hidden, deterministic)


class BlipTextLayer(nn.Module):
  """`attention` (self) -> `crossattention` (to the image) -> `intermediate` -> `output`."""
  config: Config

  def setup(self):
    c, dtype = self.config, self.config.compute_dtype
    self.attention = layers.BertAttention(c.hidden_size, c.num_heads, c.dropout_rate, dtype)
    self.crossattention = CrossAttention(c)
    self.intermediate = layers.BertIntermediate(c.intermediate_size, dtype)
    self.output = layers.BertResidualOutput(c.hidden_size, c.dropout_rate, dtype)

  def kv(self, image_embeds):
    return self.crossattention.kv(image_embeds)

  def __call__(self, hidden, bias, keys, values, deterministic: bool = True):
    hidden = self.attention(hidden, bias, deterministic=deterministic)
    hidden = self.crossattention(hidden, keys, values, deterministic)
    return self.output(self.intermediate(hidden), hidden, deterministic)


class BlipTextEncoder(nn.Module):
  """`encoder.layer_N`."""
  config: Config

  def setup(self):
    self.layer = [BlipTextLayer(self.config) for _ in range(self.config.num_layers)]


class BlipTextModel(nn.Module):
  """`text_encoder`: `embeddings` and `encoder` (no pooler in the ITM model)."""
  config: Config

  def setup(self):
    self.embeddings = BlipTextEmbeddings(self.config)
    self.encoder = BlipTextEncoder(self.config)

  def cross_kv(self, image_embeds):
    """[N, P, vision_width] -> (keys, values) [N, num_layers, P, hidden_size] each."""
    pairs = [layer.kv(image_embeds) for layer in self.encoder.layer]
    return jnp.stack([k for k, _ in pairs], 1), jnp.stack([v for _, v in pairs], 1)

  def __call__(self, ids, mask, keys, values, deterministic: bool = True):
    """ids, mask: [N, T]; keys, values: [N, L, P, D] -> last hidden states [N, T, D]."""
    hidden = self.embeddings(ids, deterministic)
    bias = layers.attention_bias(mask, self.config.compute_dtype)
    for i, layer in enumerate(self.encoder.layer):
      hidden = layer(hidden, bias, keys[:, i], values[:, i], deterministic)
    return hidden


class Model(nn.Module):
  """BLIP's ITM model: `vision_model`, `text_encoder`, `itm_head`.

  `__call__(text_ids, text_mask, image_inputs, deterministic=True)`:
    text_ids, text_mask: [N, T] int32 ([ENC] or [CLS], words, [SEP], zero-padded).
    image_inputs: {"cross_key", "cross_value": [N, L, 1 + P, D]} (from `image_inputs` with
      `cache_cross_kv`), {"image_embeds": [N, 1 + P, vision_width]}, or {"pixels": [N, H, W, 3]
      uint8}.
  Returns (ITM logits [N, 2] float32, out) with out["text_hidden"] [N, T, D] and, when computed
  here, out["image_embeds"].
  """
  config: Config

  def setup(self):
    c = self.config
    self.vision_model = BlipVisionModel(c, c.compute_dtype)
    self.text_encoder = BlipTextModel(c)
    self.itm_head = layers.dense(2, "itm_head", c.compute_dtype)

  def encode_image(self, pixel_values):
    """[N, S, S, 3] normalised pixels -> [N, 1 + P, vision_width] patch embeddings."""
    return self.vision_model(pixel_values)

  def cross_kv(self, image_embeds):
    return self.text_encoder.cross_kv(image_embeds)

  def match(self, text_ids, text_mask, keys, values, deterministic: bool = True):
    """ITM logits [N, 2] from the text and every layer's image keys and values."""
    c = self.config
    if c.first_token == "enc":
      text_ids = jnp.asarray(text_ids).at[:, 0].set(c.enc_token_id)
    hidden = self.text_encoder(text_ids, text_mask, keys, values, deterministic)
    return self.itm_head(hidden[:, 0]).astype(jnp.float32), {"text_hidden": hidden}

  def __call__(self, text_ids, text_mask, image_inputs, deterministic: bool = True):
    out = {}
    if "cross_key" in image_inputs:
      keys, values = image_inputs["cross_key"], image_inputs["cross_value"]
    else:
      embeds = image_inputs.get("image_embeds")
      if embeds is None:
        embeds = self.encode_image(preprocess(image_inputs["pixels"], self.config.image_size))
      out["image_embeds"] = embeds
      keys, values = self.cross_kv(embeds)
    logits, text_out = self.match(text_ids, text_mask, keys, values, deterministic)
    return logits, {**out, **text_out}
