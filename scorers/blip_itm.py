"""BLIP's image-text matching head (Li et al. 2022) as a scorer, around blip_itm_model.py.

A text encoder that cross-attends, in every layer, to the ViT's patch embeddings, and a 2-way
ITM head on its first token. Checked in transformers' `modeling_blip.py`
(`BlipForImageTextRetrieval.forward`, `use_itm_head=True`: `itm_head(question_embeds[:, 0, :])`)
and in BLIP's own code (itm_labels are 1 for the positive pairs; models/blip_itm.py's demo
scores `softmax(itm_output, dim=1)[:, 1]`): index 1 means "match", so

  score = 100 * softmax(itm_logits)[:, 1].

What the ITM text looks like: BLIP's bert-base-uncased tokenizer with `[DEC]` (30522) and
`[ENC]` (30523) added, [CLS] words [SEP] truncated and padded to 35 tokens, then [CLS] replaced
by [ENC] (see blip_itm_model.py for where that comes from and `Config.first_token`).

Once per image (`image_inputs`): the ViT's patch embeddings, and from them every text layer's
cross-attention keys and values ([N, layers, 577, 768] each at base sizes; `Config.cache_cross_kv`
False keeps only the patch embeddings). `score` then runs only the text layers.

Checkpoints: Hugging Face `BlipForImageTextRetrieval` directories (config.json and
model.safetensors or pytorch_model.bin), e.g. Salesforce/blip-itm-base-coco, read strictly; the
contrastive (ITC) projections `vision_proj` and `text_proj` are `IGNORED_KEYS`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from scorers import common
from scorers import hf_pixel_checkpoints
from scorers import registry
from scorers import tokens
from scorers.blip_itm_model import (CLS_ID, ENC_ID, MATCH_INDEX, PAD_ID, SEP_ID, Config, Model,
                                    default_config, preprocess, tiny_config)

__all__ = ["CLS_ID", "ENC_ID", "MATCH_INDEX", "Config", "Model", "default_config", "tiny_config",
           "preprocess", "init_params", "image_inputs", "score", "pretrain_loss", "tokenizer",
           "text_format", "config_from_hf", "load", "SCORER"]


def _pixels(images: Mapping[str, Any]):
  if "pixels" not in images:
    raise KeyError(f"blip_itm.image_inputs needs images['pixels'] ([N, H, W, 3] uint8 RGB); "
                   f"found keys {sorted(images)}. Give the data source pixels (Split.pixels).")
  return images["pixels"]


def _image_side(params, config: Config, pixels):
  model = Model(config)
  embeds = model.apply({"params": params}, preprocess(pixels, config.image_size),
                       method=Model.encode_image)
  if not config.cache_cross_kv:
    return {"image_embeds": embeds}
  keys, values = model.apply({"params": params}, embeds, method=Model.cross_kv)
  return {"cross_key": keys, "cross_value": values}


_image_side_jit = jax.jit(_image_side, static_argnums=1)


def image_inputs(params, config: Config, images: Mapping[str, Any]) -> dict[str, jax.Array]:
  """The caption-independent part, once per image (jitted; differentiable for pretraining).

  Args:
    images: {"pixels": [N, H, W, 3] uint8 RGB}.

  Returns:
    {"cross_key", "cross_value": [N, num_layers, 1 + P, hidden_size]} in the compute dtype, or
    with `cache_cross_kv=False` {"image_embeds": [N, 1 + P, vision_width]}.
  """
  return _image_side_jit(params, config, _pixels(images))


def _dummy_inputs(config: Config):
  text = jnp.zeros((1, 4), jnp.int32)
  return text, jnp.ones_like(text), {"pixels": jnp.zeros((1, config.image_size,
                                                          config.image_size, 3), jnp.uint8)}


def tokenizer(config: Config):
  """BLIP's tokenizer: bert-base-uncased + [DEC] + [ENC] (`config.vocab_path` or the bundled)."""
  return tokens.blip_tokenizer(config.vocab_path or None)


def text_format(config: Config):
  """[ENC] (or [CLS]) words [SEP], zero-padded, truncated to `config.max_text_len`."""
  first = config.enc_token_id if config.first_token == "enc" else CLS_ID
  return tokens.TextFormat(bos_id=first, eos_id=SEP_ID, pad_id=PAD_ID,
                           max_length=config.max_text_len)


# ---------------------------------------------------------------------------------------------
# Hugging Face checkpoints.

# The contrastive (ITC) head of BlipForImageTextRetrieval, unused by the ITM score, and a buffer
# older checkpoints saved.
IGNORED_KEYS = (r"(vision|text)_proj\.(weight|bias)", r"text_encoder\.embeddings\.position_ids")


def config_from_hf(hf: Mapping[str, Any], source: str = "config.json") -> Config:
  """Our Config from a Hugging Face BLIP config.json (as a dict; text settings at defaults)."""
  import transformers  # pylint: disable=import-outside-toplevel (host-only)

  hf_config = transformers.BlipConfig(**hf)
  text, vision = hf_config.text_config, hf_config.vision_config
  problems = hf_pixel_checkpoints.vision_problems(vision)
  if text.hidden_act != "gelu" or text.layer_norm_eps != 1e-12:
    problems.append(f"text hidden_act {text.hidden_act!r} / layer_norm_eps "
                    f"{text.layer_norm_eps}; this port implements BERT's 'gelu' and 1e-12")
  if text.encoder_hidden_size != vision.hidden_size:
    problems.append(f"text encoder_hidden_size {text.encoder_hidden_size} differs from the "
                    f"vision hidden_size {vision.hidden_size}")
  if text.hidden_dropout_prob != text.attention_probs_dropout_prob:
    problems.append(f"hidden_dropout_prob {text.hidden_dropout_prob} differs from "
                    f"attention_probs_dropout_prob {text.attention_probs_dropout_prob}")
  hf_pixel_checkpoints.raise_problems(source, "BLIP", problems)
  return Config(
      **hf_pixel_checkpoints.vision_fields(vision), hidden_act=vision.hidden_act,
      vision_eps=vision.layer_norm_eps, vocab_size=text.vocab_size,
      hidden_size=text.hidden_size, num_heads=text.num_attention_heads,
      intermediate_size=text.intermediate_size, num_layers=text.num_hidden_layers,
      max_position=text.max_position_embeddings, dropout_rate=float(text.hidden_dropout_prob))


def _with_vocabulary(path: str, config: Config) -> Config:
  """`config` with `vocab_path` set to the directory's vocab.txt if it has one; its [ENC] id
  checked."""
  vocab = os.path.join(path, "vocab.txt")
  if os.path.isfile(vocab):
    config = dataclasses.replace(config, vocab_path=vocab)
  enc = tokenizer(config).convert_tokens_to_ids(tokens.BLIP_ENC)
  if enc != config.enc_token_id:
    raise ValueError(f"{path}: the tokenizer gives [ENC] the id {enc}; the config expects "
                     f"{config.enc_token_id}. Use the vocabulary the checkpoint came with.")
  return config


def load(path: str, config: Config | None = None, *, trust_pickle: bool = False):
  """(config, params) from a Hugging Face `BlipForImageTextRetrieval` directory (config.json +
  weights), e.g. a local copy of Salesforce/blip-itm-base-coco.

  Arguments and errors as `hf_pixel_checkpoints.load`'s; the directory's `vocab.txt`, when
  present, becomes `config.vocab_path`, and a vocabulary whose [ENC] id is not the config's is
  a ValueError.
  """
  return hf_pixel_checkpoints.load(
      path, config, model_type="blip", expected="(a BlipForImageTextRetrieval checkpoint). Point "
      "the BLIP scorer at a BLIP ITM directory.", config_from_hf=config_from_hf,
      init_params=init_params, ignore=IGNORED_KEYS, trust_pickle=trust_pickle,
      prepare=_with_vocabulary)


_ITM = common.itm_functions(Model, MATCH_INDEX, image_inputs=image_inputs,
                            dummy_inputs=_dummy_inputs)
init_params, score, pretrain_loss = _ITM["init_params"], _ITM["score"], _ITM["pretrain_loss"]

SCORER = registry.Scorer(
    name="blip_itm", objective="itm", match_index=MATCH_INDEX, image_kind="pixels", model=Model,
    default_config=default_config, tiny_config=tiny_config, init_params=init_params, load=load,
    tokenizer=tokenizer, text_format=text_format, image_inputs=image_inputs, score=score,
    pretrain_loss=pretrain_loss)
