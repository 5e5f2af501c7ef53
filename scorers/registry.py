"""The scorer contract (`Scorer`) and the registry that finds a scorer by its short name.

Every scorer module `scorers/<name>.py` ends with one `SCORER = Scorer(...)`; `get(name)` imports
the module on first use (so `get("clip")` never pays for the others) and checks that what it
finds is a `Scorer` of that name. `names()` is the one list of scorer names: the configs, the
stages and the benchmark read it from here.

Adding a scorer `<name>`:
  1. `scorers/<name>.py`: the Flax `Model` named after the original's modules, its `Config`
     (a frozen dataclass with `max_text_len` and `dtype`), `load` for the original checkpoint
     format (files through `checkpoint_files`, Hugging Face directories through
     `checkpoint_files.read_hf_directory`; strict: `common.params_from_state`, the keys dropped
     on purpose in the module's `IGNORED_KEYS`), and `SCORER = Scorer(...)` (a region ITM model
     builds it with `common.itm_scorer`, which adds `init_params`, `score` and `pretrain_loss`);
  2. `tests/test_<name>.py`: parity with the original at stated tolerances; the contract tests
     (`tests/test_scorers_contract.py`) and the re-tokenization property tests pick the new
     scorer up from the registry by themselves;
  3. one line in `_MODULES` below.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

OBJECTIVES = ("itm", "contrastive")
IMAGE_KINDS = ("regions", "pixels")

# Short name -> module path: the one place scorer names come from.
_MODULES = {
    "clip": "scorers.clip",
    "lxmert": "scorers.lxmert",
    "uniter": "scorers.uniter",
    "rosita": "scorers.rosita",
    "vilbert": "scorers.vilbert",
    "siglip": "scorers.siglip",
    "blip_itm": "scorers.blip_itm",
}


@dataclasses.dataclass(frozen=True)
class Scorer:
  """What every scorer provides. Shapes: N captions, T text tokens, R regions.

  Attributes:
    name: the short name ("clip", "lxmert", ...).
    objective: "itm" (an image-text matching head) or "contrastive" (two towers, CLIP).
    match_index: for "itm", the softmax index that means "matched" (UNITER, LXMERT, ROSITA 1;
      ViLBERT 0); None for contrastive scorers.
    image_kind: what the data must provide for the image side: "regions" (region_feats [N, R,
      2048], region_boxes [N, R, 4] as x1/W, y1/H, x2/W, y2/H, region_mask [N, R]) or "pixels"
      ([N, H, W, 3] uint8 RGB).
    model: the Flax module class; `model(config)(text_ids, text_mask, image_inputs,
      deterministic=True)` returns `(logits, out_dict)`: ITM logits [N, 2] (contrastive: the
      similarity logit [N] of each caption with its own image) and the intermediates.
    default_config: `(variant=None) -> Config`, the released model's sizes.
    tiny_config: `() -> Config`, a few narrow layers for tests and the synthetic world.
    init_params: `(config, rng) -> params`, random float32 parameters.
    load: `(path, config=None, *, trust_pickle=False) -> (config, params)`: the original
      checkpoint format, read strictly (missing, unexpected and mis-shaped keys raise
      `common.CheckpointMismatch`); params are float32 numpy arrays; torch imported only here.
    tokenizer: `(config) -> tokenizer`, the real Hugging Face tokenizer built from files in
      `scorers/assets/` or the checkpoint (never downloaded).
    text_format: `(config) -> tokens.TextFormat`, the specials, padding, truncation and word
      normalisation of on-device re-tokenization.
    image_inputs: `(params, config, images) -> dict`, the caption-independent work, done once
      per image; outputs have leading dimension N. Jittable.
    score: `(params, config, text_ids [N, T], text_mask [N, T], image_inputs) -> [N] float32`,
      the match score on the paper's scale (100 x the ITM match probability; CLIP 100 x cos),
      `image_inputs` already aligned with the captions. Pure and jittable (config static).
    pretrain_loss: `(params, config, batch, rng) -> (loss, metrics)`, the model's own objective
      on the synthetic world; batch: "text_ids", "text_mask" [N, T], "images" (raw image side of
      the N captions), "match" [N] int32 (1 = the caption fits its image).
    embed_texts: contrastive scorers only: `(params, config, text_ids, text_mask) -> [N, D]`
      unit-norm text embeddings (retrieval evaluation).
  """
  name: str
  objective: str
  match_index: int | None
  image_kind: str
  model: Any
  default_config: Callable[..., Any]
  tiny_config: Callable[[], Any]
  init_params: Callable[[Any, Any], Any]
  load: Callable[..., tuple[Any, Any]]
  tokenizer: Callable[[Any], Any]
  text_format: Callable[[Any], Any]
  image_inputs: Callable[[Any, Any, Any], dict]
  score: Callable[..., Any]
  pretrain_loss: Callable[..., tuple[Any, dict]]
  embed_texts: Callable[..., Any] | None = None

  def __post_init__(self):
    problems = []
    if self.objective not in OBJECTIVES:
      problems.append(f"objective={self.objective!r}, expected one of {OBJECTIVES}")
    if self.objective == "itm" and self.match_index not in (0, 1):
      problems.append(f"match_index={self.match_index!r}, expected 0 or 1 for an ITM head")
    if self.objective == "contrastive" and self.embed_texts is None:
      problems.append("a contrastive scorer needs embed_texts")
    if self.image_kind not in IMAGE_KINDS:
      problems.append(f"image_kind={self.image_kind!r}, expected one of {IMAGE_KINDS}")
    if problems:
      raise ValueError(f"Scorer {self.name!r}: " + "; ".join(problems) + ".")


def names() -> list[str]:
  """The registered scorer names, sorted."""
  return sorted(_MODULES)


def register(name: str, module_path: str) -> None:
  """Adds a scorer module (e.g. a test's fake scorer) under `name`."""
  _MODULES[name] = module_path


def get(name: str) -> Scorer:
  """The `Scorer` registered as `name`.

  Raises:
    KeyError: `name` is not registered; the message lists the known names.
    TypeError: the module's `SCORER` is not a `Scorer` of that name.
  """
  if name not in _MODULES:
    raise KeyError(f"Unknown scorer {name!r}. Known scorers: {', '.join(names())}. "
                   "Pick one of these in the config (e.g. `scst.scorer=lxmert`).")
  module = importlib.import_module(_MODULES[name])
  scorer = getattr(module, "SCORER", None)
  if not isinstance(scorer, Scorer) or scorer.name != name:
    raise TypeError(f"{_MODULES[name]}.SCORER must be a scorers.registry.Scorer named {name!r}; "
                    f"found {type(scorer).__name__} {getattr(scorer, 'name', None)!r}.")
  return scorer
