"""The reward benchmark's models and inputs: random weights at the real sizes.

`build(config, devices)` makes the captioner (the paper's FC-LSTM sizes) and the scorer (its
released sizes, or a real checkpoint) with the benchmark's captioner vocabulary
(`benchmark_words`); `raw_images` draws the scorer's per-image inputs. Used by `bench.run`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import scorers
from scorers import tokens
from vlprobe_jax import captioner as captioner_lib
from vlprobe_jax import scorer_pretrain
from vlprobe_jax import scoring

NUM_REGIONS = 36
_WHOLE_WORD = re.compile(r"[a-z]+")


def benchmark_words(num_words: int, multi_piece_fraction: float, seed: int = 0) -> tuple[str, ...]:
  """A captioner vocabulary of `num_words` words (UNK included), plus '' at id 0.

  Whole-word entries of the bundled bert-base-uncased vocabulary in its (roughly frequency)
  order, a `multi_piece_fraction` share replaced by compounds of two common words that are not
  BERT tokens themselves ("skate" + "park"), so that, as in COCO's vocabulary, most words are one
  WordPiece and some are several; the CLIP BPE split follows from the same words.
  """
  if num_words < 2 or not 0.0 <= multi_piece_fraction <= 1.0:
    raise ValueError(f"vlprobe_jax/bench/run.py: vocab_words={num_words}, multi_piece_fraction="
                     f"{multi_piece_fraction}; expected >= 2 words and a fraction in [0, 1].")
  with open(tokens.BERT_UNCASED_VOCAB, encoding="utf-8") as f:
    bert = [line.rstrip("\n") for line in f]
  whole = [w for w in bert if _WHOLE_WORD.fullmatch(w) and (len(w) > 1 or w == "a")]
  content = num_words - 1
  num_compounds = int(round(content * multi_piece_fraction))
  if content - num_compounds > len(whole):
    raise ValueError(f"vlprobe_jax/bench/run.py: vocab_words={num_words} needs more whole words than "
                     f"the {len(whole)} in {tokens.BERT_UNCASED_VOCAB}; lower vocab_words.")
  common = [w for w in whole[:3000] if len(w) >= 3]
  taken, compounds = set(bert), []
  rng = np.random.default_rng(seed)
  while len(compounds) < num_compounds:
    first, second = rng.integers(0, len(common), 2)
    word = common[first] + common[second]
    if word not in taken:
      taken.add(word)
      compounds.append(word)
  return ("",) + tuple(whole[:content - num_compounds]) + tuple(compounds) + ("UNK",)


def batch_sizes(value: Any) -> list[int]:
  """config.images_per_batch ("50" or "50,250,1000" or an int) -> [50, 250, 1000]."""
  try:
    sizes = [int(part) for part in str(value).split(",") if part.strip()]
  except ValueError:
    sizes = []
  if not sizes or min(sizes) < 1:
    raise ValueError(f"config.images_per_batch={value!r}: expected positive integers separated "
                     "by commas, e.g. '50' or '50,250,1000'.")
  return sizes


def resolve_dtype(dtype: str, platform: str) -> str:
  if dtype == "auto":
    return "float32" if platform == "cpu" else "bfloat16"
  if dtype not in ("float32", "bfloat16"):
    raise ValueError(f"config.dtype={dtype!r}: expected 'auto', 'float32' or 'bfloat16'.")
  return dtype


@dataclasses.dataclass
class Setup:
  """Everything the timings share: the models at their sizes and the host image pool."""
  name: str
  spec: scorers.Scorer
  scorer: scoring.LoadedScorer  # in the benchmark's compute dtype
  cap_config: captioner_lib.CaptionerConfig
  cap_params: Any
  devices: list
  policy_gradient: str = "replay"  # the SCST step's log-probs: "replay" or "sampling"


def random_params(init_fn, config, seed: int):
  """Random params in the tree and shapes of `init_fn(rng)`, without compiling the model.

  Weights ~ N(0, 0.02) (BERT's and CLIP's initializer range), biases 0, LayerNorm scales 1,
  CLIP's temperature at its initial value. Throughput does not depend on the values, and
  compiling a model's init costs more than the benchmark itself on a CPU.
  """
  shapes = jax.eval_shape(init_fn, jax.random.key(0))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = getattr(path[-1], "key", str(path[-1]))
    if name == "scale":
      value = np.ones(leaf.shape, np.float32)
    elif name == "bias":
      value = np.zeros(leaf.shape, np.float32)
    elif name == "logit_scale":
      value = np.full(leaf.shape, getattr(config, "logit_scale_init", 0.0), np.float32)
    else:
      value = 0.02 * rng.standard_normal(leaf.shape, np.float32)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def build(config, devices) -> Setup:
  """Random-weight captioner and scorer at the configured sizes."""
  platform = devices[0].platform
  spec = scorers.get(config.scorer)
  if config.scorer_checkpoint:  # Real weights make the bf16 check meaningful; speed is the same.
    base, scorer_params = spec.load(config.scorer_checkpoint)
  else:
    # Tiny: the test sizes with the real tokenizer's vocabulary (the ids it gives must embed).
    base = (scorer_pretrain.world_config(spec) if config.scorer_size == "tiny"
            else spec.default_config())
    scorer_params = random_params(lambda rng: spec.init_params(base, rng), base, config.seed)
  scorer_config = dataclasses.replace(base, dtype=resolve_dtype(config.dtype, platform))
  words = benchmark_words(config.vocab_words, config.multi_piece_fraction, config.seed)
  cap = config.captioner
  cap_config = captioner_lib.CaptionerConfig(
      vocab_size=len(words), fc_dim=cap.fc_dim, embed_size=cap.embed_size,
      rnn_size=cap.rnn_size, dropout=cap.dropout, dtype=cap.dtype)
  cap_params = random_params(lambda rng: captioner_lib.init_params(cap_config, rng), cap_config,
                             config.seed + 1)
  scorer = scoring.LoadedScorer(config.scorer, spec, scorer_config, scorer_params, words,
                                config.max_length,
                                source=config.scorer_checkpoint or "random init",
                                attention=config.attention, gelu=config.gelu,
                                length_groups=config.length_groups)
  return Setup(config.scorer, spec, scorer, cap_config, cap_params, devices,
               config.policy_gradient)


# The settings a variant may change (config.variants), with the values each takes.
VARIANT_FIELDS = {"attention": ("auto", "xla", "cudnn"), "gelu": ("exact", "tanh"),
                  "policy_gradient": ("replay", "sampling"),
                  "captioner_dtype": ("float32", "bfloat16"), "length_groups": None}


def parse_variants(text: str) -> list[dict[str, Any]]:
  """config.variants 'attention=xla;gelu=tanh,length_groups=1' -> [{'attention': 'xla'},
  {'gelu': 'tanh', 'length_groups': 1}]: ';' separates variants, ',' joins changes."""
  variants = []
  for item in filter(None, (part.strip() for part in str(text or "").split(";"))):
    changes = {}
    for change in filter(None, (c.strip() for c in item.split(","))):
      field, _, value = change.partition("=")
      field, value = field.strip(), value.strip()
      allowed = VARIANT_FIELDS.get(field, ())
      if field == "length_groups" and value.isdigit() and int(value) >= 1:
        changes[field] = int(value)
      elif allowed and value in allowed:
        changes[field] = value
      else:
        raise ValueError(f"config.variants: {change!r} in {text!r}; expected field=value with "
                         f"field one of {', '.join(VARIANT_FIELDS)} (length_groups a positive "
                         "integer; the others one of " + "; ".join(
                             f"{k}: {'/'.join(v)}" for k, v in VARIANT_FIELDS.items() if v)
                         + ").")
    variants.append(changes)
  return variants


def variant_setup(setup: Setup, changes: dict[str, Any]) -> Setup:
  """`setup` with a variant's changes (its own LoadedScorer, so its own compiled reward)."""
  scorer_changes = {k: v for k, v in changes.items() if k in ("attention", "gelu", "length_groups")}
  scorer = dataclasses.replace(setup.scorer, **scorer_changes) if scorer_changes else setup.scorer
  cap_config = setup.cap_config
  if "captioner_dtype" in changes:
    cap_config = dataclasses.replace(cap_config, dtype=changes["captioner_dtype"])
  return dataclasses.replace(setup, scorer=scorer, cap_config=cap_config,
                             policy_gradient=changes.get("policy_gradient",
                                                         setup.policy_gradient))


def raw_images(setup: Setup, num_images: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Random scorer inputs per image: CLIP unit embeddings; SigLIP and BLIP uint8 pixels at the
  model's input size (the data pipeline's resize done, the on-device transform still to do);
  else 36 regions x 2048 with boxes."""
  if setup.name == "clip":
    embeds = rng.normal(size=(num_images, setup.scorer.config.projection_dim))
    return {"image_embeds": (embeds / np.linalg.norm(embeds, axis=1, keepdims=True)
                             ).astype(np.float32)}
  if setup.spec.image_kind == "pixels":
    size = setup.scorer.config.image_size
    return {"pixels": rng.integers(0, 256, (num_images, size, size, 3), np.uint8)}
  shape = (num_images, NUM_REGIONS)
  feats = rng.normal(size=shape + (getattr(setup.scorer.config, "visual_feat_dim", 2048),))
  corner, size = rng.uniform(0.0, 0.7, shape + (2,)), rng.uniform(0.1, 0.3, shape + (2,))
  return {"region_feats": np.maximum(feats, 0.0).astype(np.float32),  # post-ReLU like real ones
          "region_boxes": np.concatenate([corner, corner + size], axis=-1).astype(np.float32),
          "region_mask": np.ones(shape, np.int32)}
