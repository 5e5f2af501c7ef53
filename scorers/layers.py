"""BERT-style transformer blocks shared by the LXMERT, UNITER and ViLBERT ports (and the
attention math ROSITA reuses).

Submodule names follow the Hugging Face / original BERT PyTorch keys
(`attention.self.query`, `attention.output.LayerNorm`, `intermediate.dense`, `output.dense`, ...),
so `common.torch_to_flax` maps checkpoints onto them with no renaming. Post-LayerNorm, erf GELU,
LayerNorm eps 1e-12, additive -10000 masks, as in the originals.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

LAYER_NORM_EPS = 1e-12
Dtype = Any


@dataclasses.dataclass(frozen=True)
class SingleStreamConfig:
  """The sizes and text settings of a single-stream BERT over [text ; regions] (UNITER and
  ROSITA subclass it with their own defaults); defaults are BERT-base's.

  Attributes:
    vocab_size: WordPiece vocabulary size.
    hidden_size, num_layers, num_heads, intermediate_size: encoder sizes.
    max_position: text position table size.
    type_vocab_size: token type table size.
    img_dim: region feature width.
    dropout_rate: hidden and attention-probability dropout (0.1 for both in the originals).
    max_text_len: tokenizer truncation length, [CLS] and [SEP] included.
    dtype: compute dtype, "float32" or "bfloat16"; params stay float32.
    vocab_path: a `vocab.txt` for the tokenizer, or None for the shipped one.
  """
  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_position: int = 512
  type_vocab_size: int = 2
  img_dim: int = 2048
  dropout_rate: float = 0.1
  max_text_len: int = 30
  dtype: str = "float32"
  vocab_path: str | None = None


def single_stream_outputs(hidden: jax.Array, pooled: jax.Array, text_length: int) -> dict:
  """The intermediates of a [text ; regions] encoder: pooled [N, H], the whole sequence
  [N, T + R, H] and its text [N, T, H] and image [N, R, H] parts (padding included)."""
  return {"pooled_output": pooled, "sequence_output": hidden,
          "text_output": hidden[:, :text_length], "image_output": hidden[:, text_length:]}


def attention_bias(mask: jax.Array, dtype: Dtype = jnp.float32) -> jax.Array:
  """[N, T] 1/0 key mask -> [N, 1, 1, T] additive bias (0 where kept, -10000 where masked)."""
  return ((1.0 - mask[:, None, None, :].astype(jnp.float32)) * -10000.0).astype(dtype)


def gelu(x: jax.Array) -> jax.Array:
  """The exact (erf) GELU that BERT uses."""
  return jax.nn.gelu(x, approximate=False)


def layer_norm(name: str, dtype: Dtype) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=dtype, param_dtype=jnp.float32, name=name)


def dense(features: int, name: str, dtype: Dtype) -> nn.Dense:
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name)


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array, bias: jax.Array,
                          dropout=None, dtype: Dtype = jnp.float32) -> jax.Array:
  """Scaled softmax attention of already projected heads, shared by every transformer port.

  Args:
    query: [N, Tq, heads, head_dim]; key, value: [N, Tk, heads, head_dim].
    bias: additive mask broadcastable to [N, heads, Tq, Tk] (see `attention_bias`).
    dropout: callable applied to the attention weights (a bound `nn.Dropout`), or None.
    dtype: compute dtype. The logits and the softmax are taken in float32 so that bf16 runs
      keep the -10000 masks exact.

  Returns:
    [N, Tq, heads, head_dim].
  """
  head_dim = query.shape[-1]
  logits = jnp.einsum("nqhd,nkhd->nhqk", query, key) / jnp.sqrt(head_dim).astype(dtype)
  logits = logits.astype(jnp.float32) + bias.astype(jnp.float32)
  weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
  if dropout is not None:
    weights = dropout(weights)
  return jnp.einsum("nhqk,nkhd->nqhd", weights, value)


class BertSelfAttention(nn.Module):
  """Multi-head attention with `query`, `key`, `value` projections.

  Attributes:
    hidden_size: width of the projections (all heads together).
    num_heads: number of heads; hidden_size must be divisible by it.
  """
  hidden_size: int
  num_heads: int
  dropout_rate: float = 0.1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden: jax.Array, context: jax.Array, bias: jax.Array,
               deterministic: bool = True) -> jax.Array:
    """hidden: [N, Tq, Dq]; context: [N, Tk, Dk]; bias: [N, 1, 1|Tq, Tk] -> [N, Tq, hidden_size]."""
    head_dim = self.hidden_size // self.num_heads

    def heads(x, name):
      x = dense(self.hidden_size, name, self.dtype)(x)
      return x.reshape(x.shape[:-1] + (self.num_heads, head_dim))

    query, key, value = heads(hidden, "query"), heads(context, "key"), heads(context, "value")
    dropout = nn.Dropout(self.dropout_rate)
    out = dot_product_attention(query, key, value, bias,
                                lambda w: dropout(w, deterministic=deterministic), self.dtype)
    return out.reshape(out.shape[:-2] + (self.hidden_size,))


class BertResidualOutput(nn.Module):
  """`dense` -> dropout -> `LayerNorm(x + residual)`: BertSelfOutput and BertOutput alike."""
  hidden_size: int
  dropout_rate: float = 0.1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, residual: jax.Array, deterministic: bool = True) -> jax.Array:
    x = dense(self.hidden_size, "dense", self.dtype)(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    return layer_norm("LayerNorm", self.dtype)(x + residual)


class BertAttention(nn.Module):
  """`self` attention (or cross attention when `context` is given) + `output` residual block."""
  hidden_size: int
  num_heads: int
  dropout_rate: float = 0.1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden, bias, context=None, deterministic: bool = True):
    context = hidden if context is None else context
    attended = BertSelfAttention(self.hidden_size, self.num_heads, self.dropout_rate, self.dtype,
                                 name="self")(hidden, context, bias, deterministic)
    return BertResidualOutput(self.hidden_size, self.dropout_rate, self.dtype, name="output")(
        attended, hidden, deterministic)


class BertIntermediate(nn.Module):
  intermediate_size: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return gelu(dense(self.intermediate_size, "dense", self.dtype)(x))


class BertLayer(nn.Module):
  """One post-LN encoder layer: `attention` (self) then the feed-forward halves.

  Parameters live at `attention.{self,output}`, `intermediate.dense`, `output.{dense,LayerNorm}`,
  exactly as `bert.encoder.layer.N.*` in the PyTorch checkpoints.
  """
  hidden_size: int
  num_heads: int
  intermediate_size: int
  dropout_rate: float = 0.1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden, bias, deterministic: bool = True):
    hidden = BertAttention(self.hidden_size, self.num_heads, self.dropout_rate, self.dtype,
                           name="attention")(hidden, bias, deterministic=deterministic)
    inner = BertIntermediate(self.intermediate_size, self.dtype, name="intermediate")(hidden)
    return BertResidualOutput(self.hidden_size, self.dropout_rate, self.dtype, name="output")(
        inner, hidden, deterministic)


class BertPooler(nn.Module):
  """tanh(`dense`(hidden of token 0))."""
  hidden_size: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden):
    return jnp.tanh(dense(self.hidden_size, "dense", self.dtype)(hidden[:, 0]))


class BertTextEmbeddings(nn.Module):
  """word + position (0..T-1) + token type -> `LayerNorm` -> dropout (`bert.embeddings.*`)."""
  vocab_size: int
  hidden_size: int
  max_position: int = 512
  type_vocab_size: int = 2
  dropout_rate: float = 0.1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, ids, token_type_ids=None, deterministic: bool = True):
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(ids)
    embed = lambda n, name: nn.Embed(n, self.hidden_size, dtype=self.dtype,
                                     param_dtype=jnp.float32, name=name)
    positions = jnp.arange(ids.shape[1])[None, :]
    x = (embed(self.vocab_size, "word_embeddings")(ids)
         + embed(self.max_position, "position_embeddings")(positions)
         + embed(self.type_vocab_size, "token_type_embeddings")(token_type_ids))
    x = layer_norm("LayerNorm", self.dtype)(x)
    return nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
