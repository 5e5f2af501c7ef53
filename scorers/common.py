"""Strict conversion of PyTorch-style state dicts into Flax parameter trees.

The Flax modules are named after the original PyTorch modules, so a checkpoint key
`a.b.0.dense.weight` lives at `params["a"]["b_0"]["dense"]["kernel"]` up to a few fixed rules:

  * a Linear `weight` [out, in] becomes a Dense `kernel` [in, out] (transposed);
  * an Embedding `weight` becomes `embedding`;
  * a LayerNorm `weight` (or the old `gamma`) becomes `scale`, `beta` becomes `bias`;
  * a list index `layer.3` becomes the Flax submodule `layer_3`.

The Flax parameter tree of a freshly initialised model is the schema: every leaf must be filled
exactly once with the right shape, and every checkpoint key must land somewhere (or be named as
ignored on purpose). Anything else raises `CheckpointMismatch`, listing all the problems at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
from flax import traverse_util


class CheckpointMismatch(ValueError):
  """A checkpoint does not fit the model: lists missing, unexpected and mis-shaped keys."""

  def __init__(self, source: str, missing: list[str], unexpected: list[str],
               wrong_shapes: list[str]):
    self.missing, self.unexpected, self.wrong_shapes = missing, unexpected, wrong_shapes
    parts = [f"Checkpoint {source} does not match the model config."]
    for title, items in (("missing (in the model, not in the checkpoint)", missing),
                         ("unexpected (in the checkpoint, not in the model)", unexpected),
                         ("wrong shapes (checkpoint key: found vs expected)", wrong_shapes)):
      if items:
        shown = "\n    ".join(items[:40])
        more = f"\n    ... and {len(items) - 40} more" if len(items) > 40 else ""
        parts.append(f"  {len(items)} {title}:\n    {shown}{more}")
    parts.append("  Check that the config (sizes, layer counts, vocabulary) matches the checkpoint, "
                 "or that the file is the model you meant to load.")
    super().__init__("\n".join(parts))


def _flax_path(torch_key: str) -> tuple[str, ...]:
  """`encoder.layer.3.attention.self.query` -> ('encoder', 'layer_3', 'attention', 'self', 'query')."""
  parts: list[str] = []
  for piece in torch_key.split("."):
    if piece.isdigit() and parts:
      parts[-1] = f"{parts[-1]}_{piece}"
    else:
      parts.append(piece)
  return tuple(parts)


_LEAF_CANDIDATES = {
    # torch leaf name -> (flax leaf name, transpose?) in the order they are tried.
    "weight": (("kernel", True), ("embedding", False), ("scale", False)),
    "gamma": (("scale", False),),
    "beta": (("bias", False),),
    "bias": (("bias", False),),
}


def torch_to_flax(
    state_dict: Mapping[str, np.ndarray],
    template: Mapping[str, Any],
    *,
    source: str,
    rename: Callable[[str], str | None] = lambda key: key,
    ignore: Iterable[str] = (),
) -> dict[str, Any]:
  """Fills the Flax tree `template` from a PyTorch-style flat `state_dict`.

  Args:
    state_dict: flat mapping of checkpoint keys to numpy arrays.
    template: the `params` tree of an initialised model (shapes are the schema).
    source: the file name, used in error messages.
    rename: maps a checkpoint key to the module path the Flax model uses for it (dots, list
      indices as `.N`), or None to drop it. Applied before the fixed rules above.
    ignore: regular expressions of checkpoint keys that are dropped on purpose (heads the scorer
      does not use); they never count as unexpected.

  Returns:
    A params tree with the template's structure, filled with float32 numpy arrays.

  Raises:
    CheckpointMismatch: listing every missing, unexpected and mis-shaped key.
  """
  flat_template = traverse_util.flatten_dict(dict(template))
  ignore_patterns = [re.compile(p) for p in ignore]
  filled: dict[tuple[str, ...], np.ndarray] = {}
  misshaped: set[tuple[str, ...]] = set()
  unexpected, wrong_shapes = [], []
  for key, value in state_dict.items():
    if any(p.fullmatch(key) for p in ignore_patterns):
      continue
    target = rename(key)
    if target is None:
      continue
    module_path, _, leaf = target.rpartition(".")
    module = _flax_path(module_path) if module_path else ()
    value = np.asarray(value)
    placed = False
    for flax_leaf, transpose in _LEAF_CANDIDATES.get(leaf, ((leaf, False),)):
      path = module + (flax_leaf,)
      if path not in flat_template:
        continue
      array = value.T if (transpose and value.ndim == 2) else value
      expected = tuple(flat_template[path].shape)
      if tuple(array.shape) != expected:
        wrong_shapes.append(f"{key}: {tuple(array.shape)} vs {expected}")
        misshaped.add(path)
      else:
        filled[path] = array.astype(np.float32)
      placed = True
      break
    if not placed:
      unexpected.append(key)
  missing = ["/".join(path) for path in flat_template
             if path not in filled and path not in misshaped]
  if missing or unexpected or wrong_shapes:
    raise CheckpointMismatch(source, sorted(missing), sorted(unexpected), sorted(wrong_shapes))
  return traverse_util.unflatten_dict(filled)


def load_torch_file(path: str, *, trust_pickle: bool = False) -> Any:
  """Reads a `.pt`/`.bin`/`.pth`/`.pkl` file written by `torch.save`.

  Loads with `weights_only=True` (no arbitrary code runs) unless `trust_pickle` is set.

  Raises:
    ValueError: the file needs a full unpickle; says how to allow it.
  """
  import torch  # Only conversion needs torch.

  try:
    return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
  except Exception as error:  # torch raises UnpicklingError or RuntimeError here.
    if trust_pickle:
      raise
    raise ValueError(
        f"Could not read {path} with torch.load(weights_only=True): {error}\n"
        "The file holds Python objects beyond tensors. If you trust its source, load it with "
        "trust_pickle=True (config field `trust_pickle=True`), which runs its pickled code.") from error


def state_dict_to_numpy(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Torch tensors (any dtype) -> float32/int numpy arrays, keys unchanged."""
  out = {}
  for key, value in state_dict.items():
    if hasattr(value, "detach"):
      value = value.detach().float().cpu().numpy() if value.is_floating_point() else value.cpu().numpy()
    out[key] = np.asarray(value)
  return out


def strip_prefix(state_dict: Mapping[str, Any], prefix: str) -> dict[str, Any]:
  """Removes `prefix` (e.g. 'module.' from DataParallel) from every key that has it."""
  return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state_dict.items()}


def itm_loss(logits, match, match_index: int):
  """Cross-entropy of ITM logits [N, 2] against `match` [N] (1 = the caption fits the image).

  `match_index` is the logit index that means "matched" (1 for most models, 0 for ViLBERT).
  Returns (mean loss, accuracy).
  """
  import jax
  import jax.numpy as jnp

  target = jnp.where(match.astype(bool), match_index, 1 - match_index)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  loss = -jnp.take_along_axis(logp, target[:, None], axis=-1)[:, 0]
  accuracy = (jnp.argmax(logits, axis=-1) == target).astype(jnp.float32)
  return loss.mean(), accuracy.mean()


def match_score(logits, match_index: int):
  """100 x the ITM match probability softmax(logits)[:, match_index]: [N] float32."""
  import jax  # pylint: disable=g-import-not-at-top

  return 100.0 * jax.nn.softmax(logits.astype("float32"), axis=-1)[:, match_index]


def itm_pretrain_loss(model, params, batch, image_inputs, rng, match_index: int):
  """ITM cross-entropy of `model` with dropout on, for a scorer module's `pretrain_loss`.

  Args:
    model: the scorer's Flax `Model(config)`, returning (itm_logits [N, 2], out_dict).
    params: its params.
    batch: "text_ids", "text_mask" [N, T] int32 and "match" [N] int32 (1 = the caption fits).
    image_inputs: the model's image inputs for the N captions.
    rng: the dropout key.
    match_index: the logit index that means "matched".

  Returns:
    (loss, {"accuracy": the fraction of pairs the argmax gets right}).
  """
  logits, _ = model.apply({"params": params}, batch["text_ids"], batch["text_mask"], image_inputs,
                          deterministic=False, rngs={"dropout": rng})
  loss, accuracy = itm_loss(logits, batch["match"], match_index)
  return loss, {"accuracy": accuracy}
