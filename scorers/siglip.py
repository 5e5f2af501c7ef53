"""SigLIP (Zhai et al. 2023) as a scorer: the contract around the Flax port in siglip_model.py.

Two towers trained with the pairwise sigmoid loss, so a caption's score is a match probability
of its own, not a softmax over a batch: checked in transformers' `modeling_siglip.py`
(`SiglipModel.forward`: `logits_per_text = cos * logit_scale.exp() + logit_bias`, and its
docstring: `probs = torch.sigmoid(logits_per_image)`, "these are the probabilities"):

  score = 100 * sigmoid(exp(logit_scale) * cos(text, image) + logit_bias)   (Config.score
  "prob100", the default), or 100 * cos like CLIP's (Config.score="cos100").

Image embeddings (the attention-pooled vision tower, unit norm) are computed once per image
(`image_inputs`); `score` runs only the text tower, on the caption padded to 64 tokens as the
model was trained (see siglip_model.py for the pooling, padding and mask conventions).

Text: `SiglipTokenizer` (SentencePiece; lower-cases, deletes ASCII punctuation, appends `</s>`,
no BOS, pads with `</s>` to 64), built at run time from the checkpoint directory's
`spiece.model` (`Config.spm_path`); the synthetic world uses the 1,000-piece test model in
scorers/assets/. On-device re-tokenization equals it token for token (tests/test_tokens.py).

Checkpoints: Hugging Face `SiglipModel` directories (config.json, model.safetensors or
pytorch_model.bin, spiece.model), e.g. google/siglip-base-patch16-224, read strictly. SigLIP 2's
fixed-resolution checkpoints (google/siglip2-*-patch16-224, model_type "siglip") share the
model, but their Gemma tokenizer (tokenizer.json, BPE over the whole "▁"-joined string, left
padding) is not supported by the on-device re-tokenization, so `load` refuses a directory
without `spiece.model`; the NaFlex `Siglip2Model` is not ported.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from scorers import checkpoint_files
from scorers import hf_pixel_checkpoints
from scorers import tokens
from scorers import two_tower
from scorers.siglip_model import Config, Model, default_config, preprocess, tiny_config

__all__ = ["Config", "Model", "default_config", "tiny_config", "preprocess", "init_params",
           "embed_images", "embed_texts", "image_inputs", "score", "pretrain_loss", "tokenizer",
           "text_format", "config_from_hf", "load", "SCORER"]

SPM_FILE = "spiece.model"


# `embed_texts` takes any T <= max_text_len (the model pads the text to max_text_len).
_TOWERS = two_tower.tower_functions("siglip", Model, preprocess,
                                    text_length=lambda config: config.max_text_len)
init_params, embed_images = _TOWERS["init_params"], _TOWERS["embed_images"]
embed_texts, image_inputs = _TOWERS["embed_texts"], _TOWERS["image_inputs"]


def _logits(params, cos):
  return cos * jnp.exp(params["logit_scale"][0]) + params["logit_bias"][0]


@functools.partial(jax.jit, static_argnums=1)
def score(params, config: Config, text_ids, text_mask, image_inputs: dict) -> jax.Array:  # pylint: disable=redefined-outer-name
  """[N] float32: 100 x sigmoid(logit) (score="prob100") or 100 x cos (score="cos100").

  Runs only the text tower; `image_inputs` (from `image_inputs`) is aligned with the captions.
  The text may be narrower than `max_text_len`: it is padded back to it, so any width gives
  the same score.
  """
  cos = two_tower.cosines(params, config, embed_texts, text_ids, text_mask, image_inputs)
  if config.score == "cos100":
    return 100.0 * cos
  return 100.0 * jax.nn.sigmoid(_logits(params, cos))


@functools.partial(jax.jit, static_argnums=1)
def pretrain_loss(params, config: Config, batch: dict, rng: jax.Array):
  """SigLIP's pairwise sigmoid loss over the batch; caption i belongs to image i.

  As transformers' `SiglipModel(return_loss=True)` (after big_vision): every (text, image)
  pair is a binary problem, label +1 on the diagonal and -1 elsewhere; the loss is
  -sum_j log sigmoid(label_ij * logit_ij) averaged over the texts i.

  Args:
    batch: "text_ids", "text_mask" [N, T] int32; "images": {"pixels": [N, H, W, 3] uint8}.
    rng: unused (no dropout).

  Returns:
    (loss, metrics): "accuracy/image_to_text", "accuracy/text_to_image" (in-batch retrieval),
    "accuracy/pairs" (pairs on the right side of probability 0.5), "logit_scale" (the
    temperature exp(logit_scale)) and "logit_bias".
  """
  del rng
  image = embed_images(params, config, batch["images"]["pixels"])
  text = embed_texts(params, config, batch["text_ids"], batch["text_mask"])
  logits = _logits(params, text @ image.T)  # [texts, images]
  labels = 2.0 * jnp.eye(logits.shape[0]) - 1.0
  loss = -jnp.mean(jnp.sum(jax.nn.log_sigmoid(labels * logits), axis=-1))
  target = jnp.arange(logits.shape[0])
  metrics = {
      "accuracy/image_to_text": jnp.mean(jnp.argmax(logits, axis=0) == target),
      "accuracy/text_to_image": jnp.mean(jnp.argmax(logits, axis=1) == target),
      "accuracy/pairs": jnp.mean((logits > 0) == (labels > 0)),
      "logit_scale": jnp.exp(params["logit_scale"][0]),
      "logit_bias": params["logit_bias"][0],
  }
  return loss, metrics


def tokenizer(config: Config):
  """The SentencePiece `SiglipTokenizer` from `config.spm_path` (default: the test model)."""
  return tokens.siglip_tokenizer(config.spm_path or None)


def text_format(config: Config):
  """caption `</s>`, no BOS, padded with `</s>` (`config.pad_id`), `config.prompt` first."""
  return tokens.TextFormat(bos_id=config.pad_id, eos_id=config.pad_id, pad_id=config.pad_id,
                           max_length=config.max_text_len, prompt=config.prompt, add_bos=False)


# ---------------------------------------------------------------------------------------------
# Hugging Face checkpoints.

# Buffers that older checkpoints saved; they are aranges, not weights.
IGNORED_KEYS = (r"(text|vision)_model\.embeddings\.position_ids",)


def config_from_hf(hf: Mapping[str, Any], source: str = "config.json") -> Config:
  """Our Config from a Hugging Face SigLIP config.json (as a dict; scoring at defaults)."""
  import transformers  # pylint: disable=import-outside-toplevel (host-only)

  hf_config = transformers.SiglipConfig(**hf)
  text, vision = hf_config.text_config, hf_config.vision_config
  projection = getattr(text, "projection_size", None) or text.hidden_size
  problems = (hf_pixel_checkpoints.towers_problems(text, vision)
              + hf_pixel_checkpoints.vision_problems(vision))
  if not getattr(vision, "vision_use_head", True):
    problems.append("vision_use_head is False (no attention-pooling head to embed images)")
  hf_pixel_checkpoints.raise_problems(source, "SigLIP", problems)
  return Config(
      **hf_pixel_checkpoints.vision_fields(vision), **hf_pixel_checkpoints.text_tower_fields(text),
      projection_size=projection, max_text_len=min(64, text.max_position_embeddings))


def _check_tokenizer(config: Config, spm_path: str) -> None:
  """The SentencePiece model must keep pieces inside words (the re-tokenization tables
  concatenate per-word pieces), and its end/pad token must be `Config.pad_id`."""
  from sentencepiece import sentencepiece_model_pb2  # pylint: disable=import-outside-toplevel

  proto = sentencepiece_model_pb2.ModelProto()
  with open(spm_path, "rb") as f:
    proto.ParseFromString(f.read())
  if (not proto.trainer_spec.split_by_whitespace or proto.trainer_spec.treat_whitespace_as_suffix
      or not proto.normalizer_spec.add_dummy_prefix):
    raise ValueError(
        f"{spm_path}: split_by_whitespace={proto.trainer_spec.split_by_whitespace}, "
        f"treat_whitespace_as_suffix={proto.trainer_spec.treat_whitespace_as_suffix}, "
        f"add_dummy_prefix={proto.normalizer_spec.add_dummy_prefix}; the on-device "
        "re-tokenization needs True, False, True (pieces that start at a word and never cross "
        "a space, as in SigLIP's T5 model). This is not SigLIP's SentencePiece model.")
  tok = tokens.siglip_tokenizer(spm_path)
  if tok.eos_token_id != config.pad_id or tok.pad_token_id != config.pad_id:
    raise ValueError(f"{spm_path}: end token id {tok.eos_token_id}, pad id {tok.pad_token_id}; "
                     f"expected both {config.pad_id} (`</s>`, as in SigLIP's T5 SentencePiece "
                     "model). Use the spiece.model that came with the checkpoint.")


def _with_tokenizer(path: str, config: Config) -> Config:
  """`config` with `spm_path` set to the directory's spiece.model, checked."""
  spm_path = os.path.join(path, SPM_FILE)
  if not os.path.isfile(spm_path):
    raise checkpoint_files.CheckpointFileError(
        f"{path} has no {SPM_FILE}: SigLIP's on-device re-tokenization is built from the "
        f"checkpoint's SentencePiece model; found {sorted(os.listdir(path))}. Copy {SPM_FILE} "
        "from the model's repository (SigLIP 2's Gemma tokenizer.json is not supported).")
  config = dataclasses.replace(config, spm_path=spm_path)
  _check_tokenizer(config, spm_path)
  return config


def load(path: str, config: Config | None = None, *, trust_pickle: bool = False):
  """(config, params) from a Hugging Face `SiglipModel` directory (config.json, weights,
  spiece.model), e.g. a local copy of google/siglip-base-patch16-224.

  Arguments and errors as `hf_pixel_checkpoints.load`'s; the config's `spm_path` is set to the
  directory's spiece.model (`CheckpointFileError` without one, ValueError for one that the
  on-device re-tokenization cannot follow).
  """
  return hf_pixel_checkpoints.load(
      path, config, model_type="siglip", expected="(a SiglipModel checkpoint; SigLIP 2's NaFlex "
      "'siglip2' is not ported). Point the SigLIP scorer at a SigLIP directory.",
      config_from_hf=config_from_hf, init_params=init_params, ignore=IGNORED_KEYS,
      trust_pickle=trust_pickle, prepare=_with_tokenizer)


SCORER = two_tower.scorer(
    "siglip", Model, _TOWERS, default_config=default_config, tiny_config=tiny_config, load=load,
    tokenizer=tokenizer, text_format=text_format, score=score, pretrain_loss=pretrain_loss)
