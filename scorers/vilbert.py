"""ViLBERT as an image-text matching scorer: a Flax port of the pretraining model.

Ports `BertForMultiModalPreTraining` of facebookresearch/vilbert-multi-task (`vilbert/vilbert.py`):
a text stream (`bert.embeddings`, `bert.encoder.layer.N`), a visual stream with its own width
(`bert.v_embeddings`, `bert.encoder.v_layer.N`), co-attention blocks
(`bert.encoder.c_layer.N`) interleaved as the config's `v_biattention_id` / `t_biattention_id`
say, ReLU poolers on text token 0 and on region 0 (the global region), and the ITM head
`cls.bi_seq_relationship` on the product of the two pooled vectors.

ViLBERT's ITM label convention is reversed: in its pretraining data label 0 is the true caption
and 1 a random one, and its zero-shot retrieval scores with `softmax(logits)[:, 0]`. Hence
MATCH_INDEX = 0 here, and `score` is 100 x that probability.

Visual input, as the original feature reader builds it: a global region first (the mean of the
image's detections, box [0, 0, 1, 1, 1]), then the detections with 5-d boxes
(x1/W, y1/H, x2/W, y2/H, area / (W H)), zero rows for padding, and a 1/0 region mask.

Checkpoints: the original `.bin` state dicts (`bert.*`, `cls.*`). The MLM and region-class heads
(`cls.predictions.*`, `cls.imagePredictions.*`) and the extra heads of the multi-task model
(`vil_prediction*`, `vil_logit`, ...) are dropped on purpose and logged. `biOutput.q_dense1/2`
exist in every checkpoint but the original forward never calls them: they are loaded (so the
load stays strict) and never used.

Not ported (off in every released config): `fast_mode`, `in_batch_pairs`, `dynamic_attention`,
`with_coattention=False`, frozen lower layers (`fixed_t_layer`/`fixed_v_layer`, a training-only
`no_grad`), and the multi-task model's task token (`task_specific_tokens`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from scorers import checkpoint_files
from scorers import common
from scorers import layers
from scorers import tokens

# Softmax index of "the caption matches the image". ViLBERT is the odd one out: 0, not 1.
MATCH_INDEX = 0

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Config:
  """ViLBERT sizes (field names as in the original BertConfig JSON) and text/region settings.

  The original has four dropout probabilities (text/visual, hidden/attention); every released
  config sets them all to 0.1, so one `dropout_rate` stands for them.
  """
  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  v_feature_size: int = 2048
  v_hidden_size: int = 1024
  v_num_hidden_layers: int = 6
  v_num_attention_heads: int = 8
  v_intermediate_size: int = 1024
  bi_hidden_size: int = 1024
  bi_num_attention_heads: int = 8
  # Co-attention block k runs after visual layer v_biattention_id[k] - 1 and text layer
  # t_biattention_id[k] - 1 (see `layer_schedule`).
  v_biattention_id: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
  t_biattention_id: tuple[int, ...] = (6, 7, 8, 9, 10, 11)
  fusion_method: str = "mul"  # how the pooled vectors meet: "mul" or "sum"
  dropout_rate: float = 0.1
  max_text_len: int = 30  # [CLS] + word pieces + [SEP], as in ViLBERT's retrieval setup
  max_regions: int = 101  # global region + up to 100 detections (multi-task retrieval)
  vocab_path: str | None = None  # a bert-base-uncased vocab.txt other than the shipped one
  dtype: str = "float32"

  def __post_init__(self):
    problems = []
    for width, heads, what in ((self.hidden_size, self.num_attention_heads, "text"),
                               (self.v_hidden_size, self.v_num_attention_heads, "visual"),
                               (self.bi_hidden_size, self.bi_num_attention_heads, "bi")):
      if width % heads:
        problems.append(f"{what} width {width} is not divisible by its {heads} heads")
    v_ids, t_ids = tuple(self.v_biattention_id), tuple(self.t_biattention_id)
    if len(v_ids) != len(t_ids):
      problems.append(f"v_biattention_id {v_ids} and t_biattention_id {t_ids} differ in length")
    for ids, count, what in ((v_ids, self.v_num_hidden_layers, "v"),
                             (t_ids, self.num_hidden_layers, "t")):
      if list(ids) != sorted(ids) or any(i < 0 or i > count for i in ids):
        problems.append(f"{what}_biattention_id {ids} must be non-decreasing within [0, {count}]")
    if self.fusion_method not in ("mul", "sum"):
      problems.append(f"fusion_method {self.fusion_method!r} is not 'mul' or 'sum'")
    if self.max_regions < 1:
      problems.append(f"max_regions {self.max_regions} leaves no room for the global region")
    if problems:
      raise ValueError("scorers/vilbert.py Config is inconsistent: " + "; ".join(problems)
                       + ". Fix these fields (see the original config/bert_base_*.json).")
    # Lists (e.g. from JSON) would make the config unhashable, and it is a static jit argument.
    object.__setattr__(self, "v_biattention_id", v_ids)
    object.__setattr__(self, "t_biattention_id", t_ids)


# Variants: the original repo's config/*.json (all share the text BERT-base and 1024-d visual
# and co-attention widths; they differ in where the co-attention blocks sit).
_VARIANTS = {
    "bert_base_6layer_6conect": dict(v_num_hidden_layers=6, v_biattention_id=(0, 1, 2, 3, 4, 5),
                                     t_biattention_id=(6, 7, 8, 9, 10, 11)),
    "bert_base_2layer_2conect": dict(v_num_hidden_layers=2, v_biattention_id=(0, 1),
                                     t_biattention_id=(10, 11)),
    "bert_base_4layer_4conect": dict(v_num_hidden_layers=4, v_biattention_id=(0, 1, 2, 3),
                                     t_biattention_id=(8, 9, 10, 11)),
    "bert_base_8layer_8conect": dict(v_num_hidden_layers=8,
                                     v_biattention_id=(0, 1, 2, 3, 4, 5, 6, 7),
                                     t_biattention_id=(4, 5, 6, 7, 8, 9, 10, 11)),
}


def default_config(variant: str | None = None) -> Config:
  """The released ViLBERT sizes; `variant` names one of the original config files."""
  return Config(**common.variant_config(_VARIANTS, variant, "bert_base_6layer_6conect",
                                        "scorers/vilbert.py"))


def tiny_config() -> Config:
  """The golden tiny model (tests/assets/vilbert_tiny_config.json): three distinct widths."""
  return Config(vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                intermediate_size=64, v_hidden_size=48, v_num_hidden_layers=2,
                v_num_attention_heads=3, v_intermediate_size=56, bi_hidden_size=40,
                bi_num_attention_heads=2, v_biattention_id=(0, 1), t_biattention_id=(2, 3))


def config_from_original(original: Mapping[str, Any], **overrides) -> Config:
  """A Config from an original ViLBERT config JSON (dict); text/region settings via overrides."""
  fields = {f.name for f in dataclasses.fields(Config)}
  kwargs = {k: v for k, v in original.items() if k in fields}
  # `pooling_method` is in every released config but the original never reads it: its heads
  # use `fusion_method` (default "mul"), so it is not mapped (vilbert/vilbert.py, BertConfig).
  return Config(**{**kwargs, **overrides})


def layer_schedule(config: Config) -> tuple[str, ...]:
  """The order the original `BertEncoder.forward` runs its layers in, as checkpoint names.

  Before co-attention block k: the text layers up to t_biattention_id[k] and the visual layers
  up to v_biattention_id[k] not run yet; after the last block, the remaining visual layers, then
  the remaining text layers. E.g. v=(0, 1), t=(2, 3) gives layer.0, layer.1, c_layer.0,
  layer.2, v_layer.0, c_layer.1, v_layer.1, layer.3.
  """
  order, t_start, v_start = [], 0, 0
  for block, (v_end, t_end) in enumerate(zip(config.v_biattention_id, config.t_biattention_id)):
    order += [f"layer.{i}" for i in range(t_start, t_end)]
    order += [f"v_layer.{i}" for i in range(v_start, v_end)]
    order.append(f"c_layer.{block}")
    t_start, v_start = t_end, v_end
  order += [f"v_layer.{i}" for i in range(v_start, config.v_num_hidden_layers)]
  order += [f"layer.{i}" for i in range(t_start, config.num_hidden_layers)]
  return tuple(order)


# ----------------------------------------------------------------------------------------------
# Modules (named after the original PyTorch modules, so checkpoints map with no renaming).


def _multi_head(query, key, value, bias, num_heads, dropout):
  """Scaled dot-product attention of projected [N, Tq, D] queries over [N, Tk, D] keys/values.

  bias: [N, 1, 1, Tk] additive mask; dropout: `layers.attention_dropout`. Returns [N, Tq, D].
  """
  split = lambda x: x.reshape(x.shape[:-1] + (num_heads, x.shape[-1] // num_heads))
  out = layers.dot_product_attention(split(query), split(key), split(value), bias, dropout)
  return out.reshape(out.shape[:-2] + (-1,))


class BertBiAttention(nn.Module):
  """Two-way cross attention: text queries over regions, region queries over text.

  `query1/key1/value1` project the visual stream, `query2/key2/value2` the text stream.
  """
  config: Config

  @nn.compact
  def __call__(self, image, image_bias, text, text_bias, deterministic: bool = True):
    """Returns (text attending to regions [N, T, bi], regions attending to text [N, R, bi])."""
    c, dtype = self.config, jnp.dtype(self.config.dtype)
    proj = {name: layers.dense(c.bi_hidden_size, name, dtype)(image if name[-1] == "1" else text)
            for name in ("query1", "key1", "value1", "query2", "key2", "value2")}
    text_to_image = _multi_head(proj["query2"], proj["key1"], proj["value1"], image_bias,
                                c.bi_num_attention_heads,
                                layers.attention_dropout(c.dropout_rate, deterministic))
    image_to_text = _multi_head(proj["query1"], proj["key2"], proj["value2"], text_bias,
                                c.bi_num_attention_heads,
                                layers.attention_dropout(c.dropout_rate, deterministic))
    return text_to_image, image_to_text


class _UnusedDense(nn.Module):
  """Holds the `kernel`/`bias` of a Linear that the original builds but never calls."""
  in_features: int
  features: int

  @nn.compact
  def __call__(self):
    self.param("kernel", nn.initializers.lecun_normal(), (self.in_features, self.features))
    self.param("bias", nn.initializers.zeros, (self.features,))


class BertBiOutput(nn.Module):
  """`dense1` + `LayerNorm1` residual for the visual stream, `dense2` + `LayerNorm2` for text."""
  config: Config

  @nn.compact
  def __call__(self, image_context, image, text_context, text, deterministic: bool = True):
    c, dtype = self.config, jnp.dtype(self.config.dtype)
    # Loaded for a strict checkpoint match; the original forward never uses them.
    _UnusedDense(c.bi_hidden_size, c.v_hidden_size, name="q_dense1")()
    _UnusedDense(c.bi_hidden_size, c.hidden_size, name="q_dense2")()
    drop = lambda x: nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)
    image = layers.layer_norm("LayerNorm1", dtype)(
        drop(layers.dense(c.v_hidden_size, "dense1", dtype)(image_context)) + image)
    text = layers.layer_norm("LayerNorm2", dtype)(
        drop(layers.dense(c.hidden_size, "dense2", dtype)(text_context)) + text)
    return image, text


class BertConnectionLayer(nn.Module):
  """A co-attention block: `biattention`, `biOutput`, then each stream's own feed-forward."""
  config: Config

  @nn.compact
  def __call__(self, image, image_bias, text, text_bias, deterministic: bool = True):
    c, dtype = self.config, jnp.dtype(self.config.dtype)
    text_context, image_context = BertBiAttention(c, name="biattention")(
        image, image_bias, text, text_bias, deterministic)
    image, text = BertBiOutput(c, name="biOutput")(
        image_context, image, text_context, text, deterministic)
    # Each stream's own feed-forward: `v_intermediate`/`v_output`, `t_intermediate`/`t_output`.
    return tuple(layers.feed_forward(x, size, c.dropout_rate, dtype, deterministic,
                                     f"{stream}_intermediate", f"{stream}_output")
                 for stream, x, size in (("v", image, c.v_intermediate_size),
                                         ("t", text, c.intermediate_size)))


class BertEncoder(nn.Module):
  """`layer.N` (text), `v_layer.N` (visual), `c_layer.N` (co-attention) in `layer_schedule` order."""
  config: Config

  @nn.compact
  def __call__(self, text, text_bias, image, image_bias, deterministic: bool = True):
    c, dtype = self.config, jnp.dtype(self.config.dtype)
    for step in layer_schedule(c):
      kind, index = step.split(".")
      name = f"{kind}_{index}"
      if kind == "layer":
        text = layers.BertLayer(c.hidden_size, c.num_attention_heads, c.intermediate_size,
                                c.dropout_rate, dtype, name=name)(text, text_bias, deterministic)
      elif kind == "v_layer":
        image = layers.BertLayer(c.v_hidden_size, c.v_num_attention_heads, c.v_intermediate_size,
                                 c.dropout_rate, dtype, name=name)(image, image_bias, deterministic)
      else:
        image, text = BertConnectionLayer(c, name=name)(
            image, image_bias, text, text_bias, deterministic)
    return text, image


class ReluPooler(nn.Module):
  """ReLU(`dense`(token 0)): `bert.t_pooler` and `bert.v_pooler` (to the bi width)."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, hidden):
    return jax.nn.relu(layers.dense(self.features, "dense", self.dtype)(hidden[:, 0]))


class BertModel(nn.Module):
  """`bert.*`: both embeddings, the encoder and the two poolers."""
  config: Config

  @nn.compact
  def __call__(self, text_ids, text_mask, image_feat, image_loc, image_mask,
               deterministic: bool = True):
    c, dtype = self.config, jnp.dtype(self.config.dtype)
    text = layers.BertTextEmbeddings(c.vocab_size, c.hidden_size, c.max_position_embeddings,
                                     c.type_vocab_size, c.dropout_rate, dtype,
                                     name="embeddings")(text_ids, None, deterministic)
    # `image_embeddings`(feat) + `image_location_embeddings`(5-d box) -> `LayerNorm` -> dropout.
    image = layers.RegionEmbeddings(
        c.v_hidden_size, ("image_embeddings", "image_location_embeddings", "LayerNorm"),
        c.dropout_rate, dtype, name="v_embeddings")(image_feat, image_loc, deterministic)
    text, image = BertEncoder(c, name="encoder")(
        text, layers.attention_bias(text_mask), image, layers.attention_bias(image_mask),
        deterministic)
    pooled_t = ReluPooler(c.bi_hidden_size, dtype, name="t_pooler")(text)
    pooled_v = ReluPooler(c.bi_hidden_size, dtype, name="v_pooler")(image)
    return text, image, pooled_t, pooled_v


class _ItmHead(nn.Module):
  """`cls.bi_seq_relationship`: Linear(bi, 2) on the fused pooled vector."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, fused):
    return layers.dense(2, "bi_seq_relationship", self.dtype)(fused)


class Model(nn.Module):
  """BertForMultiModalPreTraining up to its ITM head (`bert.*` + `cls.bi_seq_relationship`)."""
  config: Config

  @nn.compact
  def __call__(self, text_ids, text_mask, image_inputs, deterministic: bool = True):
    """Scores N (caption, image) pairs.

    Args:
      text_ids: [N, T] int32 word-piece ids, `[CLS] ... [SEP]` then padding.
      text_mask: [N, T] int32, 1 for real tokens.
      image_inputs: from `image_inputs`: "image_feat" [N, R, 2048] float32, "image_loc"
        [N, R, 5] float32, "image_mask" [N, R] int32 (R includes the global region).
      deterministic: False turns dropout on (needs a "dropout" rng).

    Returns:
      (itm_logits [N, 2] float32, index MATCH_INDEX = 0 is "matched"; out_dict with
      "pooled_output_t", "pooled_output_v", "pooled_output_fused" [N, bi],
      "sequence_output_t" [N, T, hidden], "sequence_output_v" [N, R, v_hidden]).
    """
    c, dtype = self.config, jnp.dtype(self.config.dtype)
    text, image, pooled_t, pooled_v = BertModel(c, name="bert")(
        text_ids, text_mask, image_inputs["image_feat"], image_inputs["image_loc"],
        image_inputs["image_mask"], deterministic)
    fused = pooled_t * pooled_v if c.fusion_method == "mul" else pooled_t + pooled_v
    # The original `cls.dropout` (p = 0.1, fixed) before the ITM head.
    dropped = nn.Dropout(0.1)(fused, deterministic=deterministic)
    logits = _ItmHead(dtype, name="cls")(dropped)
    out = {"pooled_output_t": pooled_t, "pooled_output_v": pooled_v,
           "pooled_output_fused": fused, "sequence_output_t": text, "sequence_output_v": image}
    return logits.astype(jnp.float32), out


# ----------------------------------------------------------------------------------------------
# The contract functions.


def _dummy_inputs(config: Config):
  text = jnp.zeros((1, 2), jnp.int32)
  images = {"image_feat": jnp.zeros((1, 2, config.v_feature_size), jnp.float32),
            "image_loc": jnp.zeros((1, 2, 5), jnp.float32),
            "image_mask": jnp.ones((1, 2), jnp.int32)}
  return text, jnp.ones_like(text), images


def image_inputs(params, config: Config, images: Mapping[str, Any]) -> dict[str, jax.Array]:
  """ViLBERT's visual input, built as its feature reader and retrieval dataset do.

  Args:
    params: unused (the image side of ViLBERT has no caption-independent learned part here).
    config: gives `max_regions` (global region included).
    images: "region_feats" [N, R, 2048] float, "region_boxes" [N, R, 4] float (x1/W, y1/H,
      x2/W, y2/H), "region_mask" [N, R] int (1 = real region).

  Returns:
    "image_feat" [N, R', 2048] float32: row 0 the mean of the real regions (over all of them,
    before truncation, as the reader does), then the regions; "image_loc" [N, R', 5] float32:
    row 0 [0, 0, 1, 1, 1], then the boxes with their area fraction; "image_mask" [N, R'] int32.
    Padded rows are zero. R' = min(R + 1, max_regions). Jittable.
  """
  del params
  for key in ("region_feats", "region_boxes", "region_mask"):
    if key not in images:
      raise KeyError(f"scorers/vilbert.py image_inputs: images has no {key!r} (found "
                     f"{sorted(images)}); ViLBERT needs region features, boxes and a mask.")
  feats, boxes, mask = common.region_arrays(images)
  if feats.shape[-1] != config.v_feature_size or boxes.shape[-1] != 4:
    raise ValueError(f"scorers/vilbert.py image_inputs: expected region_feats [N, R, "
                     f"{config.v_feature_size}] and region_boxes [N, R, 4], found "
                     f"{feats.shape} and {boxes.shape}.")
  real = mask.astype(jnp.float32)[..., None]
  count = jnp.maximum(real.sum(axis=1), 1.0)
  global_feat = (feats * real).sum(axis=1) / count
  area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
  locs = jnp.concatenate([boxes, area[..., None]], axis=-1)
  n = feats.shape[0]
  global_loc = jnp.broadcast_to(jnp.array([0, 0, 1, 1, 1], jnp.float32), (n, 1, 5))
  keep = config.max_regions - 1
  return {
      "image_feat": jnp.concatenate([global_feat[:, None], (feats * real)[:, :keep]], axis=1),
      "image_loc": jnp.concatenate([global_loc, (locs * real)[:, :keep]], axis=1),
      "image_mask": jnp.concatenate([jnp.ones((n, 1), jnp.int32), mask[:, :keep]], axis=1),
  }


def tokenizer(config: Config):
  """The uncased BERT WordPiece tokenizer ViLBERT was trained with (shipped file, no download)."""
  return tokens.bert_tokenizer(cased=False, vocab_path=config.vocab_path)


def text_format(config: Config) -> tokens.TextFormat:
  """`[CLS] pieces [SEP]`, 0-padded, truncated to `max_text_len` (30) with the specials."""
  return tokens.text_format(tokenizer(config), config.max_text_len)


# ----------------------------------------------------------------------------------------------
# Checkpoints.

# Checkpoint keys dropped on purpose: the pretraining heads other than ITM, the extra heads of
# the multi-task model (VILBertForVLTasks), and its task-token embedding.
IGNORED_KEYS = (
    r"cls\.predictions\..*",
    r"cls\.imagePredictions\..*",
    r"vil_prediction(_gqa)?\..*",
    r"vil_binary_prediction\..*",
    r"vil_logit\..*",
    r"vil_tri_prediction\..*",
    r"vision_logit\..*",
    r"linguisic_logit\..*",
    r"bert\.embeddings\.task_embeddings\.weight",
)


def convert_state_dict(state_dict: Mapping[str, Any], config: Config, *,
                       source: str = "state dict") -> dict[str, Any]:
  """Original ViLBERT state dict (numpy values) -> params; strict (see `load`)."""
  state_dict = common.strip_prefix(state_dict, "module.", source)  # DataParallel checkpoints.
  params = common.params_from_state(state_dict, init_params, config, source=source,
                                    ignore=IGNORED_KEYS)
  if "bert.embeddings.task_embeddings.weight" in state_dict:
    _log.warning("%s holds task embeddings (a multi-task checkpoint trained with "
                 "task_specific_tokens); this port inserts no task token, so its ITM scores "
                 "are off the distribution that model was trained on.", source)
  return params


def load(path: str, config: Config | None = None, *, trust_pickle: bool = False):
  """Reads an original ViLBERT `.bin` (torch.save of the state dict) strictly.

  Returns:
    (config, params) with float32 numpy params. `config` defaults to `default_config()`.

  Raises:
    checkpoint_files.CheckpointFileError: the file cannot be read.
    common.CheckpointMismatch: keys missing from or unexpected in the checkpoint, or shapes
      that do not fit `config`, all listed.
  """
  config = config or default_config()
  state_dict = checkpoint_files.read_weights_file(path, trust_pickle=trust_pickle)
  return config, convert_state_dict(state_dict, config, source=path)


SCORER = common.itm_scorer(
    "vilbert", Model, MATCH_INDEX, default_config=default_config, tiny_config=tiny_config,
    load=load, tokenizer=tokenizer, text_format=text_format, image_inputs=image_inputs,
    dummy_inputs=_dummy_inputs)
init_params, score, pretrain_loss = SCORER.init_params, SCORER.score, SCORER.pretrain_loss
