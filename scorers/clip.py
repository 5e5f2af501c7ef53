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
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from scorers import hf_pixel_checkpoints
from scorers import tokens
from scorers import two_tower
from scorers.clip_model import (CLIP_MEAN, CLIP_S_WEIGHT, CLIP_STD, EOT_ID, MAX_LOGIT_SCALE,
                                SOT_ID, Config, Model, default_config, preprocess, tiny_config)

__all__ = ["CLIP_MEAN", "CLIP_STD", "SOT_ID", "EOT_ID", "Config", "Model", "default_config",
           "tiny_config", "preprocess", "init_params",
           "embed_images", "embed_texts", "image_inputs", "score", "pretrain_loss", "tokenizer",
           "text_format", "config_from_hf", "load", "SCORER"]


_TOWERS = two_tower.tower_functions("clip", Model, preprocess,
                                    text_length=lambda config: config.context_length)
init_params, embed_images = _TOWERS["init_params"], _TOWERS["embed_images"]
embed_texts, image_inputs = _TOWERS["embed_texts"], _TOWERS["image_inputs"]


@functools.partial(jax.jit, static_argnums=1)
def score(params, config: Config, text_ids, text_mask, image_inputs: dict) -> jax.Array:  # pylint: disable=redefined-outer-name
  """[N] float32: 100 x cos (score="cos100") or 2.5 x max(cos, 0) (score="clip_s").

  Runs only the text tower; `image_inputs` (from `image_inputs`) is aligned with the captions.
  """
  cos = two_tower.cosines(params, config, embed_texts, text_ids, text_mask, image_inputs)
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
  problems = (hf_pixel_checkpoints.towers_problems(text, vision)
              + hf_pixel_checkpoints.vision_problems(vision))
  if not isinstance(text.eos_token_id, int):
    problems.append(f"text eos_token_id {text.eos_token_id!r} is not one id")
  hf_pixel_checkpoints.raise_problems(source, "CLIP", problems)
  return Config(
      **hf_pixel_checkpoints.vision_fields(vision), **hf_pixel_checkpoints.text_tower_fields(text),
      projection_dim=hf_config.projection_dim, eos_token_id=text.eos_token_id,
      logit_scale_init=hf_config.logit_scale_init_value,
      max_text_len=min(77, text.max_position_embeddings))


def load(path: str, config: Config | None = None, *, trust_pickle: bool = False):
  """(config, params) from a Hugging Face `CLIPModel` directory, e.g. a local copy of
  openai/clip-vit-base-patch32; arguments and errors as `hf_pixel_checkpoints.load`'s."""
  return hf_pixel_checkpoints.load(
      path, config, model_type="clip", expected="(a CLIPModel checkpoint). Point the CLIP scorer "
      "at a CLIP directory, or pick the scorer that matches this model.",
      config_from_hf=config_from_hf, init_params=init_params, ignore=IGNORED_KEYS,
      trust_pickle=trust_pickle)


SCORER = two_tower.scorer(
    "clip", Model, _TOWERS, default_config=default_config, tiny_config=tiny_config, load=load,
    tokenizer=tokenizer, text_format=text_format, score=score, pretrain_loss=pretrain_loss)
