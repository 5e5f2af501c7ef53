"""CLIP (Radford et al. 2021) as a scorer: the contract around the Flax port in clip_model.py.

The score of a caption is `100 * cos(image_embed, text_embed)` (the paper's Table 2 scale), or
CLIP-S = 2.5 * max(cos, 0) (Hessel et al. 2021, as in CLIP-Caption-Reward) with
`Config.score="clip_s"`; `logit_scale` is only used by the contrastive loss and `Model.__call__`.
Image embeddings are computed once per image (`image_inputs`), and `score` runs only the text
tower.

Checkpoints: Hugging Face `CLIPModel` directories (config.json and model.safetensors or
pytorch_model.bin, single or sharded), read by `checkpoint_files.read_hf_directory` and mapped
strictly; the `position_ids` buffers of old checkpoints are `IGNORED_KEYS`.

bf16 measured `score` gaps to float32 on the 100 x cosine scale: tiny model on CPU, max 0.15
(tests/test_clip.py::test_bfloat16_close); ViT-B/32 sizes with random weights on an H200, max
0.26, mean 0.05 over 6,000 captions (float32 at XLA's default TF32 matmul precision: max 0.02).
Same run: `score` on 6,000 captions of 24 tokens, 182k captions/s in bf16 (45k at the full
77-token context); `image_inputs` from 480x640 uint8 images, 19k images/s.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scorers import checkpoint_files
from scorers import common
from scorers import registry
from scorers import tokens
from scorers.clip_model import (CLIP_MEAN, CLIP_S_WEIGHT, CLIP_STD, EOT_ID, MAX_LOGIT_SCALE,
                                SOT_ID, Config, Model, default_config, preprocess, tiny_config)

__all__ = ["CLIP_MEAN", "CLIP_STD", "SOT_ID", "EOT_ID", "Config", "Model", "default_config",
           "tiny_config", "preprocess", "init_params",
           "embed_images", "embed_texts", "image_inputs", "score", "pretrain_loss", "tokenizer",
           "text_format", "config_from_hf", "load", "SCORER"]


@functools.partial(jax.jit, static_argnums=0)
def init_params(config: Config, rng: jax.Array) -> dict:
  """Random parameters (the `params` collection), float32."""
  ids = jnp.zeros((1, config.context_length), jnp.int32)
  pixels = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
  return Model(config).init(rng, ids, jnp.ones_like(ids), pixels, method=Model.init_all)["params"]


@functools.partial(jax.jit, static_argnums=1)
def embed_images(params, config: Config, pixels: jax.Array) -> jax.Array:
  """[N, H, W, 3] uint8 RGB -> [N, projection_dim] float32 unit-norm image embeddings."""
  out = Model(config).apply({"params": params}, preprocess(pixels, config.image_size),
                            method=Model.encode_image)
  return out["image_embeds"]


@functools.partial(jax.jit, static_argnums=1)
def embed_texts(params, config: Config, ids: jax.Array, mask: jax.Array) -> jax.Array:
  """ids, mask: [N, T] int32 -> [N, projection_dim] float32 unit-norm text embeddings."""
  out = Model(config).apply({"params": params}, ids, mask, method=Model.encode_text)
  return out["text_embeds"]


def image_inputs(params, config: Config, images: Mapping[str, Any]) -> dict:
  """{"pixels": [N, H, W, 3] uint8} -> {"image_embeds": [N, D] float32 unit norm} (jitted)."""
  if "pixels" not in images:
    raise KeyError(f"clip.image_inputs needs images['pixels'] ([N, H, W, 3] uint8 RGB); found "
                   f"keys {sorted(images)}. Give the data source pixels (Split.pixels).")
  return {"image_embeds": embed_images(params, config, images["pixels"])}


@functools.partial(jax.jit, static_argnums=1)
def score(params, config: Config, text_ids, text_mask, image_inputs: dict) -> jax.Array:  # pylint: disable=redefined-outer-name
  """[N] float32: 100 x cos (score="cos100") or 2.5 x max(cos, 0) (score="clip_s").

  Runs only the text tower; `image_inputs` (from `image_inputs`) is aligned with the captions.
  """
  cos = jnp.sum(embed_texts(params, config, text_ids, text_mask)
                * image_inputs["image_embeds"].astype(jnp.float32), axis=-1)
  if config.score == "clip_s":
    return CLIP_S_WEIGHT * jnp.maximum(cos, 0.0)
  return 100.0 * cos


@functools.partial(jax.jit, static_argnums=1)
def pretrain_loss(params, config: Config, batch: dict, rng: jax.Array):
  """Symmetric InfoNCE over the batch; caption i belongs to image i.

  Args:
    batch: "text_ids", "text_mask" [N, T] int32; "images": {"pixels": [N, H, W, 3] uint8}.
    rng: unused (CLIP has no dropout).

  Returns:
    (loss, metrics): the mean of the image->text and text->image cross-entropies of the
    similarity logits (temperature exp(logit_scale), clamped at 100 as in CLIP's training), and
    metrics "accuracy/image_to_text", "accuracy/text_to_image" (in-batch retrieval) and
    "logit_scale" (the temperature used).
  """
  del rng
  image = embed_images(params, config, batch["images"]["pixels"])
  text = embed_texts(params, config, batch["text_ids"], batch["text_mask"])
  temperature = jnp.exp(jnp.minimum(params["logit_scale"], MAX_LOGIT_SCALE))
  logits = temperature * image @ text.T  # [images, texts]
  target = jnp.arange(logits.shape[0])
  loss_i2t = -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=1)))
  loss_t2i = -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=0)))
  metrics = {
      "accuracy/image_to_text": jnp.mean(jnp.argmax(logits, axis=1) == target),
      "accuracy/text_to_image": jnp.mean(jnp.argmax(logits, axis=0) == target),
      "logit_scale": temperature,
  }
  return 0.5 * (loss_i2t + loss_t2i), metrics


def tokenizer(config: Config):
  """The real CLIP BPE tokenizer (Hugging Face), from the asset in `scorers/assets/`."""
  del config
  return tokens.clip_tokenizer()


def text_format(config: Config):
  """SOT ... EOT, padded with EOT (as Hugging Face pads), `config.prompt` after SOT."""
  return tokens.TextFormat(bos_id=SOT_ID, eos_id=EOT_ID, pad_id=EOT_ID,
                           max_length=config.max_text_len, prompt=config.prompt)


# ---------------------------------------------------------------------------------------------
# Hugging Face checkpoints.

# Buffers that older checkpoints saved; they are aranges, not weights.
IGNORED_KEYS = (r"(text|vision)_model\.embeddings\.position_ids",)


def config_from_hf(hf: Mapping[str, Any], source: str = "config.json") -> Config:
  """Our Config from a Hugging Face CLIP config.json (as a dict; sizes, scoring at defaults)."""
  import transformers  # pylint: disable=import-outside-toplevel (host-only)

  hf_config = transformers.CLIPConfig(**hf)
  text, vision = hf_config.text_config, hf_config.vision_config
  image_size, patch_size = vision.image_size, vision.patch_size
  problems = []
  if text.hidden_act != vision.hidden_act or text.layer_norm_eps != vision.layer_norm_eps:
    problems.append(f"the towers differ in hidden_act ({text.hidden_act} vs {vision.hidden_act})"
                    f" or layer_norm_eps ({text.layer_norm_eps} vs {vision.layer_norm_eps})")
  if not isinstance(image_size, int) or not isinstance(patch_size, int):
    problems.append(f"non-square image_size {image_size} or patch_size {patch_size}")
  if not isinstance(text.eos_token_id, int):
    problems.append(f"text eos_token_id {text.eos_token_id!r} is not one id")
  if problems:
    raise ValueError(f"{source}: unsupported CLIP config: " + "; ".join(problems) + ".")
  return Config(
      vision_width=vision.hidden_size, vision_layers=vision.num_hidden_layers,
      vision_heads=vision.num_attention_heads, vision_mlp=vision.intermediate_size,
      patch_size=patch_size, image_size=image_size, text_width=text.hidden_size,
      text_layers=text.num_hidden_layers, text_heads=text.num_attention_heads,
      text_mlp=text.intermediate_size, vocab_size=text.vocab_size,
      context_length=text.max_position_embeddings, projection_dim=hf_config.projection_dim,
      hidden_act=text.hidden_act, layer_norm_eps=text.layer_norm_eps,
      eos_token_id=text.eos_token_id, logit_scale_init=hf_config.logit_scale_init_value,
      max_text_len=min(77, text.max_position_embeddings))


def load(path: str, config: Config | None = None, *, trust_pickle: bool = False):
  """Reads a Hugging Face `CLIPModel` directory (config.json + model.safetensors or .bin).

  Args:
    path: the directory, e.g. a local copy of openai/clip-vit-base-patch32.
    config: sizes to load into; by default read from config.json. Shapes that disagree with
      the checkpoint raise `common.CheckpointMismatch`.
    trust_pickle: allow a full unpickle of `pytorch_model.bin` (runs code from the file).

  Returns:
    (config, params) with float32 numpy params.

  Raises:
    checkpoint_files.CheckpointFileError: no directory, no config.json, no or a damaged weight file.
    ValueError: config.json is not a CLIP model's.
    common.CheckpointMismatch: missing, unexpected or mis-shaped keys, all listed.
  """
  config_path = os.path.join(path, "config.json")
  hf_config = checkpoint_files.read_json(config_path)
  if hf_config.get("model_type") != "clip":
    raise ValueError(f"{config_path} has model_type {hf_config.get('model_type')!r}; expected "
                     "'clip' (a CLIPModel checkpoint). Point the CLIP scorer at a CLIP "
                     "directory, or pick the scorer that matches this model.")
  config = config or config_from_hf(hf_config, config_path)
  _, state, source = checkpoint_files.read_hf_directory(path, trust_pickle=trust_pickle)
  for key, value in state.items():
    if key.endswith("patch_embedding.weight") and value.ndim == 4:
      state[key] = np.transpose(value, (2, 3, 1, 0))  # PyTorch OIHW -> Flax HWIO.
  template = jax.eval_shape(functools.partial(init_params, config), jax.random.key(0))
  params = common.torch_to_flax(state, template, source=source, ignore=IGNORED_KEYS)
  return config, params


SCORER = registry.Scorer(
    name="clip", objective="contrastive", match_index=None, image_kind="pixels", model=Model,
    default_config=default_config, tiny_config=tiny_config, init_params=init_params, load=load,
    tokenizer=tokenizer, text_format=text_format, image_inputs=image_inputs, score=score,
    pretrain_loss=pretrain_loss, embed_texts=embed_texts)
