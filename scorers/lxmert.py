"""LXMERT (Tan & Bansal 2019) as an image-text matching scorer, in Flax.

Two streams over BERT-style layers: `l_layers` language layers (`encoder.layer.N`),
`r_layers` object-relationship layers over the region features (`encoder.r_layers.N`), then
`x_layers` cross-modality layers (`encoder.x_layers.N`: one cross-attention `visual_attention`
shared by both directions, per-modality self-attention, per-modality feed-forward). Regions
enter through `encoder.visn_fc`: LN(Linear(feature)) and LN(Linear(box)) averaged. The ITM head
`cls.seq_relationship` on the tanh pooler of the language [CLS] gives `cross_relationship_score`
[N, 2]; index 1 means "matched" (pretraining label is_matched = 1), so the score is
100 * softmax(logits)[:, 1].

Module names follow Hugging Face `LxmertForPreTraining` (`lxmert.*`, `cls.*`); the original
airsplay/lxmert snapshots (`Epoch20_LXRT.pth`) hold the same tree under `bert.*`, sometimes
behind a DataParallel `module.` prefix (airsplay/lxmert `src/lxrt/modeling.py`).

The visual encoder and the r-layers never see the caption, so `image_inputs` runs them once per
image and `score` runs only the language and cross-modality layers. With 5 samples and a greedy
caption per image this saves about a fifth of the scorer's FLOPs in the SCST step.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from scorers import checkpoint_files
from scorers import common
from scorers import layers
from scorers import tokens

MATCH_INDEX = 1

# BERT-base-uncased specials: LXMERT feeds [CLS] words [SEP], zero-padded, segment ids 0.
CLS_ID, SEP_ID, PAD_ID = 101, 102, 0

@dataclasses.dataclass(frozen=True)
class Config:
  """LXMERT sizes and text settings. Defaults are the released base model (`unc-nlp`)."""
  vocab_size: int = 30522
  hidden_size: int = 768
  num_heads: int = 12
  intermediate_size: int = 3072
  l_layers: int = 9
  r_layers: int = 5
  x_layers: int = 5
  visual_feat_dim: int = 2048
  visual_pos_dim: int = 4
  max_position: int = 512
  type_vocab_size: int = 2
  dropout_rate: float = 0.1
  max_text_len: int = 20  # LXMERT pretraining max_seq_length, [CLS]/[SEP] included.
  dtype: str = "float32"  # Compute dtype; params stay float32.

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)


_VARIANTS = {"base": Config()}


def default_config(variant: str | None = None) -> Config:
  """The released LXMERT sizes (9 language, 5 relationship, 5 cross layers; 768 wide)."""
  return common.variant_config(_VARIANTS, variant, "base", "scorers/lxmert.py")


def tiny_config() -> Config:
  """A few narrow layers for tests and the synthetic world; keeps the real BERT vocabulary."""
  return Config(hidden_size=32, num_heads=4, intermediate_size=64, l_layers=2, r_layers=1,
                x_layers=2)


# ------------------------------------------------------------------------------------------
# The model.


class CrossAttentionLayer(nn.Module):
  """`att` (queries from one stream, keys/values from the other) + `output` residual block."""
  config: Config

  @nn.compact
  def __call__(self, hidden, context, context_bias, deterministic: bool = True):
    c = self.config
    attended = layers.BertSelfAttention(c.hidden_size, c.num_heads, c.dropout_rate,
                                        c.compute_dtype, name="att")(
                                            hidden, context, context_bias, deterministic)
    return layers.BertResidualOutput(c.hidden_size, c.dropout_rate, c.compute_dtype,
                                     name="output")(attended, hidden, deterministic)


class XLayer(nn.Module):
  """One cross-modality layer: cross-attention, then self-attention, then FFN, per stream."""
  config: Config

  @nn.compact
  def __call__(self, lang, lang_bias, visn, visn_bias, deterministic: bool = True):
    c, dtype = self.config, self.config.compute_dtype
    # One module, called in both directions: the original shares these weights on purpose.
    cross = CrossAttentionLayer(c, name="visual_attention")
    lang, visn = (cross(lang, visn, visn_bias, deterministic),
                  cross(visn, lang, lang_bias, deterministic))
    self_att = lambda name: layers.BertAttention(c.hidden_size, c.num_heads, c.dropout_rate,
                                                 dtype, name=name)
    lang = self_att("lang_self_att")(lang, lang_bias, deterministic=deterministic)
    visn = self_att("visn_self_att")(visn, visn_bias, deterministic=deterministic)

    def ffn(x, prefix):
      inner = layers.BertIntermediate(c.intermediate_size, dtype, name=f"{prefix}_inter")(x)
      return layers.BertResidualOutput(c.hidden_size, c.dropout_rate, dtype,
                                       name=f"{prefix}_output")(inner, x, deterministic)

    return ffn(lang, "lang"), ffn(visn, "visn")


class VisualFeatEncoder(nn.Module):
  """(LN(`visn_fc`(features)) + LN(`box_fc`(boxes))) / 2 -> dropout."""
  config: Config

  @nn.compact
  def __call__(self, feats, boxes, deterministic: bool = True):
    c, dtype = self.config, self.config.compute_dtype
    x = layers.dense(c.hidden_size, "visn_fc", dtype)(feats)
    x = layers.layer_norm("visn_layer_norm", dtype)(x)
    y = layers.dense(c.hidden_size, "box_fc", dtype)(boxes)
    y = layers.layer_norm("box_layer_norm", dtype)(y)
    return nn.Dropout(c.dropout_rate)((x + y) / 2, deterministic=deterministic)


class Encoder(nn.Module):
  """`encoder.*`: the visual feature encoder and the three layer stacks."""
  config: Config

  def setup(self):
    c = self.config
    bert_layer = lambda: layers.BertLayer(c.hidden_size, c.num_heads, c.intermediate_size,
                                          c.dropout_rate, c.compute_dtype)
    self.visn_fc = VisualFeatEncoder(c)
    # List attributes become `layer_0`, `r_layers_0`, ...: the checkpoint's `layer.0`, ...
    self.layer = [bert_layer() for _ in range(c.l_layers)]
    self.r_layers = [bert_layer() for _ in range(c.r_layers)]
    self.x_layers = [XLayer(c) for _ in range(c.x_layers)]

  def encode_image(self, feats, boxes, visn_bias, deterministic: bool = True):
    """feats: [N, R, F]; boxes: [N, R, 4]; visn_bias: [N, 1, 1, R] -> [N, R, hidden]."""
    visn = self.visn_fc(feats, boxes, deterministic)
    for layer in self.r_layers:
      visn = layer(visn, visn_bias, deterministic)
    return visn

  def cross(self, lang, lang_bias, visn, visn_bias, deterministic: bool = True):
    """lang: [N, T, hidden] embeddings; visn: [N, R, hidden] from `encode_image`."""
    for layer in self.layer:
      lang = layer(lang, lang_bias, deterministic)
    for layer in self.x_layers:
      lang, visn = layer(lang, lang_bias, visn, visn_bias, deterministic)
    return lang, visn


class Backbone(nn.Module):
  """`lxmert.*` (HF) / `bert.*` (original): embeddings, encoder, pooler."""
  config: Config

  def setup(self):
    c = self.config
    self.embeddings = layers.BertTextEmbeddings(c.vocab_size, c.hidden_size, c.max_position,
                                                c.type_vocab_size, c.dropout_rate,
                                                c.compute_dtype)
    self.encoder = Encoder(c)
    self.pooler = layers.BertPooler(c.hidden_size, c.compute_dtype)


class ITMHead(nn.Module):
  """`cls.seq_relationship`; the MLM head next to it in `cls.predictions` is not ported."""

  @nn.compact
  def __call__(self, pooled):
    return layers.dense(2, "seq_relationship", pooled.dtype)(pooled)


class Model(nn.Module):
  """LXMERT with its ITM head.

  `__call__(text_ids, text_mask, image_inputs, deterministic=True)`:
    text_ids, text_mask: [N, T] int32 ([CLS] words [SEP], zero-padded; mask 1 on real tokens).
    image_inputs: either raw regions {"region_feats": [N, R, F], "region_boxes": [N, R, 4],
      "region_mask": [N, R]} or the output of `image_inputs()` {"visual_hidden": [N, R, hidden],
      "region_mask": [N, R]} (regions already through `visn_fc` and the r-layers).
  Returns (cross_relationship_score [N, 2] float32, out) with out["pooled_output"] [N, hidden],
  out["language_output"] [N, T, hidden], out["vision_output"] [N, R, hidden].
  """
  config: Config

  def setup(self):
    self.lxmert = Backbone(self.config)
    self.cls = ITMHead()

  def encode_image(self, region_feats, region_boxes, region_mask, deterministic: bool = True):
    """The caption-independent part: -> [N, R, hidden] in the compute dtype."""
    bias = layers.attention_bias(region_mask, self.config.compute_dtype)
    return self.lxmert.encoder.encode_image(region_feats, region_boxes, bias, deterministic)

  def match(self, text_ids, text_mask, visual_hidden, region_mask, deterministic: bool = True):
    """Language and cross layers, pooler and ITM head on already encoded regions."""
    dtype = self.config.compute_dtype
    lang = self.lxmert.embeddings(text_ids, deterministic=deterministic)
    lang, visn = self.lxmert.encoder.cross(
        lang, layers.attention_bias(text_mask, dtype), visual_hidden,
        layers.attention_bias(region_mask, dtype), deterministic)
    pooled = self.lxmert.pooler(lang)
    logits = self.cls(pooled).astype(jnp.float32)
    return logits, {"pooled_output": pooled, "language_output": lang, "vision_output": visn}

  def __call__(self, text_ids, text_mask, image_inputs, deterministic: bool = True):
    mask = image_inputs["region_mask"]
    visual = image_inputs.get("visual_hidden")
    if visual is None:
      visual = self.encode_image(image_inputs["region_feats"], image_inputs["region_boxes"], mask,
                                 deterministic)
    return self.match(text_ids, text_mask, visual, mask, deterministic)


# ------------------------------------------------------------------------------------------
# The scorer contract (scorers/registry.py).


def _regions(config: Config, images: Mapping[str, Any]) -> dict[str, jax.Array]:
  """Checks the data's region dict and casts it for the model (mask defaults to all regions)."""
  missing = [k for k in ("region_feats", "region_boxes") if k not in images]
  if missing:
    raise KeyError(
        f"scorers/lxmert.py: images lacks {missing}; found keys {sorted(images)}. LXMERT scores "
        "region features: give the split a region source (e.g. the obj36 TSV reader).")
  feats, boxes = images["region_feats"], images["region_boxes"]
  if feats.shape[-1] != config.visual_feat_dim or boxes.shape[-1] != config.visual_pos_dim:
    raise ValueError(
        f"scorers/lxmert.py: region_feats {feats.shape} / region_boxes {boxes.shape} must end in "
        f"{config.visual_feat_dim} / {config.visual_pos_dim} (Config.visual_feat_dim / "
        "visual_pos_dim); use features from the detector the checkpoint was trained on.")
  mask = images.get("region_mask")
  if mask is None:  # The original LXMERT always had 36 real regions and no mask.
    mask = jnp.ones(feats.shape[:2], jnp.int32)
  dtype = config.compute_dtype
  return {"region_feats": jnp.asarray(feats, dtype), "region_boxes": jnp.asarray(boxes, dtype),
          "region_mask": jnp.asarray(mask, jnp.int32)}


def _dummy_inputs(config: Config):
  text = jnp.zeros((1, 4), jnp.int32)
  images = {"region_feats": jnp.zeros((1, 3, config.visual_feat_dim), jnp.float32),
            "region_boxes": jnp.zeros((1, 3, config.visual_pos_dim), jnp.float32),
            "region_mask": jnp.ones((1, 3), jnp.int32)}
  return text, jnp.ones_like(text), images


def image_inputs(params, config: Config, images: Mapping[str, Any]) -> dict[str, jax.Array]:
  """Runs the caption-independent layers once per image.

  Args:
    images: "region_feats" [N, R, 2048], "region_boxes" [N, R, 4] (x1/W, y1/H, x2/W, y2/H),
      "region_mask" [N, R] (1 = real region; optional, all real when absent).

  Returns:
    {"visual_hidden": [N, R, hidden] compute dtype, "region_mask": [N, R] int32}.
  """
  regions = _regions(config, images)
  visual = Model(config).apply({"params": params}, regions["region_feats"],
                               regions["region_boxes"], regions["region_mask"],
                               method=Model.encode_image)
  return {"visual_hidden": visual, "region_mask": regions["region_mask"]}


def _score_images(config: Config, images):
  """`score` takes the output of `image_inputs` (repeated per caption) or raw regions."""
  return images if "visual_hidden" in images else _regions(config, images)


def tokenizer(config: Config):
  """The bert-base-uncased tokenizer from the bundled vocabulary."""
  del config  # Every LXMERT checkpoint uses the same uncased vocabulary.
  return tokens.bert_tokenizer(cased=False)


def text_format(config: Config):
  """[CLS] words [SEP], zero-padded, truncated to `config.max_text_len` (specials included)."""
  return tokens.TextFormat(bos_id=CLS_ID, eos_id=SEP_ID, pad_id=PAD_ID,
                           max_length=config.max_text_len)


# ------------------------------------------------------------------------------------------
# Checkpoints.

# Heads of LxmertForPreTraining that the scorer does not use, and a buffer some HF versions save.
IGNORED_KEYS = (r"cls\.predictions\..*", r"obj_predict_head\..*", r"answer_head\..*",
                r"(lxmert|bert)\.embeddings\.position_ids")

# Config field -> HF config.json key.
_HF_FIELDS = {
    "vocab_size": "vocab_size", "hidden_size": "hidden_size", "num_heads": "num_attention_heads",
    "intermediate_size": "intermediate_size", "l_layers": "l_layers", "r_layers": "r_layers",
    "x_layers": "x_layers", "visual_feat_dim": "visual_feat_dim",
    "visual_pos_dim": "visual_pos_dim", "max_position": "max_position_embeddings",
    "type_vocab_size": "type_vocab_size", "dropout_rate": "hidden_dropout_prob",
}


def config_from_hf(hf: Mapping[str, Any], source: str = "config.json") -> Config:
  """Our Config from a Hugging Face LXMERT config.json (as a dict)."""
  act = hf.get("hidden_act", "gelu")
  if act != "gelu":
    raise ValueError(f"{source}: hidden_act is {act!r}; this port implements only 'gelu' (erf), "
                     "the activation of every released LXMERT.")
  base = default_config()
  return dataclasses.replace(base, **{field: type(getattr(base, field))(hf[key])
                                      for field, key in _HF_FIELDS.items() if key in hf})


def _rename(key: str) -> str:
  """Original `bert.*` -> HF `lxmert.*`; everything else already matches the Flax tree."""
  return "lxmert." + key[len("bert."):] if key.startswith("bert.") else key


def load(path: str, config: Config | None = None, *, trust_pickle: bool = False):
  """Reads an LXMERT checkpoint: an HF directory or an original airsplay `.pth` state dict.

  Args:
    path: a directory with `config.json` and weights (`unc-nlp/lxmert-base-uncased` layout,
      keys `lxmert.*`, `cls.*`, `obj_predict_head.*`, `answer_head.*`), or a file written by
      `torch.save(state_dict)` (`Epoch20_LXRT.pth`: keys `bert.*`, `cls.*`, ..., optionally
      behind `module.`), or a `.safetensors` file with either layout.
    config: the sizes to build; default: the directory's config.json, else the base sizes.
    trust_pickle: allow a full unpickle of `.pth`/`.bin` files (runs code from the file).

  Returns:
    (config, params) with float32 numpy params.

  Raises:
    checkpoint_files.CheckpointFileError: the file or directory cannot be read.
    common.CheckpointMismatch: keys missing, unexpected or of the wrong shape (all listed).
  """
  if os.path.isdir(path):
    hf_config, state, source = checkpoint_files.read_hf_directory(path, trust_pickle=trust_pickle)
    config = config or config_from_hf(hf_config, os.path.join(path, "config.json"))
  else:
    state = checkpoint_files.read_weights_file(path, trust_pickle=trust_pickle)
    source, config = path, config or default_config()
  state = common.strip_prefix(state, "module.", source)
  return config, common.params_from_state(state, init_params, config, source=source,
                                          rename=_rename, ignore=IGNORED_KEYS)


SCORER = common.itm_scorer(
    "lxmert", Model, MATCH_INDEX, default_config=default_config, tiny_config=tiny_config,
    load=load, tokenizer=tokenizer, text_format=text_format, image_inputs=image_inputs,
    dummy_inputs=_dummy_inputs,
    pretrain_images=lambda params, config, images: _regions(config, images),
    score_images=_score_images)
init_params, score, pretrain_loss = SCORER.init_params, SCORER.score, SCORER.pretrain_loss
