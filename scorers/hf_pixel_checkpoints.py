"""Hugging Face checkpoint directories of the pixel scorers (CLIP, SigLIP, BLIP ITM).

The three read the same kind of directory (config.json and model.safetensors or
pytorch_model.bin, single or sharded) into the same kind of ViT: the vision config has the same
fields, and the only value transform is the patch-embedding convolution's, PyTorch OIHW -> Flax
HWIO. What each model adds (its text config, a tokenizer file, an id check) stays in its module.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from scorers import checkpoint_files
from scorers import common


def read_config(path: str, model_type: str, expected: str) -> tuple[str, dict]:
  """(config.json's path, its contents) of the directory `path`.

  Args:
    path: the checkpoint directory.
    model_type: the `model_type` config.json must hold, e.g. "clip".
    expected: what such a directory is and what to do instead, for the error message.

  Raises:
    checkpoint_files.CheckpointFileError: no directory or no readable config.json.
    ValueError: config.json holds another model_type.
  """
  config_path = os.path.join(path, "config.json")
  hf_config = checkpoint_files.read_json(config_path)
  if hf_config.get("model_type") != model_type:
    raise ValueError(f"{config_path} has model_type {hf_config.get('model_type')!r}; expected "
                     f"{model_type!r} {expected}")
  return config_path, hf_config


def vision_problems(vision) -> list[str]:
  """What this port cannot take in a Hugging Face vision config: non-square sizes."""
  if not isinstance(vision.image_size, int) or not isinstance(vision.patch_size, int):
    return [f"non-square image_size {vision.image_size} or patch_size {vision.patch_size}"]
  return []


def towers_problems(text, vision) -> list[str]:
  """Two-tower configs (CLIP, SigLIP): both towers must share the activation and the eps."""
  if text.hidden_act != vision.hidden_act or text.layer_norm_eps != vision.layer_norm_eps:
    return [f"the towers differ in hidden_act ({text.hidden_act} vs {vision.hidden_act}) or "
            f"layer_norm_eps ({text.layer_norm_eps} vs {vision.layer_norm_eps})"]
  return []


def raise_problems(source: str, model: str, problems: Iterable[str]) -> None:
  """Raises ValueError listing every unsupported setting of a config.json (none: returns)."""
  problems = list(problems)
  if problems:
    raise ValueError(f"{source}: unsupported {model} config: " + "; ".join(problems) + ".")


def vision_fields(vision) -> dict[str, Any]:
  """Our Config's ViT fields from a Hugging Face vision config."""
  return dict(vision_width=vision.hidden_size, vision_layers=vision.num_hidden_layers,
              vision_heads=vision.num_attention_heads, vision_mlp=vision.intermediate_size,
              patch_size=vision.patch_size, image_size=vision.image_size)


def text_tower_fields(text) -> dict[str, Any]:
  """Our Config's text-tower fields (CLIP, SigLIP) from a Hugging Face text config."""
  return dict(text_width=text.hidden_size, text_layers=text.num_hidden_layers,
              text_heads=text.num_attention_heads, text_mlp=text.intermediate_size,
              vocab_size=text.vocab_size, context_length=text.max_position_embeddings,
              hidden_act=text.hidden_act, layer_norm_eps=text.layer_norm_eps)


def load(path: str, config, *, model_type: str, expected: str, config_from_hf: Callable,
         init_params: Callable, ignore: Iterable[str], trust_pickle: bool,
         prepare: Callable | None = None):
  """Reads a pixel scorer's Hugging Face directory (config.json + model.safetensors or .bin).

  Args:
    path: the directory.
    config: sizes to load into, or None to read them from config.json (`config_from_hf(hf,
      source)`). Shapes that disagree with the checkpoint raise `common.CheckpointMismatch`.
    model_type, expected: as `read_config` takes them.
    config_from_hf: the scorer's `config_from_hf`.
    init_params: the scorer's `init_params(config, rng)`; its tree is the schema.
    ignore: the scorer's `IGNORED_KEYS`.
    trust_pickle: allow a full unpickle of `pytorch_model.bin` (runs code from the file).
    prepare: `(path, config) -> config`, what the scorer takes from the directory besides the
      weights (a tokenizer file), checked before the weights are read.

  Returns:
    (config, params) with float32 numpy params.

  Raises:
    checkpoint_files.CheckpointFileError: no directory, no config.json, no or a damaged weight file.
    ValueError: config.json is not the scorer's model's.
    common.CheckpointMismatch: missing, unexpected or mis-shaped keys, all listed.
  """
  config_path, hf_config = read_config(path, model_type, expected)
  config = config or config_from_hf(hf_config, config_path)
  if prepare is not None:
    config = prepare(path, config)
  _, state, source = checkpoint_files.read_hf_directory(path, trust_pickle=trust_pickle)
  for key, value in state.items():
    if key.endswith("patch_embedding.weight") and value.ndim == 4:
      state[key] = np.transpose(value, (2, 3, 1, 0))  # PyTorch OIHW -> Flax HWIO.
  return config, common.params_from_state(state, init_params, config, source=source,
                                          ignore=ignore)
