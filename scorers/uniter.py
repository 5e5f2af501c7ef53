"""UNITER (Chen et al. 2020) as an image-text matching scorer: a Flax port of the pretraining model.

The port follows `model/pretrain.py: UniterForPretraining` of github.com/ChenRocks/UNITER: text
embeddings (word + position + token type 0, LayerNorm), region embeddings
(LN(img_linear(feature)) + LN(pos_linear(7-d box)) + token type 1 from the *text* table, then
LayerNorm), a single-stream BERT encoder over text and regions together, the tanh pooler on token 0
([CLS]) and the `itm_output` Linear(H, 2) head. The match score is 100 x softmax(itm)[:, 1]
(label 1 = the caption belongs to the image). Submodules carry the checkpoint's names
(`uniter.embeddings`, `uniter.img_embeddings`, `uniter.encoder.layer.N`, `uniter.pooler`,
`itm_output`), so `load` is a strict identity mapping plus gamma/beta renames.

Layout. The original packs each example's text and regions contiguously (`gather_index`) so no
padding sits between them. We concatenate [text (padded to T) ; regions (padded to R)] and mask
the padding instead: every real token attends to the same set of real tokens, so the outputs at
real positions are the original's (the golden parity test gathers our sequence with the original
`gather_index` to compare). Region tokens get no position embedding, as in the original.

Regions. UNITER was trained on adaptive BUTD regions: every box with confidence > 0.2, at least
10 and at most 100 per image (`compute_num_bb`). We feed a fixed 36 BUTD regions per image (the
same feature set LXMERT and ROSITA use), with each box x1/W, y1/H, x2/W, y2/H converted to
UNITER's 7-d format [x1/W, y1/H, x2/W, y2/H, w/W, h/H, (w/W)(h/H)]. UNITER's own data has a
fixed-36 variant (`conf_th -1, num_bb 36`), so the model has seen this count, but the paper's
numbers came from its adaptive features and scores can shift a little.

Text. Cased BERT WordPiece (bert-base-cased, 28,996 ids) on the lower-case captions, as the
original preprocessing does; [CLS] words [SEP]; at most `max_text_len` = 60 tokens.
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

# Checkpoint heads the ITM scorer does not use: MLM (`cls.*`, its decoder tied to the word
# embeddings), masked-region regression and classification. Dropped on purpose, and logged.
IGNORED_KEYS = (r"cls\..*", r"feat_regress\..*", r"region_classifier\..*")


@dataclasses.dataclass(frozen=True)
class Config(layers.SingleStreamConfig):
  """UNITER sizes (`config/uniter-base.json`) and text settings (fields: SingleStreamConfig).

  vocab_size 28,996 is bert-base-cased's; type 0 is text, type 1 the regions; max_text_len 60;
  vocab_path None uses the shipped bert-base-cased vocabulary.
  """
  vocab_size: int = 28996
  max_text_len: int = 60


_VARIANTS = {
    "base": {},
    "large": dict(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096),
}


def default_config(variant: str | None = None) -> Config:
  """UNITER-base (or `variant="large"`), as released."""
  return Config(**common.variant_config(_VARIANTS, variant, "base", "scorers/uniter.py"))


def tiny_config() -> Config:
  """The golden tiny model (`tests/assets/uniter_tiny_config.json`): 3 layers of width 32."""
  return Config(vocab_size=100, hidden_size=32, num_layers=3, num_heads=4, intermediate_size=64)


# Field of Config <- key of the original JSON (config/uniter-base.json, UniterConfig).
_ORIGINAL_KEYS = {"vocab_size": "vocab_size", "hidden_size": "hidden_size",
                  "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
                  "intermediate_size": "intermediate_size",
                  "max_position": "max_position_embeddings",
                  "type_vocab_size": "type_vocab_size", "dropout_rate": "hidden_dropout_prob"}


def config_from_original(original, **overrides) -> Config:
  """A Config from the original JSON (`config/uniter-base.json`, as a dict).

  `img_dim` is a constructor argument in the original (2048), not a JSON key: pass it in
  `overrides` when it differs, with the text settings.

  Raises:
    ValueError: an activation other than "gelu", dropouts that differ (one rate here), or a
      missing key.
  """
  if original.get("hidden_act", "gelu") != "gelu":
    raise ValueError(f"scorers/uniter.py: hidden_act={original['hidden_act']!r}; this port "
                     "implements 'gelu' (erf), the activation of every released UNITER.")
  hidden = original.get("hidden_dropout_prob")
  if original.get("attention_probs_dropout_prob", hidden) != hidden:
    raise ValueError("scorers/uniter.py: attention_probs_dropout_prob differs from "
                     "hidden_dropout_prob; this port has one dropout_rate (both are 0.1 in "
                     "every released config).")
  return common.config_from_original(Config, original, _ORIGINAL_KEYS,
                                     "scorers/uniter.py (config/uniter-base.json)", **overrides)


class UniterImageEmbeddings(nn.Module):
  """Region embeddings: LN(img_linear(feat)) + LN(pos_linear(box)) + type, LayerNorm, dropout.

  `mask_embedding` (row 1 is added to the features of masked regions in masked-region
  pretraining; row 0 is kept at zero) is part of every checkpoint; it only acts when
  `img_masks` is given.
  """
  config: Config

  @nn.compact
  def __call__(self, img_feat, img_pos_feat, type_embeddings, img_masks=None,
               deterministic: bool = True):
    """img_feat: [N, R, img_dim]; img_pos_feat: [N, R, 7]; type_embeddings: [H]."""
    cfg, dtype = self.config, jnp.dtype(self.config.dtype)
    # Touching `.embedding` creates the table even when no region is masked.
    mask_table = nn.Embed(2, cfg.img_dim, param_dtype=jnp.float32, name="mask_embedding").embedding
    if img_masks is not None:
      img_feat = img_feat + img_masks[..., None].astype(img_feat.dtype) * mask_table[1].astype(
          img_feat.dtype)
    feat = layers.layer_norm("img_layer_norm", dtype)(
        layers.dense(cfg.hidden_size, "img_linear", dtype)(img_feat))
    pos = layers.layer_norm("pos_layer_norm", dtype)(
        layers.dense(cfg.hidden_size, "pos_linear", dtype)(img_pos_feat))
    x = layers.layer_norm("LayerNorm", dtype)(feat + pos + type_embeddings.astype(dtype))
    return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class UniterEncoder(nn.Module):
  config: Config

  @nn.compact
  def __call__(self, hidden, bias, deterministic: bool = True):
    cfg = self.config
    for i in range(cfg.num_layers):
      hidden = layers.BertLayer(cfg.hidden_size, cfg.num_heads, cfg.intermediate_size,
                                cfg.dropout_rate, jnp.dtype(cfg.dtype), name=f"layer_{i}")(
                                    hidden, bias, deterministic)
    return hidden


class UniterModel(nn.Module):
  """`uniter.*`: embeddings, img_embeddings, encoder, pooler."""
  config: Config

  @nn.compact
  def __call__(self, text_ids, text_mask, image_inputs, deterministic: bool = True):
    cfg, dtype = self.config, jnp.dtype(self.config.dtype)
    text_embeddings = layers.BertTextEmbeddings(
        cfg.vocab_size, cfg.hidden_size, cfg.max_position, cfg.type_vocab_size,
        cfg.dropout_rate, dtype, name="embeddings")
    text = text_embeddings(text_ids, deterministic=deterministic)
    # Regions take token type 1 from the text embeddings' own table, as in the original.
    type_table = text_embeddings.variables["params"]["token_type_embeddings"]["embedding"]
    regions = UniterImageEmbeddings(cfg, name="img_embeddings")(
        image_inputs["img_feat"].astype(dtype), image_inputs["img_pos_feat"].astype(dtype),
        type_table[1], image_inputs.get("img_masks"), deterministic)
    x, bias = layers.single_stream_input(text, regions, text_mask, image_inputs["img_mask"],
                                         dtype)
    hidden = UniterEncoder(cfg, name="encoder")(x, bias, deterministic)
    pooled = layers.BertPooler(cfg.hidden_size, dtype, name="pooler")(hidden)
    return hidden, pooled


class Model(nn.Module):
  """UniterForPretraining reduced to what ITM needs: `uniter` + `itm_output`."""
  config: Config

  @nn.compact
  def __call__(self, text_ids, text_mask, image_inputs, deterministic: bool = True):
    """Scores caption/image pairs.

    Args:
      text_ids: [N, T] int32 WordPiece ids, [CLS] first, 0-padded.
      text_mask: [N, T] int32, 1 for real tokens.
      image_inputs: from `image_inputs`: "img_feat" [N, R, img_dim], "img_pos_feat" [N, R, 7],
        "img_mask" [N, R] (and optionally "img_masks" [N, R] for masked-region pretraining).
      deterministic: False turns dropout on (needs a "dropout" rng).

    Returns:
      (itm_logits [N, 2] float32, out) where out holds "pooled_output" [N, H],
      "sequence_output" [N, T + R, H] (text then regions, padding included),
      "text_output" [N, T, H] and "image_output" [N, R, H].
    """
    dtype = jnp.dtype(self.config.dtype)
    hidden, pooled = UniterModel(self.config, name="uniter")(
        text_ids, text_mask, image_inputs, deterministic)
    logits = layers.dense(2, "itm_output", dtype)(pooled).astype(jnp.float32)
    return logits, layers.single_stream_outputs(hidden, pooled, text_ids.shape[1])


def image_inputs(params, config: Config, images) -> dict[str, jax.Array]:
  """Region features and UNITER's 7-d boxes from the data's region dict (`images`, as
  `common.region_arrays` reads it). `params` and `config` are unused: the region embeddings
  depend on dropout during pretraining, so the model computes them.

  Returns:
    "img_feat" [N, R, 2048] float32, "img_pos_feat" [N, R, 7] float32 (the 4 box coordinates,
    width, height, area; all relative to the image size), "img_mask" [N, R] int32.
  """
  del params, config
  feats, boxes, mask = common.region_arrays(images)
  width = boxes[..., 2] - boxes[..., 0]
  height = boxes[..., 3] - boxes[..., 1]
  pos = jnp.concatenate([boxes, width[..., None], height[..., None],
                         (width * height)[..., None]], axis=-1)
  return {"img_feat": feats, "img_pos_feat": pos, "img_mask": mask}


def _dummy_inputs(config: Config):
  text = jnp.ones((1, 2), jnp.int32)
  images = {"img_feat": jnp.zeros((1, 1, config.img_dim)), "img_pos_feat": jnp.zeros((1, 1, 7)),
            "img_mask": jnp.ones((1, 1), jnp.int32)}
  return text, text, images


def tokenizer(config: Config):
  """The cased BERT WordPiece tokenizer UNITER was trained with (shipped file, no download)."""
  return tokens.bert_tokenizer(cased=True, vocab_path=config.vocab_path)


def text_format(config: Config) -> tokens.TextFormat:
  """[CLS] words [SEP], 0-padded, truncated to `max_text_len`; case kept, nothing stripped."""
  return tokens.text_format(tokenizer(config), config.max_text_len)


def load(path: str, config: Config | None = None, *, trust_pickle: bool = False):
  """Reads an original UNITER checkpoint (`torch.save(model.state_dict())`, e.g. uniter-base.pt).

  Every `uniter.*` and `itm_output.*` key must fill the model exactly (gamma/beta LayerNorm
  names accepted); the MLM and region heads (`IGNORED_KEYS`) are dropped on purpose and logged.

  Args:
    path: the `.pt` file.
    config: the sizes to expect; default `default_config()` (UNITER-base).
    trust_pickle: allow a full unpickle (runs code from the file) when weights_only fails.

  Returns:
    (config, params) with params a tree of float32 numpy arrays.

  Raises:
    checkpoint_files.CheckpointFileError: the file cannot be read.
    common.CheckpointMismatch: missing, unexpected or mis-shaped keys, all listed.
  """
  config = config or default_config()
  state = checkpoint_files.read_weights_file(path, trust_pickle=trust_pickle)
  state = common.strip_prefix(state, "module.", path)
  return config, common.params_from_state(state, init_params, config, source=path,
                                          ignore=IGNORED_KEYS)


SCORER = common.itm_scorer(
    "uniter", Model, MATCH_INDEX, default_config=default_config, tiny_config=tiny_config,
    load=load, tokenizer=tokenizer, text_format=text_format, image_inputs=image_inputs,
    dummy_inputs=_dummy_inputs)
init_params, score, pretrain_loss = SCORER.init_params, SCORER.score, SCORER.pretrain_loss
