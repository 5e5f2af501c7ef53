"""Strict conversion of PyTorch-style state dicts into Flax trees, and the ITM scorers' shared parts.

The Flax modules are named after the original PyTorch modules, so a checkpoint key
`a.b.0.dense.weight` lives at `params["a"]["b_0"]["dense"]["kernel"]` up to a few fixed rules:

  * a Linear `weight` [out, in] becomes a Dense `kernel` [in, out] (transposed);
  * an Embedding `weight` becomes `embedding`;
  * a LayerNorm `weight` (or the old `gamma`) becomes `scale`, `beta` becomes `bias`;
  * a list index `layer.3` becomes the Flax submodule `layer_3`.

The Flax parameter tree of a freshly initialised model is the schema: every leaf must be filled
exactly once with the right shape and finite values, and every checkpoint key must land somewhere
or match the module's `IGNORED_KEYS` (regular expressions of heads the scorer does not use,
dropped on purpose and logged here). Anything else raises `CheckpointMismatch`, listing every
problem at once, shapes in the checkpoint's own orientation.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
from flax import traverse_util

_log = logging.getLogger(__name__)


class CheckpointMismatch(ValueError):
  """A checkpoint does not fit the model: lists missing, unexpected and mis-shaped keys."""

  def __init__(self, source: str, missing: list[str], unexpected: list[str],
               wrong_shapes: list[str]):
    self.missing, self.unexpected, self.wrong_shapes = missing, unexpected, wrong_shapes
    parts = [f"Checkpoint {source} does not match the model config."]
    for title, items in (("missing (in the model, not in the checkpoint)", missing),
                         ("unexpected (in the checkpoint, not in the model)", unexpected),
                         ("wrong shapes (checkpoint key: checkpoint shape, model expects)",
                          wrong_shapes)):
      if items:
        shown = "\n    ".join(items[:40])
        more = f"\n    ... and {len(items) - 40} more" if len(items) > 40 else ""
        parts.append(f"  {len(items)} {title}:\n    {shown}{more}")
    parts.append("  Check that the config (sizes, layer counts, vocabulary) matches the checkpoint, "
                 "or that the file is the model you meant to load.")
    super().__init__("\n".join(parts))


class NonFiniteWeights(ValueError):
  """A checkpoint holds NaN or Inf values."""


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


def ignored_keys(state_dict: Mapping[str, Any], ignore: Iterable[str]) -> list[str]:
  """The keys of `state_dict` that match one of the `ignore` regular expressions, sorted."""
  patterns = [re.compile(p) for p in ignore]
  return sorted(k for k in state_dict if any(p.fullmatch(k) for p in patterns))


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
    source: the file name, used in messages.
    rename: maps a checkpoint key to the module path the Flax model uses for it (dots, list
      indices as `.N`), or None to drop it. Applied before the fixed rules above.
    ignore: the module's `IGNORED_KEYS`: regular expressions of checkpoint keys dropped on
      purpose (heads the scorer does not use); logged, never counted as unexpected.

  Returns:
    A params tree with the template's structure, filled with float32 numpy arrays.

  Raises:
    CheckpointMismatch: listing every missing, unexpected and mis-shaped key.
    NonFiniteWeights: naming the tensors that hold NaN or Inf.
  """
  flat_template = traverse_util.flatten_dict(dict(template))
  dropped = set(ignored_keys(state_dict, ignore))
  if dropped:
    _log.info("%s: ignoring %d tensors the scorer does not use on purpose: %s", source,
              len(dropped), ", ".join(sorted(dropped)))
  filled: dict[tuple[str, ...], np.ndarray] = {}
  misshaped: set[tuple[str, ...]] = set()
  unexpected, wrong_shapes, non_finite = [], [], []
  for key, value in state_dict.items():
    if key in dropped:
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
      expected = tuple(flat_template[path].shape)
      transposed = transpose and value.ndim == 2
      array = value.T if transposed else value
      if tuple(array.shape) != expected:
        in_checkpoint_order = expected[::-1] if transposed else expected
        wrong_shapes.append(f"{key}: {tuple(value.shape)}, expects {in_checkpoint_order}")
        misshaped.add(path)
      else:
        filled[path] = array.astype(np.float32)
        if not np.all(np.isfinite(filled[path])):
          non_finite.append(key)
      placed = True
      break
    if not placed:
      unexpected.append(key)
  missing = ["/".join(path) for path in flat_template
             if path not in filled and path not in misshaped]
  if missing or unexpected or wrong_shapes:
    raise CheckpointMismatch(source, sorted(missing), sorted(unexpected), sorted(wrong_shapes))
  if non_finite:
    raise NonFiniteWeights(f"Checkpoint {source} holds NaN or Inf values in {len(non_finite)} "
                           f"tensor(s): {', '.join(sorted(non_finite)[:10])}. The file is damaged "
                           "or came from a diverged run; use another copy.")
  return traverse_util.unflatten_dict(filled)


def params_from_state(state_dict: Mapping[str, np.ndarray], init_params: Callable, config, *,
                      source: str, rename: Callable[[str], str | None] = lambda key: key,
                      ignore: Iterable[str] = ()) -> dict[str, Any]:
  """`torch_to_flax` onto the tree of `init_params(config, rng)` (only its shapes: nothing is
  initialised). Raises as `torch_to_flax` does."""
  import jax  # pylint: disable=import-outside-toplevel

  template = jax.eval_shape(functools.partial(init_params, config), jax.random.key(0))
  return torch_to_flax(state_dict, template, source=source, rename=rename, ignore=ignore)


def strip_prefix(state_dict: Mapping[str, Any], prefix: str, source: str = "state dict"
                 ) -> dict[str, Any]:
  """Removes `prefix` (e.g. 'module.' from DataParallel) from every key that has it.

  Raises:
    CheckpointMismatch: a key with the prefix and one without would land on the same name
      (the checkpoint holds both `x` and `module.x`); both are named.
  """
  out: dict[str, Any] = {}
  origin: dict[str, str] = {}
  clashes = []
  for key, value in state_dict.items():
    name = key[len(prefix):] if key.startswith(prefix) else key
    if name in out:
      clashes.append(f"{origin[name]} and {key} (both become {name})")
      continue
    out[name], origin[name] = value, key
  if clashes:
    raise CheckpointMismatch(source, [], [f"duplicate after removing {prefix!r}: {c}"
                                          for c in clashes], [])
  return out


# ------------------------------------------------------------------------------------------
# Configs.


def variant_config(variants: Mapping[str, Any], variant: str | None, default: str,
                   source: str):
  """`variants[variant or default]`; an unknown name is an error listing the known ones."""
  variant = variant or default
  if variant not in variants:
    raise ValueError(f"{source}: unknown variant {variant!r}; expected one of "
                     f"{sorted(variants)}.")
  return variants[variant]


def config_from_original(config_type, original: Mapping[str, Any], keys: Mapping[str, str],
                         source: str, **overrides):
  """`config_type` with each field read from `original[keys[field]]`, then `overrides`.

  Raises:
    ValueError: keys missing from `original`, all listed.
  """
  missing = sorted(key for key in keys.values() if key not in original)
  if missing:
    raise ValueError(f"{source}: the original config lacks {missing}; expected the keys "
                     f"{sorted(keys.values())}.")
  return config_type(**{**{field: original[key] for field, key in keys.items()}, **overrides})


# ------------------------------------------------------------------------------------------
# The parts every ITM scorer shares.


def region_arrays(images: Mapping[str, Any]):
  """(feats [N, R, F] float32, boxes [N, R, 4] float32, mask [N, R] int32) from the data's
  region dict: "region_feats", "region_boxes" (x1/W, y1/H, x2/W, y2/H: fractions of the image
  size) and "region_mask" (1 = a real region)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  return (jnp.asarray(images["region_feats"], jnp.float32),
          jnp.asarray(images["region_boxes"], jnp.float32),
          jnp.asarray(images["region_mask"], jnp.int32))


def match_score(logits, match_index: int):
  """100 x the ITM match probability softmax(logits)[:, match_index]: [N] float32."""
  import jax  # pylint: disable=import-outside-toplevel

  return 100.0 * jax.nn.softmax(logits.astype("float32"), axis=-1)[:, match_index]


def itm_loss(logits, match, match_index: int):
  """Cross-entropy of ITM logits [N, 2] against `match` [N] (1 = the caption fits the image).

  `match_index` is the logit index that means "matched" (1 for most models, 0 for ViLBERT).
  Returns (mean loss, accuracy).
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  target = jnp.where(match.astype(bool), match_index, 1 - match_index)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  loss = -jnp.take_along_axis(logp, target[:, None], axis=-1)[:, 0]
  accuracy = (jnp.argmax(logits, axis=-1) == target).astype(jnp.float32)
  return loss.mean(), accuracy.mean()


def itm_functions(model, match_index: int, *, image_inputs: Callable, dummy_inputs: Callable,
                  pretrain_images: Callable | None = None,
                  score_images: Callable | None = None) -> dict[str, Callable]:
  """`init_params`, `score` and `pretrain_loss` of an ITM scorer, for `registry.Scorer(...)`.

  Args:
    model: the Flax module class; `model(config)(text_ids, text_mask, images, deterministic)`
      returns (ITM logits [N, 2], out_dict).
    match_index: the logit index that means "matched".
    image_inputs: the module's `image_inputs(params, config, images)`.
    dummy_inputs: `(config) -> (text_ids, text_mask, images)`, tiny inputs for `init`.
    pretrain_images: `(params, config, raw images) -> model images` during pretraining (default
      `image_inputs`; LXMERT passes raw regions so its visual layers train with dropout).
    score_images: `(config, images) -> model images` applied in `score` (default: as given).
  """
  import jax  # pylint: disable=import-outside-toplevel

  pretrain_images = pretrain_images or image_inputs

  @functools.partial(jax.jit, static_argnums=0)
  def init_params(config, rng):
    """Random parameters (the `params` collection), float32; compiled once per config."""
    return model(config).init(rng, *dummy_inputs(config))["params"]

  def score(params, config, text_ids, text_mask, images):
    """100 x the ITM match probability, [N] float32. Pure and jittable (config static)."""
    if score_images is not None:
      images = score_images(config, images)
    logits, _ = model(config).apply({"params": params}, text_ids, text_mask, images)
    return match_score(logits, match_index)

  def pretrain_loss(params, config, batch, rng):
    """ITM cross-entropy with dropout on; returns (loss, {"accuracy": ...})."""
    images = pretrain_images(params, config, batch["images"])
    logits, _ = model(config).apply({"params": params}, batch["text_ids"], batch["text_mask"],
                                    images, deterministic=False, rngs={"dropout": rng})
    loss, accuracy = itm_loss(logits, batch["match"], match_index)
    return loss, {"accuracy": accuracy}

  return {"init_params": init_params, "score": score, "pretrain_loss": pretrain_loss}


def itm_scorer(name: str, model, match_index: int, *, default_config, tiny_config, load,
               tokenizer, text_format, image_inputs, dummy_inputs,
               pretrain_images: Callable | None = None, score_images: Callable | None = None):
  """The `registry.Scorer` of a region-based ITM model: its own parts, plus the init, score
  and pretraining loss that `itm_functions` builds from the model and the match index."""
  from scorers import registry  # pylint: disable=import-outside-toplevel

  return registry.Scorer(
      name=name, objective="itm", match_index=match_index, image_kind="regions", model=model,
      default_config=default_config, tiny_config=tiny_config, load=load, tokenizer=tokenizer,
      text_format=text_format, image_inputs=image_inputs,
      **itm_functions(model, match_index, image_inputs=image_inputs, dummy_inputs=dummy_inputs,
                      pretrain_images=pretrain_images, score_images=score_images))
