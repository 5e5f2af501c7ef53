"""The Flax CLIP of scorers/clip.py: a port of Hugging Face's `CLIPModel`, and its image transform.

Submodules carry the names of the `CLIPModel` state-dict keys (`text_model.encoder.layers.N.
self_attn.q_proj`, `vision_model.pre_layrnorm`, `visual_projection`, ...), so `common.torch_to_flax`
maps a checkpoint with one value transform (the patch-embedding convolution, OIHW -> HWIO).

The text tower accepts any context T <= `context_length`. Under the causal mask the hidden state
at position p depends only on tokens 0..p, so the pooled EOT state for a context shortened to the
longest caption equals the one for the full 77-token context up to float rounding
(tests/test_clip.py checks it to 1e-6).

bf16: `dtype="bfloat16"` computes in bf16 with float32 params (LayerNorm statistics, attention
softmax, projections and the cosine in float32).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from scorers import common
from scorers import layers
from scorers import pixels as pixels_lib
from scorers.pixels import CLIP_MEAN, CLIP_STD


SOT_ID, EOT_ID = 49406, 49407  # The BPE vocabulary's specials; EOT is the largest id.
CLIP_S_WEIGHT = 2.5
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps its temperature at 100 while training.

ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),  # OpenAI CLIP.
    "gelu": layers.erf_gelu,
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
}


@dataclasses.dataclass(frozen=True)
class Config:
  """CLIP sizes and scoring options (defaults: ViT-B/32).

  `eos_token_id` picks the pooled position as Hugging Face does: 2 (legacy OpenAI configs) means
  the argmax of the ids, anything else the first position holding that id; both find the first
  EOT when EOT is the largest id, as in the real vocabulary.
  """
  vision_width: int = 768
  vision_layers: int = 12
  vision_heads: int = 12
  vision_mlp: int = 3072
  patch_size: int = 32
  image_size: int = 224
  text_width: int = 512
  text_layers: int = 12
  text_heads: int = 8
  text_mlp: int = 2048
  vocab_size: int = 49408
  context_length: int = 77
  projection_dim: int = 512
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  eos_token_id: int = EOT_ID
  logit_scale_init: float = math.log(1 / 0.07)
  max_text_len: int = 77  # The tokenizer's truncation length, SOT and EOT included.
  dtype: str = "float32"
  score: str = "cos100"  # "cos100" (100 x cosine) or "clip_s" (2.5 x max(cosine, 0)).
  prompt: str = ""  # E.g. "A photo depicts" (CLIP-S); put before every caption.

  def __post_init__(self):
    problems = config_problems(self, ("vision_width", "vision_heads"),
                               ("text_width", "text_heads"))
    if self.score not in ("cos100", "clip_s"):
      problems.append(f"score={self.score!r}: expected 'cos100' or 'clip_s'")
    if not 2 <= self.max_text_len <= self.context_length:
      problems.append(f"max_text_len={self.max_text_len}: expected 2..context_length "
                      f"({self.context_length})")
    if self.image_size % self.patch_size:
      problems.append(f"image_size={self.image_size} is not a multiple of "
                      f"patch_size={self.patch_size}")
    raise_config_problems("scorers/clip.py", problems)


def config_problems(config, *width_and_heads: tuple[str, str]) -> list[str]:
  """What is wrong with the fields every pixel model's Config has (`dtype`, `hidden_act`) and
  with each named width that its named head count must divide; [] when all is well."""
  problems = []
  if config.dtype not in ("float32", "bfloat16"):
    problems.append(f"dtype={config.dtype!r}: expected 'float32' or 'bfloat16'")
  if config.hidden_act not in ACTIVATIONS:
    problems.append(f"hidden_act={config.hidden_act!r}: expected one of {sorted(ACTIVATIONS)}")
  for width_field, heads_field in width_and_heads:
    width, heads = getattr(config, width_field), getattr(config, heads_field)
    if width % heads:
      problems.append(f"{width_field}={width} is not divisible by {heads_field}={heads}")
  return problems


def raise_config_problems(source: str, problems: list[str]) -> None:
  """Raises ValueError listing every problem of a Config at once (none: returns)."""
  if problems:
    raise ValueError(f"{source}: invalid Config: " + "; ".join(problems) + ".")


_VARIANTS = {
    "ViT-B/32": Config(),
    "ViT-L/14": Config(vision_width=1024, vision_layers=24, vision_heads=16, vision_mlp=4096,
                       patch_size=14, text_width=768, text_heads=12, text_mlp=3072,
                       projection_dim=768),
}


def default_config(variant: str | None = None) -> Config:
  """The OpenAI CLIP sizes: "ViT-B/32" (default) or "ViT-L/14"."""
  return common.variant_config(_VARIANTS, variant, "ViT-B/32", "scorers/clip_model.py")


def tiny_config() -> Config:
  """Two layers of width 64 per tower on 32-pixel images; real BPE ids, 77-token context."""
  return Config(vision_width=64, vision_layers=2, vision_heads=4, vision_mlp=256, patch_size=8,
                image_size=32, text_width=64, text_layers=2, text_heads=4, text_mlp=256,
                projection_dim=64)


# ---------------------------------------------------------------------------------------------
# The Flax modules.


def config_layer_norm(name: str, config, dtype) -> nn.LayerNorm:
  """A LayerNorm with the Config's `layer_norm_eps` (CLIP's and SigLIP's towers share one)."""
  return layers.layer_norm(name, dtype, config.layer_norm_eps)


def check_image_size(pixel_values: jax.Array, image_size: int, scorer: str) -> None:
  """Raises ValueError unless pixel_values is [N, image_size, image_size, 3]."""
  if pixel_values.shape[1:3] != (image_size, image_size):
    raise ValueError(f"scorers/{scorer}.py: images of {pixel_values.shape[1:3]} pixels; the model "
                     f"takes {image_size}x{image_size}. Use {scorer}.preprocess first.")


def patch_embeddings(pixel_values: jax.Array, width: int, patch_size: int, dtype,
                     use_bias: bool = True) -> jax.Array:
  """The `patch_embedding` convolution of a ViT: [N, S, S, 3] -> [N, P, width].

  Call inside a compact module. The patches come row-major over the grid, like PyTorch's
  flatten of [N, width, rows, cols].
  """
  patches = nn.Conv(width, (patch_size, patch_size), strides=patch_size, padding="VALID",
                    use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                    name="patch_embedding")(pixel_values)
  return patches.reshape(patches.shape[0], -1, width)


class CLIPAttention(nn.Module):
  """Multi-head self-attention with `q_proj`, `k_proj`, `v_proj`, `out_proj`.

  Through `layers.dot_product_attention` (cuDNN's fused kernel on a GPU, else XLA's), with the
  logits and softmax in float32; a fully masked query row (left padding) stays finite.
  """
  width: int
  heads: int
  dtype: Any = jnp.float32
  causal: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, key_mask: jax.Array | None) -> jax.Array:
    """x: [N, T, width]; key_mask: [N, T] (1 = a real token) or None -> [N, T, width]."""
    head_dim = self.width // self.heads

    def heads(name):
      y = layers.dense(self.width, name, self.dtype)(x)
      return y.reshape(y.shape[:-1] + (self.heads, head_dim))

    mask = None if key_mask is None else key_mask.astype(bool)[:, None, None, :]
    out = layers.dot_product_attention(heads("q_proj"), heads("k_proj"), heads("v_proj"),
                                       mask=mask, causal=self.causal)
    out = out.reshape(x.shape[:-1] + (self.width,))
    return layers.dense(self.width, "out_proj", self.dtype)(out)


class CLIPMLP(nn.Module):
  config: Config
  width: int
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = ACTIVATIONS[self.config.hidden_act](layers.dense(self.hidden, "fc1", self.dtype)(x))
    return layers.dense(self.width, "fc2", self.dtype)(x)


class CLIPEncoderLayer(nn.Module):
  """x + attn(layer_norm1(x)), then x + mlp(layer_norm2(x))."""
  config: Config
  width: int
  heads: int
  mlp: int
  dtype: Any = jnp.float32
  causal: bool = False

  @nn.compact
  def __call__(self, x, key_mask):
    h = config_layer_norm("layer_norm1", self.config, self.dtype)(x)
    x = x + CLIPAttention(self.width, self.heads, self.dtype, self.causal, name="self_attn")(
        h, key_mask)
    h = config_layer_norm("layer_norm2", self.config, self.dtype)(x)
    return x + CLIPMLP(self.config, self.width, self.mlp, self.dtype, name="mlp")(h)


class CLIPEncoder(nn.Module):
  """Pre-LN layers `layers_N` (`encoder.layers.N` in the checkpoints)."""
  config: Config
  width: int
  heads: int
  mlp: int
  num_layers: int
  dtype: Any = jnp.float32
  causal: bool = False  # the text tower's

  @nn.compact
  def __call__(self, x, key_mask):
    for i in range(self.num_layers):
      x = CLIPEncoderLayer(self.config, self.width, self.heads, self.mlp, self.dtype, self.causal,
                           name=f"layers_{i}")(x, key_mask)
    return x


class CLIPTextEmbeddings(nn.Module):
  """`token_embedding`(ids) + `position_embedding`(0..T-1)."""
  config: Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids):
    c = self.config
    embed = lambda n, name: nn.Embed(n, c.text_width, dtype=self.dtype, param_dtype=jnp.float32,
                                     name=name)
    return embed(c.vocab_size, "token_embedding")(ids) + embed(
        c.context_length, "position_embedding")(jnp.arange(ids.shape[1])[None])


class CLIPTextTransformer(nn.Module):
  """`embeddings` -> causal `encoder` -> `final_layer_norm` -> the state at the first EOT."""
  config: Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids, mask):
    """ids, mask: [N, T] int32, T <= context_length -> (pooled [N, width], hidden [N, T, width])."""
    c = self.config
    length = ids.shape[1]
    if length > c.context_length:
      raise ValueError(f"scorers/clip.py: text of {length} tokens; the model's context_length is "
                       f"{c.context_length}. Truncate the captions (Config.max_text_len).")
    x = CLIPTextEmbeddings(c, self.dtype, name="embeddings")(ids)
    x = CLIPEncoder(c, c.text_width, c.text_heads, c.text_mlp, c.text_layers, self.dtype,
                    causal=True, name="encoder")(x, mask)
    x = config_layer_norm("final_layer_norm", c, self.dtype)(x)
    if c.eos_token_id == 2:  # Legacy OpenAI configs: EOT is the largest id.
      eot = jnp.argmax(ids, axis=-1)
    else:
      eot = jnp.argmax(ids == c.eos_token_id, axis=-1)
    return jnp.take_along_axis(x, eot[:, None, None], axis=1)[:, 0], x


class CLIPVisionEmbeddings(nn.Module):
  """[`class_embedding`; `patch_embedding`(pixels)] + `position_embedding`."""
  config: Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pixel_values):
    c = self.config
    patches = patch_embeddings(pixel_values, c.vision_width, c.patch_size, self.dtype,
                               use_bias=False)
    n = patches.shape[0]
    cls = self.param("class_embedding", nn.initializers.normal(c.vision_width**-0.5),
                     (c.vision_width,), jnp.float32)
    cls = jnp.broadcast_to(cls.astype(self.dtype), (n, 1, c.vision_width))
    x = jnp.concatenate([cls, patches], axis=1)
    positions = nn.Embed(x.shape[1], c.vision_width, dtype=self.dtype, param_dtype=jnp.float32,
                         name="position_embedding")(jnp.arange(x.shape[1])[None])
    return x + positions


class CLIPVisionTransformer(nn.Module):
  """`embeddings` -> `pre_layrnorm` -> `encoder` -> `post_layernorm` of the class token."""
  config: Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pixel_values):
    """pixel_values: [N, S, S, 3] normalised -> (pooled [N, width], hidden [N, 1 + P, width])."""
    c = self.config
    check_image_size(pixel_values, c.image_size, "clip")
    x = CLIPVisionEmbeddings(c, self.dtype, name="embeddings")(pixel_values.astype(self.dtype))
    x = config_layer_norm("pre_layrnorm", c, self.dtype)(x)
    x = CLIPEncoder(c, c.vision_width, c.vision_heads, c.vision_mlp, c.vision_layers, self.dtype,
                    name="encoder")(x, None)
    return config_layer_norm("post_layernorm", c, self.dtype)(x[:, 0]), x


def unit_norm(x: jax.Array) -> jax.Array:
  """x / |x| over the last axis, in float32."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-30))


class Model(nn.Module):
  """CLIP: `text_model`, `vision_model`, `text_projection`, `visual_projection`, `logit_scale`."""
  config: Config

  def setup(self):
    c = self.config
    dtype = jnp.dtype(c.dtype)
    self.text_model = CLIPTextTransformer(c, dtype)
    self.vision_model = CLIPVisionTransformer(c, dtype)
    # Projections in float32: they are cheap and feed the cosine directly.
    self.text_projection = layers.dense(c.projection_dim, "text_projection", jnp.float32, False)
    self.visual_projection = layers.dense(c.projection_dim, "visual_projection", jnp.float32,
                                          False)
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(c.logit_scale_init),
                                  (), jnp.float32)

  def encode_text(self, text_ids, text_mask):
    """[N, T] int32 ids and mask -> dict: text_embeds [N, D] unit norm, text_pooled, text_hidden."""
    pooled, hidden = self.text_model(text_ids, text_mask)
    embeds = unit_norm(self.text_projection(pooled.astype(jnp.float32)))
    return {"text_embeds": embeds, "text_pooled": pooled, "text_hidden": hidden}

  def encode_image(self, pixel_values):
    """[N, S, S, 3] normalised pixels -> dict: image_embeds [N, D] unit norm, pooled, hidden."""
    pooled, hidden = self.vision_model(pixel_values)
    embeds = unit_norm(self.visual_projection(pooled.astype(jnp.float32)))
    return {"image_embeds": embeds, "image_pooled": pooled, "image_hidden": hidden}

  def __call__(self, text_ids, text_mask, image_inputs, deterministic: bool = True):
    """Similarity logits of each caption with its own image.

    Args:
      text_ids, text_mask: [N, T] int32.
      image_inputs: {"image_embeds": [N, D]} from `image_inputs`, or {"pixels": [N, H, W, 3]
        uint8} to run the vision tower here.
      deterministic: unused (CLIP has no dropout); kept for the scorer contract.

    Returns:
      (exp(logit_scale) * cos [N] float32, out_dict with the embeddings, pooled and hidden
      states and "cos").
    """
    del deterministic
    out = cosine_outputs(self, text_ids, text_mask, image_inputs, preprocess)
    return jnp.exp(self.logit_scale) * out["cos"], out

  def init_all(self, text_ids, text_mask, pixel_values):
    """Touches every parameter (for `init`)."""
    return self.encode_text(text_ids, text_mask), self.encode_image(pixel_values)


def cosine_outputs(model: nn.Module, text_ids, text_mask, image_inputs, preprocess_fn) -> dict:
  """The out_dict of a two-tower model's `__call__`, "cos" [N] float32 included.

  Args:
    model: the bound model, with `encode_text` and `encode_image` giving unit-norm
      "text_embeds" and "image_embeds".
    text_ids, text_mask: [N, T] int32.
    image_inputs: {"image_embeds": [N, D]}, or {"pixels": [N, H, W, 3] uint8} to run the vision
      tower here (after `preprocess_fn(pixels, image_size)`).
  """
  out = model.encode_text(text_ids, text_mask)
  if "image_embeds" in image_inputs:
    out["image_embeds"] = image_inputs["image_embeds"].astype(jnp.float32)
  else:
    pixel_values = preprocess_fn(image_inputs["pixels"], model.config.image_size)
    out.update(model.encode_image(pixel_values))
  out["cos"] = jnp.sum(out["text_embeds"] * out["image_embeds"], axis=-1)
  return out


# ---------------------------------------------------------------------------------------------
# Image preprocessing, done on the device.


@functools.partial(jax.jit, static_argnums=1)
def preprocess(pixels: jax.Array, image_size: int) -> jax.Array:
  """CLIP's image transform: [N, H, W, 3] uint8 RGB -> [N, S, S, 3] float32, S = image_size.

  Resizes the shorter side to S (bicubic; the longer to int(S * long / short)), center-crops
  S x S, scales to [0, 1] and normalises with CLIP's mean and std, like OpenAI's `_transform`
  and Hugging Face's CLIPImageProcessor. Implemented with `jax.image.scale_and_translate`
  (jittable) the way PIL resamples: the width first, then the height, each pass rounded and
  clipped to uint8 levels. Against Hugging Face's PIL-based CLIPImageProcessor (PIL bicubic) it
  differs by 1 uint8 level on fewer than 0.1% of the values when shrinking (500x375 -> 224),
  by up to 2 levels on fewer than 1% when enlarging noise (tests/test_clip.py::
  test_preprocess_matches_hf_pil); a value that lands on a rounding boundary may round either
  way between two compilations.
  """
  n, height, width, _ = pixels.shape
  if height <= width:
    new_h, new_w = image_size, int(image_size * width / height)
  else:
    new_h, new_w = int(image_size * height / width), image_size
  x = pixels.astype(jnp.float32)
  if new_w != width:
    x = pixels_lib.resize_axis(x, 2, new_w)
  if new_h != height:
    x = pixels_lib.resize_axis(x, 1, new_h)
  top = int(round((new_h - image_size) / 2.0))
  left = int(round((new_w - image_size) / 2.0))
  x = x[:, top:top + image_size, left:left + image_size]
  mean = jnp.asarray(CLIP_MEAN, jnp.float32)
  std = jnp.asarray(CLIP_STD, jnp.float32)
  return (x / 255.0 - mean) / std
