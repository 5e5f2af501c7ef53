"""ROSITA (Cui et al. 2021) as an image-text matching scorer: a Flax port of the retrieval net.

The port follows `modeling/finetune_tasks/itr.py: Net` of github.com/MILVLG/rosita: text
embeddings (word + position + token type 0, LayerNorm), visual embeddings (dense_imgfeat(feature)
+ dense_bboxfeat(5-d box), one LayerNorm; regions get no type or position embedding), a
single-stream post-LN transformer over [text ; regions] (`backbone.layers.N`: `mhatt.dense_{q,k,v,
merge}`, `ffn.dense{0,1}`, `layer_norm{0,1}`), the tanh pooler on text [CLS] and
`mm_itm_head.dense` Linear(H, 2). The match score is 100 x softmax(itm)[:, 1], as `run_itr.py`
scores retrieval. Submodules carry the checkpoint's per-module names, so `load` is an identity
mapping of `<module>.<key>`.

Regions: a fixed 36 BUTD regions per image (ROSITA's own "fix36" features), 5-d boxes
[x1/W, y1/H, x2/W, y2/H, area/(W H)]. Text: uncased BERT WordPiece (30,522 ids) after removing
every character that is neither a word character nor a space; [CLS] words [SEP], at most
`max_text_len` = 30 tokens.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from scorers import checkpoint_files
from scorers import common
from scorers import layers
from scorers import tokens

MATCH_INDEX = 1

# Per-module entries of the original `.pkl` (CKPT_SAVE_MAP) that make up the scorer.
_MODULES = ("text_embeddings", "visual_embeddings", "backbone", "pooler", "mm_itm_head")
# Entries dropped on purpose: training state and the pretraining-only heads (MLM, region).
IGNORED_KEYS = (r"epoch", r"(net_optim|amp)(\..*)?", r"(text_mlm_head|imgfeat_head)\..*")


@dataclasses.dataclass(frozen=True)
class Config(layers.SingleStreamConfig):
  """ROSITA sizes (`config/cfg.py` defaults: HSIZE, LAYER, HHEAD, HFF, POS_EMB_IN_SIZE,
  TYPE_EMB_IN_SIZE (only type 0 is used), IMGFEAT_SIZE, DROPOUT_R) and text settings (fields:
  SingleStreamConfig; vocab 30,522 = bert-base-uncased, max_text_len 30).

  Attributes:
    box_dim: box feature width (BBOXFEAT_SIZE).
  """
  box_dim: int = 5


# Field of Config <- attribute of the original `config/cfg.py` Cfg.
_ORIGINAL_KEYS = {"hidden_size": "HSIZE", "num_layers": "LAYER", "num_heads": "HHEAD",
                  "intermediate_size": "HFF", "max_position": "POS_EMB_IN_SIZE",
                  "type_vocab_size": "TYPE_EMB_IN_SIZE", "img_dim": "IMGFEAT_SIZE",
                  "box_dim": "BBOXFEAT_SIZE", "dropout_rate": "DROPOUT_R"}


def config_from_original(original, vocab_size: int | None = None, **overrides) -> Config:
  """A Config from the original Cfg's attributes (`config/cfg.py`, as a dict of its fields).

  The vocabulary size is not a Cfg field in the original (the net's `init_map` carries it):
  pass `vocab_size` when it is not bert-base-uncased's 30,522.

  Raises:
    ValueError: a missing attribute, HBASE != HSIZE / HHEAD, or USE_BBOXFEAT off.
  """
  config = common.config_from_original(Config, original, _ORIGINAL_KEYS,
                                       "scorers/rosita.py (config/cfg.py)", **overrides)
  if original.get("HBASE", config.hidden_size // config.num_heads) * config.num_heads != (
      config.hidden_size):
    raise ValueError("scorers/rosita.py: HBASE * HHEAD != HSIZE; this port splits HSIZE into "
                     "HHEAD heads of equal width, as every released config does.")
  if not original.get("USE_BBOXFEAT", True):
    raise ValueError("scorers/rosita.py: USE_BBOXFEAT is off; the released models use boxes.")
  return config if vocab_size is None else dataclasses.replace(config, vocab_size=vocab_size)


def default_config(variant: str | None = None) -> Config:
  """ROSITA-base, the only released size."""
  if variant not in (None, "base"):
    raise ValueError(f"scorers/rosita.py: unknown variant {variant!r}; ROSITA has only 'base'.")
  return Config()


def tiny_config() -> Config:
  """The golden tiny model (`tests/assets/rosita_tiny_config.json`): 3 layers of width 32."""
  return Config(vocab_size=100, hidden_size=32, num_layers=3, num_heads=4, intermediate_size=64)


class MHAtt(nn.Module):
  """Self-attention with `dense_{q,k,v}` projections and a `dense_merge` output projection."""
  config: Config

  @nn.compact
  def __call__(self, x, bias, deterministic: bool = True):
    cfg, dtype = self.config, jnp.dtype(self.config.dtype)
    head_dim = cfg.hidden_size // cfg.num_heads

    def heads(name):
      y = layers.dense(cfg.hidden_size, name, dtype)(x)
      return y.reshape(y.shape[:-1] + (cfg.num_heads, head_dim))

    out = layers.dot_product_attention(heads("dense_q"), heads("dense_k"), heads("dense_v"), bias,
                                       layers.attention_dropout(cfg.dropout_rate, deterministic))
    out = out.reshape(out.shape[:-2] + (cfg.hidden_size,))
    return layers.dense(cfg.hidden_size, "dense_merge", dtype)(out)


class FeedForward(nn.Module):
  """dense1(gelu(dense0(x))), no inner dropout."""
  config: Config

  @nn.compact
  def __call__(self, x):
    cfg, dtype = self.config, jnp.dtype(self.config.dtype)
    x = layers.gelu(layers.dense(cfg.intermediate_size, "dense0", dtype)(x))
    return layers.dense(cfg.hidden_size, "dense1", dtype)(x)


class SelfAtt(nn.Module):
  """One post-LN layer: LN0(x + drop(mhatt(x))), then LN1(x + drop(ffn(x)))."""
  config: Config

  @nn.compact
  def __call__(self, x, bias, deterministic: bool = True):
    cfg, dtype = self.config, jnp.dtype(self.config.dtype)
    residual = lambda y: nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
    x = layers.layer_norm("layer_norm0", dtype)(
        x + residual(MHAtt(cfg, name="mhatt")(x, bias, deterministic)))
    return layers.layer_norm("layer_norm1", dtype)(x + residual(FeedForward(cfg, name="ffn")(x)))


class Backbone(nn.Module):
  config: Config

  @nn.compact
  def __call__(self, x, bias, deterministic: bool = True):
    for i in range(self.config.num_layers):
      x = SelfAtt(self.config, name=f"layers_{i}")(x, bias, deterministic)
    return x


class MmITMHead(nn.Module):
  config: Config

  @nn.compact
  def __call__(self, pooled):
    return layers.dense(2, "dense", jnp.dtype(self.config.dtype))(pooled)


class Model(nn.Module):
  """The ITR net: embeddings, backbone, `pooler` and `mm_itm_head`."""
  config: Config

  @nn.compact
  def __call__(self, text_ids, text_mask, image_inputs, deterministic: bool = True):
    """Scores caption/image pairs.

    `text_ids`, `text_mask` [N, T] int32 ([CLS] words [SEP], 0-padded) and `image_inputs`
    (from `image_inputs`: "imgfeat" [N, R, img_dim], "bbox" [N, R, 5], "img_mask" [N, R]) ->
    (ITM logits [N, 2] float32, `layers.single_stream_outputs`). `deterministic=False` turns
    dropout on (needs a "dropout" rng).
    """
    cfg, dtype = self.config, jnp.dtype(self.config.dtype)
    # Text: word + position + token type 0 -> `layer_norm`; regions: dense_imgfeat(feature) +
    # dense_bboxfeat(box) -> `layer_norm`, with no type or position embedding.
    text = layers.BertTextEmbeddings(cfg.vocab_size, cfg.hidden_size, cfg.max_position,
                                     cfg.type_vocab_size, cfg.dropout_rate, dtype, "layer_norm",
                                     name="text_embeddings")(text_ids, None, deterministic)
    regions = layers.RegionEmbeddings(cfg.hidden_size,
                                      ("dense_imgfeat", "dense_bboxfeat", "layer_norm"),
                                      cfg.dropout_rate, dtype, name="visual_embeddings")(
        image_inputs["imgfeat"].astype(dtype), image_inputs["bbox"].astype(dtype), deterministic)
    x, bias = layers.single_stream_input(text, regions, text_mask, image_inputs["img_mask"],
                                         dtype)
    hidden = Backbone(cfg, name="backbone")(x, bias, deterministic)
    # ROSITA's Pooler is BERT's: tanh(dense(hidden of token 0)), token 0 being text [CLS].
    pooled = layers.BertPooler(cfg.hidden_size, dtype, name="pooler")(hidden)
    logits = MmITMHead(cfg, name="mm_itm_head")(pooled).astype(jnp.float32)
    return logits, layers.single_stream_outputs(hidden, pooled, text_ids.shape[1])


def image_inputs(params, config: Config, images) -> dict[str, jax.Array]:
  """Region features and ROSITA's 5-d boxes from the data's region dict (`images`, as
  `common.region_arrays` reads it). `params` and `config` are unused: the visual embeddings
  depend on dropout during pretraining, so the model computes them.

  Returns:
    "imgfeat" [N, R, 2048] float32, "bbox" [N, R, 5] float32 (the 4 box coordinates and the
    box area as a fraction of the image, as `proc_bbox` builds it), "img_mask" [N, R] int32.
  """
  del params, config
  feats, boxes, mask = common.region_arrays(images)
  area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
  return {"imgfeat": feats, "bbox": jnp.concatenate([boxes, area[..., None]], axis=-1),
          "img_mask": mask}


def _dummy_inputs(config: Config):
  text = jnp.ones((1, 2), jnp.int32)
  images = {"imgfeat": jnp.zeros((1, 1, config.img_dim)),
            "bbox": jnp.zeros((1, 1, config.box_dim)), "img_mask": jnp.ones((1, 1), jnp.int32)}
  return text, text, images


def tokenizer(config: Config):
  """The uncased BERT WordPiece tokenizer ROSITA uses (shipped file, no download)."""
  return tokens.bert_tokenizer(cased=False, vocab_path=config.vocab_path)


def text_format(config: Config) -> tokens.TextFormat:
  """[CLS] words [SEP], 0-padded, truncated to `max_text_len`, punctuation stripped first."""
  return tokens.text_format(tokenizer(config), config.max_text_len, strip_punctuation=True)


def _flatten_checkpoint(checkpoint, source: str) -> dict:
  """The original `{module: state_dict, ...}` dict -> flat `{"module.key": value}`.

  Entries that are not per-module state dicts (`epoch`, `amp`, ...) keep their own name, so
  `IGNORED_KEYS` drops them or the strict merge reports them.

  Raises:
    ValueError: `checkpoint` is not a dict of per-module state dicts.
  """
  if not isinstance(checkpoint, dict) or not any(m in checkpoint for m in _MODULES):
    found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
    raise ValueError(
        f"{source}: expected ROSITA's checkpoint layout, a dict of per-module state dicts with "
        f"entries {list(_MODULES)}; found {found}. Pass the .pkl written by ROSITA's run_*.py.")
  flat = {}
  for module, state in checkpoint.items():
    if isinstance(state, dict):
      for key, value in common.strip_prefix(state, "module.", f"{source} [{module}]").items():
        flat[f"{module}.{key}"] = value
    else:
      flat[module] = state
  return flat


def load(path: str, config: Config | None = None, *, trust_pickle: bool = False):
  """Reads an original ROSITA checkpoint (`rosita-base.pkl`, `itr-coco-base.pkl`).

  Both layouts work: the ITR net and the pretraining net (whose `text_mlm_head`,
  `imgfeat_head`, `epoch`, `net_optim` and `amp` entries are `IGNORED_KEYS`, logged). `path` is
  the `.pkl` file `torch.save` wrote; `config` the sizes to expect (default `default_config()`,
  ROSITA-base); `trust_pickle` allows a full unpickle (runs code from the file) when
  weights_only fails.

  Returns (config, params), params a tree of float32 numpy arrays. Raises
  `checkpoint_files.CheckpointFileError` (the file cannot be read), `common.CheckpointMismatch`
  (missing, unexpected or mis-shaped keys, all listed) or ValueError (not ROSITA's layout).
  """
  config = config or default_config()
  checkpoint = checkpoint_files.load_torch_file(path, trust_pickle=trust_pickle)
  state = checkpoint_files.state_dict_to_numpy(_flatten_checkpoint(checkpoint, path))
  return config, common.params_from_state(state, init_params, config, source=path,
                                          ignore=IGNORED_KEYS)


SCORER = common.itm_scorer(
    "rosita", Model, MATCH_INDEX, default_config=default_config, tiny_config=tiny_config,
    load=load, tokenizer=tokenizer, text_format=text_format, image_inputs=image_inputs,
    dummy_inputs=_dummy_inputs)
init_params, score, pretrain_loss = SCORER.init_params, SCORER.score, SCORER.pretrain_loss
