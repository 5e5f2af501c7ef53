"""The Flax SigLIP of scorers/siglip.py: a port of Hugging Face's `SiglipModel`.

Submodules carry the names of the `SiglipModel` state-dict keys (`text_model.encoder.layers.N.
self_attn.q_proj`, `text_model.head`, `vision_model.head.attention.in_proj_weight`, ...), so
`common.torch_to_flax` maps a checkpoint with one value transform (the patch convolution, OIHW
-> HWIO). The encoder layers are CLIP's (scorers/clip_model.py: same pre-LN block, same key
names); what differs from CLIP, checked in transformers' `modeling_siglip.py`:
  * text: no causal mask, and the pooled state is the LAST position (`last_hidden_state[:, -1]`,
    "which may be padding"), through a `head` Linear; no BOS, `</s>` at the end of the caption.
    The last position is a padding slot unless the caption fills the context, so the text is
    padded to `max_text_len` (64, the processor's `padding="max_length"`) with `pad_id` before
    the tower runs, whatever width the caller gives;
  * text mask: SigLIP was trained (big_vision) and converted without an attention mask, the
    padding attended to like any token; transformers 5's tokenizer returns an attention mask
    and `model(**inputs)` then hides the padding keys. `Config.text_mask` picks: False (the
    default, the original's convention) ignores `text_mask`; True applies it;
  * image: patch convolution with bias, learned positions, no class token, `post_layernorm`,
    then the multi-head attention pooling head (`head`: a learned `probe` query attends over
    the patches with `torch.nn.MultiheadAttention`, then `layernorm` and a residual `mlp`);
    no projection after it;
  * logits = cos(text, image) * exp(`logit_scale`) + `logit_bias` (both shape [1]); the
    match probability is sigmoid(logits) (the pairwise sigmoid loss).

bf16: `dtype="bfloat16"` computes in bf16 with float32 params (LayerNorm statistics, softmax,
the cosine and the logits in float32).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from scorers import clip_model
from scorers import common
from scorers import layers
from scorers import pixels as pixels_lib

PAD_ID = 1  # `</s>`: SigLIP's tokenizer pads with its end token (T5's c4_en SentencePiece).


@dataclasses.dataclass(frozen=True)
class Config:
  """SigLIP sizes and scoring options (defaults: google/siglip-base-patch16-224).

  `projection_size` is the text head's output width; the image side has no projection, so it
  must equal `vision_width`. `spm_path` is the SentencePiece model the tokenizer is built from
  ("" = the 1,000-piece test model in scorers/assets/, the synthetic world's); `load` sets it to
  the checkpoint directory's `spiece.model`.
  """
  vision_width: int = 768
  vision_layers: int = 12
  vision_heads: int = 12
  vision_mlp: int = 3072
  patch_size: int = 16
  image_size: int = 224
  text_width: int = 768
  text_layers: int = 12
  text_heads: int = 12
  text_mlp: int = 3072
  vocab_size: int = 32000
  context_length: int = 64
  projection_size: int = 768
  hidden_act: str = "gelu_pytorch_tanh"
  layer_norm_eps: float = 1e-6
  logit_scale_init: float = math.log(10.0)  # The SigLIP paper's initial t' and b.
  logit_bias_init: float = -10.0
  pad_id: int = PAD_ID
  max_text_len: int = 64  # Padding and truncation length, `</s>` included.
  text_mask: bool = False  # Hide padding keys (transformers 5 style); False as trained.
  dtype: str = "float32"
  score: str = "prob100"  # "prob100" (100 x sigmoid(logit)) or "cos100" (100 x cosine).
  prompt: str = ""  # E.g. "a photo of"; put before every caption.
  spm_path: str = ""

  def __post_init__(self):
    problems = clip_model.config_problems(self, ("vision_width", "vision_heads"),
                                          ("text_width", "text_heads"))
    if self.score not in ("prob100", "cos100"):
      problems.append(f"score={self.score!r}: expected 'prob100' or 'cos100'")
    if not 1 <= self.max_text_len <= self.context_length:
      problems.append(f"max_text_len={self.max_text_len}: expected 1..context_length "
                      f"({self.context_length})")
    if self.image_size < self.patch_size:  # 384 / 14 is fine: the convolution drops the rest.
      problems.append(f"image_size={self.image_size} is smaller than "
                      f"patch_size={self.patch_size}")
    if self.projection_size != self.vision_width:
      problems.append(f"projection_size={self.projection_size} differs from vision_width="
                      f"{self.vision_width}; the cosine needs both embeddings the same width")
    clip_model.raise_config_problems("scorers/siglip.py", problems)

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2


_VARIANTS = {
    "base-patch16-224": Config(),
    "so400m-patch14-384": Config(vision_width=1152, vision_layers=27, vision_heads=16,
                                 vision_mlp=4304, patch_size=14, image_size=384, text_width=1152,
                                 text_layers=27, text_heads=16, text_mlp=4304,
                                 projection_size=1152),
}


def default_config(variant: str | None = None) -> Config:
  """The released sizes: "base-patch16-224" (default) or "so400m-patch14-384"."""
  return common.variant_config(_VARIANTS, variant, "base-patch16-224", "scorers/siglip_model.py")


def tiny_config() -> Config:
  """Two layers of width 64 per tower on 32-pixel images, the test tokenizer's 1,000 pieces."""
  return Config(vision_width=64, vision_layers=2, vision_heads=4, vision_mlp=256, patch_size=8,
                image_size=32, text_width=64, text_layers=2, text_heads=4, text_mlp=256,
                vocab_size=1000, projection_size=64)


def preprocess(pixels: jax.Array, image_size: int) -> jax.Array:
  """SigLIP's image transform: [N, H, W, 3] uint8 -> [N, S, S, 3] float32 in [-1, 1].

  Resize to S x S (bicubic, `pixels.resize_square`), /255, (x - 0.5) / 0.5, as Hugging Face's
  SiglipImageProcessor. Against its PIL variant the result differs by at most 1 uint8 level
  (measured in tests/test_siglip.py::test_preprocess_matches_hf_pil).
  """
  return pixels_lib.square_transform(pixels, image_size, pixels_lib.HALF, pixels_lib.HALF)


# ---------------------------------------------------------------------------------------------
# The Flax modules.


class SiglipTextTransformer(nn.Module):
  """`embeddings` -> `encoder` (no causal mask) -> `final_layer_norm` -> `head`(last position)."""
  config: Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids, mask):
    """ids, mask: [N, T] int32 (T = max_text_len) -> (pooled [N, projection], hidden [N, T, D])."""
    c = self.config
    x = clip_model.CLIPTextEmbeddings(c, self.dtype, name="embeddings")(ids)
    key_mask = mask if c.text_mask else None
    x = clip_model.CLIPEncoder(c, c.text_width, c.text_heads, c.text_mlp, c.text_layers,
                               self.dtype, name="encoder")(x, key_mask)
    x = clip_model.config_layer_norm("final_layer_norm", c, self.dtype)(x)
    return layers.dense(c.projection_size, "head", self.dtype)(x[:, -1]), x


class MultiheadAttention(nn.Module):
  """`torch.nn.MultiheadAttention`: one packed `in_proj_weight` [3D, D] and `in_proj_bias`,
  kept in PyTorch's layout so the checkpoint loads as is, and `out_proj`."""
  width: int
  heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, query, context):
    """query: [N, Q, D]; context: [N, K, D] -> [N, Q, D]."""
    d, head_dim = self.width, self.width // self.heads
    weight = self.param("in_proj_weight", nn.initializers.xavier_uniform(), (3 * d, d),
                        jnp.float32).astype(self.dtype)
    bias = self.param("in_proj_bias", nn.initializers.zeros, (3 * d,),
                      jnp.float32).astype(self.dtype)

    def heads(x, part):
      y = x @ weight[part * d:(part + 1) * d].T + bias[part * d:(part + 1) * d]
      return y.reshape(y.shape[:-1] + (self.heads, head_dim))

    q, k, v = heads(query, 0), heads(context, 1), heads(context, 2)
    logits = jnp.einsum("nqhd,nkhd->nhqk", q * head_dim**-0.5, k).astype(jnp.float32)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("nhqk,nkhd->nqhd", weights, v).reshape(query.shape[:-1] + (d,))
    return layers.dense(d, "out_proj", self.dtype)(out)


class SiglipMultiheadAttentionPoolingHead(nn.Module):
  """`probe` attends over the patches (`attention`), then x + `mlp`(`layernorm`(x))."""
  config: Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, hidden):
    c = self.config
    probe = self.param("probe", nn.initializers.normal(1.0), (1, 1, c.vision_width), jnp.float32)
    probe = jnp.broadcast_to(probe.astype(self.dtype), (hidden.shape[0], 1, c.vision_width))
    x = MultiheadAttention(c.vision_width, c.vision_heads, self.dtype, name="attention")(
        probe, hidden)
    h = clip_model.config_layer_norm("layernorm", c, self.dtype)(x)
    x = x + clip_model.CLIPMLP(c, c.vision_width, c.vision_mlp, self.dtype, name="mlp")(h)
    return x[:, 0]


class SiglipVisionEmbeddings(nn.Module):
  """`patch_embedding`(pixels) (a convolution with bias) + `position_embedding`."""
  config: Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pixel_values):
    c = self.config
    patches = clip_model.patch_embeddings(pixel_values, c.vision_width, c.patch_size, self.dtype)
    positions = nn.Embed(c.num_patches, c.vision_width, dtype=self.dtype,
                         param_dtype=jnp.float32, name="position_embedding")(
                             jnp.arange(c.num_patches)[None])
    return patches + positions


class SiglipVisionTransformer(nn.Module):
  """`embeddings` -> `encoder` -> `post_layernorm` -> attention-pooling `head`."""
  config: Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pixel_values):
    """pixel_values: [N, S, S, 3] normalised -> (pooled [N, D], hidden [N, P, D])."""
    c = self.config
    clip_model.check_image_size(pixel_values, c.image_size, "siglip")
    x = SiglipVisionEmbeddings(c, self.dtype, name="embeddings")(pixel_values.astype(self.dtype))
    x = clip_model.CLIPEncoder(c, c.vision_width, c.vision_heads, c.vision_mlp, c.vision_layers,
                               self.dtype, name="encoder")(x, None)
    x = clip_model.config_layer_norm("post_layernorm", c, self.dtype)(x)
    return SiglipMultiheadAttentionPoolingHead(c, self.dtype, name="head")(x), x


def pad_text(ids: jax.Array, mask: jax.Array, config: Config) -> tuple[jax.Array, jax.Array]:
  """Pads [N, T] ids (with `pad_id`) and mask (with 0) to [N, max_text_len]."""
  width = ids.shape[1]
  if width > config.max_text_len:
    raise ValueError(f"scorers/siglip.py: text of {width} tokens; Config.max_text_len is "
                     f"{config.max_text_len}. Truncate the captions to it (the tokenizer's "
                     "max_length).")
  extra = config.max_text_len - width
  if extra:
    ids = jnp.pad(ids, ((0, 0), (0, extra)), constant_values=config.pad_id)
    mask = jnp.pad(mask, ((0, 0), (0, extra)))
  return ids, mask


class Model(nn.Module):
  """SigLIP: `text_model`, `vision_model`, `logit_scale`, `logit_bias`."""
  config: Config

  def setup(self):
    c, dtype = self.config, jnp.dtype(self.config.dtype)
    self.text_model = SiglipTextTransformer(c, dtype)
    self.vision_model = SiglipVisionTransformer(c, dtype)
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(c.logit_scale_init),
                                  (1,), jnp.float32)
    self.logit_bias = self.param("logit_bias", nn.initializers.constant(c.logit_bias_init),
                                 (1,), jnp.float32)

  def encode_text(self, text_ids, text_mask):
    """[N, T] int32 ids and mask (T <= max_text_len; padded here) -> dict: text_embeds [N, D]
    unit norm, text_pooled (the head's output), text_hidden [N, max_text_len, width]."""
    ids, mask = pad_text(text_ids, text_mask, self.config)
    pooled, hidden = self.text_model(ids, mask)
    embeds = clip_model.unit_norm(pooled)
    return {"text_embeds": embeds, "text_pooled": pooled, "text_hidden": hidden}

  def encode_image(self, pixel_values):
    """[N, S, S, 3] normalised pixels -> dict: image_embeds [N, D] unit norm, pooled, hidden."""
    pooled, hidden = self.vision_model(pixel_values)
    embeds = clip_model.unit_norm(pooled)
    return {"image_embeds": embeds, "image_pooled": pooled, "image_hidden": hidden}

  def logits(self, cos):
    """The pairwise sigmoid loss's logits: cos * exp(logit_scale) + logit_bias, float32."""
    return cos * jnp.exp(self.logit_scale[0]) + self.logit_bias[0]

  def __call__(self, text_ids, text_mask, image_inputs, deterministic: bool = True):
    """Match logits of each caption with its own image.

    Args:
      text_ids, text_mask: [N, T] int32.
      image_inputs: {"image_embeds": [N, D]} from `image_inputs`, or {"pixels": [N, H, W, 3]
        uint8} to run the vision tower here.
      deterministic: unused (no dropout); kept for the scorer contract.

    Returns:
      (logits [N] float32 (sigmoid gives the match probability), out_dict with the
      embeddings, pooled and hidden states and "cos").
    """
    del deterministic
    out = clip_model.cosine_outputs(self, text_ids, text_mask, image_inputs, preprocess)
    return self.logits(out["cos"]), out

  def init_all(self, text_ids, text_mask, pixel_values):
    """Touches every parameter (for `init`)."""
    return self.encode_text(text_ids, text_mask), self.encode_image(pixel_values)
