"""Picks a scorer module by short name, importing it only when asked for.

The contract every scorer module (`scorers/<name>.py`) follows
---------------------------------------------------------------
Module-level names:

  NAME: str                 the short name ("clip", "lxmert", ...).
  OBJECTIVE: str            "itm" (image-text matching head) or "contrastive" (CLIP).
  MATCH_INDEX: int          for "itm" scorers, the softmax index that means "matched"
                            (UNITER, LXMERT, ROSITA: 1; ViLBERT: 0).
  Config                    a frozen (hashable) dataclass of the model's sizes and its text
                            settings; fields include `max_text_len` (the tokenizer's
                            truncation length, specials included) and `dtype` ("float32" or
                            "bfloat16": the compute dtype; params stay float32).
  default_config(variant=None) -> Config      the original model's sizes.
  tiny_config() -> Config                     a few-layer model for tests and the synthetic world.
  Model                     a flax.linen.Module built from a Config, its submodules named after
                            the original PyTorch keys. `Model(config).__call__(text_ids,
                            text_mask, image_inputs, deterministic=True)` returns
                            `(logits, out_dict)`: ITM logits [N, 2] (CLIP: the similarity logits
                            [N] of each caption with its own image), and a dict of
                            intermediates (pooled outputs, hidden states).
  init_params(config, rng) -> params          random parameters (the `params` collection).
  load(path, config=None, *, trust_pickle=False) -> (config, params)
                            reads the original checkpoint format; strict: missing or unexpected
                            keys and wrong shapes raise `common.CheckpointMismatch` listing them.
                            torch is imported only inside this function.
  tokenizer(config)         the scorer's real Hugging Face tokenizer, built from files shipped in
                            `scorers/assets/` (no downloads).
  text_format(config) -> tokens.TextFormat    the specials, padding, truncation, prompt and
                            word normalisation used for on-device re-tokenization.
  image_inputs(params, config, images) -> dict
                            the caption-independent work, done once per image. `images` holds
                            what the data provides for a batch of N images:
                              "pixels"        [N, H, W, 3] uint8 RGB (CLIP),
                              "region_feats"  [N, R, 2048] float32,
                              "region_boxes"  [N, R, 4] float32, x1/W, y1/H, x2/W, y2/H,
                              "region_mask"   [N, R] int32 (1 = real region).
                            Returns arrays with leading dimension N (CLIP: normalised image
                            embeddings; region models: their own box format, global region...).
  score(params, config, text_ids, text_mask, image_inputs) -> [N] float32
                            the match score on the paper's scale (100 x ITM match probability;
                            CLIP 100 x cosine). text_ids/text_mask: [N, T] int32; image_inputs
                            already aligned with the N captions (the caller repeats per sample).
                            Pure and jittable.
  pretrain_loss(params, config, batch, rng) -> (loss, metrics)
                            the model's own pretraining objective on the synthetic world (see
                            `scorers/pretrain.py` for the batch layout).
"""

from __future__ import annotations

import importlib
import types

# Short name -> module path. Modules are imported on first use so that `scorers.get("clip")`
# never pays for the others.
_MODULES = {
    "clip": "scorers.clip",
    "lxmert": "scorers.lxmert",
    "uniter": "scorers.uniter",
    "rosita": "scorers.rosita",
    "vilbert": "scorers.vilbert",
}


def names() -> list[str]:
  """The registered scorer names, sorted."""
  return sorted(_MODULES)


def register(name: str, module_path: str) -> None:
  """Adds a scorer module (e.g. a test's fake scorer) under `name`."""
  _MODULES[name] = module_path


def get(name: str) -> types.ModuleType:
  """Returns the scorer module registered as `name`.

  Raises:
    KeyError: `name` is not registered; the message lists the known names.
  """
  if name not in _MODULES:
    raise KeyError(
        f"Unknown scorer {name!r}. Known scorers: {', '.join(names())}. "
        "Pick one of these in the config (e.g. `scst.scorer=lxmert`).")
  return importlib.import_module(_MODULES[name])
