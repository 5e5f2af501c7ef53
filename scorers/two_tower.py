"""The scorer functions the two-tower models (CLIP, SigLIP) share.

Both models embed an image and a caption separately into unit-norm vectors: `image_inputs`
computes the image embeddings once per image, and the score runs only the text tower. The
model module gives the Flax `Model` (with `init_all`, `encode_image` and `encode_text` returning
"image_embeds" and "text_embeds") and its `preprocess`; what makes the score differs per model
and stays in the scorer module.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp


def tower_functions(name: str, model, preprocess: Callable,
                    text_length: Callable[[Any], int]) -> dict[str, Callable]:
  """`init_params`, `embed_images`, `embed_texts` and `image_inputs` of a two-tower scorer.

  Args:
    name: the scorer's name, for messages.
    model: the Flax module class, built as `model(config)`.
    preprocess: `(pixels [N, H, W, 3] uint8, image_size) -> [N, S, S, 3] float32`.
    text_length: `(config) -> T`, the text width `init_params` traces the model at.
  """

  @functools.partial(jax.jit, static_argnums=0)
  def init_params(config, rng: jax.Array) -> dict:
    """Random parameters (the `params` collection), float32."""
    ids = jnp.zeros((1, text_length(config)), jnp.int32)
    pixels = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
    return model(config).init(rng, ids, jnp.ones_like(ids), pixels,
                              method=model.init_all)["params"]

  @functools.partial(jax.jit, static_argnums=1)
  def embed_images(params, config, pixels: jax.Array) -> jax.Array:
    """[N, H, W, 3] uint8 RGB -> [N, D] float32 unit-norm image embeddings."""
    out = model(config).apply({"params": params}, preprocess(pixels, config.image_size),
                              method=model.encode_image)
    return out["image_embeds"]

  @functools.partial(jax.jit, static_argnums=1)
  def embed_texts(params, config, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """ids, mask: [N, T] int32 -> [N, D] float32 unit-norm text embeddings."""
    out = model(config).apply({"params": params}, ids, mask, method=model.encode_text)
    return out["text_embeds"]

  def image_inputs(params, config, images: Mapping[str, Any]) -> dict:
    """{"pixels": [N, H, W, 3] uint8} -> {"image_embeds": [N, D] float32 unit norm} (jitted)."""
    if "pixels" not in images:
      raise KeyError(f"{name}.image_inputs needs images['pixels'] ([N, H, W, 3] uint8 RGB); "
                     f"found keys {sorted(images)}. Give the data source pixels (Split.pixels).")
    return {"image_embeds": embed_images(params, config, images["pixels"])}

  return {"init_params": init_params, "embed_images": embed_images, "embed_texts": embed_texts,
          "image_inputs": image_inputs}


def cosines(params, config, embed_texts: Callable, text_ids, text_mask,
            image_inputs: Mapping[str, jax.Array]) -> jax.Array:
  """[N] float32 cosine of each caption's embedding with its image's (`image_inputs`)."""
  return jnp.sum(embed_texts(params, config, text_ids, text_mask)
                 * image_inputs["image_embeds"].astype(jnp.float32), axis=-1)


def scorer(name: str, model, towers: Mapping[str, Callable], *, default_config, tiny_config,
           load, tokenizer, text_format, score, pretrain_loss):
  """The `registry.Scorer` of a two-tower model: its own parts, plus `towers` (the functions
  `tower_functions` built)."""
  from scorers import registry  # pylint: disable=import-outside-toplevel

  return registry.Scorer(
      name=name, objective="contrastive", match_index=None, image_kind="pixels", model=model,
      default_config=default_config, tiny_config=tiny_config, init_params=towers["init_params"],
      load=load, tokenizer=tokenizer, text_format=text_format,
      image_inputs=towers["image_inputs"], score=score, pretrain_loss=pretrain_loss,
      embed_texts=towers["embed_texts"])
