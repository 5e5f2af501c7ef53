"""Reading Hugging Face `CLIPModel` checkpoints into the Flax CLIP of scorers/clip.py.

`load(path)` takes a directory with config.json and model.safetensors / pytorch_model.bin
(single or sharded), maps the state dict strictly with `common.torch_to_flax` (the patch
convolution OIHW -> HWIO, old `position_ids` buffers ignored) and returns (config, params);
`config_from_hf` turns a `transformers.CLIPConfig` into our `clip.Config`.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from scorers import clip
from scorers import common


_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
# Buffers that older checkpoints saved; they are aranges, not weights.
_IGNORED_KEYS = (r"(text|vision)_model\.embeddings\.position_ids",)


def config_from_hf(hf_config) -> clip.Config:
  """Our Config from a `transformers.CLIPConfig` (the sizes; scoring options at defaults)."""
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
    raise ValueError("scorers/clip_checkpoint.py: unsupported CLIP config: " + "; ".join(problems) + ".")
  return clip.Config(
      vision_width=vision.hidden_size, vision_layers=vision.num_hidden_layers,
      vision_heads=vision.num_attention_heads, vision_mlp=vision.intermediate_size,
      patch_size=patch_size, image_size=image_size, text_width=text.hidden_size,
      text_layers=text.num_hidden_layers, text_heads=text.num_attention_heads,
      text_mlp=text.intermediate_size, vocab_size=text.vocab_size,
      context_length=text.max_position_embeddings, projection_dim=hf_config.projection_dim,
      hidden_act=text.hidden_act, layer_norm_eps=text.layer_norm_eps,
      eos_token_id=text.eos_token_id, logit_scale_init=hf_config.logit_scale_init_value,
      max_text_len=min(77, text.max_position_embeddings))


def _read_weights(directory: str, trust_pickle: bool) -> tuple[str, dict[str, np.ndarray]]:
  """The state dict of a Hugging Face directory (single or sharded) and the file it came from."""
  found = [name for name in _WEIGHT_FILES if os.path.exists(os.path.join(directory, name))]
  if not found:
    raise FileNotFoundError(
        f"clip.load: no weights in {directory}: expected one of {', '.join(_WEIGHT_FILES)}; the "
        f"directory holds {sorted(os.listdir(directory))}. Copy the model's weight file(s) there.")
  source = os.path.join(directory, found[0])
  files = [source]
  if source.endswith(".index.json"):
    with open(source) as f:
      files = [os.path.join(directory, name) for name in sorted(set(json.load(f)["weight_map"].values()))]
  state = {}
  for file in files:
    if file.endswith(".safetensors"):
      from safetensors import numpy as st_numpy  # pylint: disable=import-outside-toplevel
      try:
        state.update(st_numpy.load_file(file))
      except (TypeError, ValueError):  # bfloat16 has no numpy dtype: read through torch.
        from safetensors import torch as st_torch  # pylint: disable=import-outside-toplevel
        state.update(common.state_dict_to_numpy(st_torch.load_file(file)))
    else:
      state.update(common.state_dict_to_numpy(common.load_torch_file(file,
                                                                     trust_pickle=trust_pickle)))
  return source, state


def load(path: str, config: clip.Config | None = None, *, trust_pickle: bool = False):
  """Reads a Hugging Face `CLIPModel` directory (config.json + model.safetensors or .bin).

  Args:
    path: the directory, e.g. a local copy of openai/clip-vit-base-patch32.
    config: sizes to load into; by default read from config.json. Shapes that disagree with
      the checkpoint raise `common.CheckpointMismatch`.
    trust_pickle: allow a full unpickle of `pytorch_model.bin` (runs code from the file).

  Returns:
    (config, params) with float32 params.

  Raises:
    FileNotFoundError: no directory, no config.json or no weight file.
    ValueError: config.json is not a CLIP model's.
    common.CheckpointMismatch: missing, unexpected or mis-shaped keys, all listed.
  """
  config_path = os.path.join(path, "config.json")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(
        f"clip.load: {config_path} not found. Expected a Hugging Face CLIP directory with "
        "config.json and model.safetensors or pytorch_model.bin (e.g. openai/clip-vit-base-patch32).")
  with open(config_path) as f:
    model_type = json.load(f).get("model_type")
  if model_type != "clip":
    raise ValueError(f"clip.load: {config_path} has model_type {model_type!r}; expected 'clip' "
                     "(a CLIPModel checkpoint). Point the CLIP scorer at a CLIP directory, or pick "
                     "the scorer that matches this model.")
  if config is None:
    import transformers  # pylint: disable=import-outside-toplevel
    config = config_from_hf(transformers.CLIPConfig.from_pretrained(path))
  source, state = _read_weights(path, trust_pickle)
  for key, value in state.items():
    if key.endswith("patch_embedding.weight") and value.ndim == 4:
      state[key] = np.transpose(value, (2, 3, 1, 0))  # PyTorch OIHW -> Flax HWIO.
  template = jax.eval_shape(functools.partial(clip.init_params, config), jax.random.key(0))
  params = common.torch_to_flax(state, template, source=source, ignore=_IGNORED_KEYS)
  return config, jax.tree.map(jnp.asarray, params)
