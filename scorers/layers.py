"""BERT-style transformer blocks shared by the LXMERT, UNITER and ViLBERT ports (and the
embeddings and attention math that ROSITA, ViLBERT's co-attention and CLIP reuse).

Submodule names follow the Hugging Face / original BERT PyTorch keys
(`attention.self.query`, `attention.output.LayerNorm`, `intermediate.dense`, `output.dense`, ...),
so `common.torch_to_flax` maps checkpoints onto them with no renaming. Post-LayerNorm, erf GELU,
LayerNorm eps 1e-12, additive -10000 masks, as in the originals.

Attention runs through `jax.nn.dot_product_attention`: cuDNN's fused kernel on a GPU where the
dtype and shapes allow it, XLA elsewhere (`options(attention=...)` forces one). Both take the
logits and the softmax in float32. Attention dropout (scorer pretraining only) is not offered by
that function, so a block with active dropout takes the explicit einsum path, with the same math.

`options(...)` is read while a function is traced: enter it inside the traced function (as
`vlprobe_jax.scoring.LoadedScorer` does), because `jax.jit` does not key its cache on it.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LAYER_NORM_EPS = 1e-12
Dtype = Any

# "auto": cuDNN's fused kernel where `cudnn_can_run` says it can, else XLA; "xla"; "cudnn"
# (an error where cuDNN cannot run the shapes).
ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn")
# "exact": the erf GELU of BERT and of every original here; "tanh": the tanh approximation
# (an option for speed: it changes the scores, see BENCHMARKS.md).
GELU_FORMS = ("exact", "tanh")
_OPTIONS = contextvars.ContextVar("scorer_layer_options", default=("auto", "exact"))
# The largest head width cuDNN's fused attention takes on every GPU it runs on (256 on Hopper).
_CUDNN_MAX_HEAD_DIM = 128


@contextlib.contextmanager
def options(attention: str | None = None, gelu: str | None = None) -> Iterator[None]:
  """Chooses the attention kernel and the GELU form for what is traced inside; None keeps.

  Raises:
    ValueError: an unknown choice.
  """
  current_attention, current_gelu = _OPTIONS.get()
  attention = current_attention if attention is None else attention
  gelu = current_gelu if gelu is None else gelu
  if attention not in ATTENTION_IMPLEMENTATIONS or gelu not in GELU_FORMS:
    raise ValueError(f"scorers/layers.py: attention={attention!r}, gelu={gelu!r}; expected "
                     f"attention in {ATTENTION_IMPLEMENTATIONS} and gelu in {GELU_FORMS}.")
  token = _OPTIONS.set((attention, gelu))
  try:
    yield
  finally:
    _OPTIONS.reset(token)


def current_options() -> dict[str, str]:
  attention, gelu = _OPTIONS.get()
  return {"attention": attention, "gelu": gelu}


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


def single_stream_input(text: jax.Array, regions: jax.Array, text_mask: jax.Array,
                        region_mask: jax.Array, dtype: Dtype) -> tuple[jax.Array, jax.Array]:
  """[text ; regions] [N, T + R, H] and its attention bias [N, 1, 1, T + R] in `dtype`, from the
  embedded text [N, T, H] and regions [N, R, H] and their 1/0 masks [N, T] and [N, R]."""
  mask = jnp.concatenate([text_mask, region_mask], axis=1)
  return jnp.concatenate([text, regions], axis=1), attention_bias(mask, dtype)


def attention_bias(mask: jax.Array, dtype: Dtype = jnp.float32) -> jax.Array:
  """[N, T] 1/0 key mask -> [N, 1, 1, T] additive bias (0 where kept, -10000 where masked)."""
  return ((1.0 - mask[:, None, None, :].astype(jnp.float32)) * -10000.0).astype(dtype)


def erf_gelu(x: jax.Array) -> jax.Array:
  """The exact GELU as the originals write it, x * 0.5 * (1 + erf(x / sqrt(2))), in float32.

  `jax.nn.gelu(approximate=False)` computes the same function through erfc, whose XLA lowering
  costs about twice as much (BENCHMARKS.md); the two differ by about 1e-6 in float32. The math
  is done in float32 and rounded once to x's dtype, as PyTorch does for bfloat16.
  """
  y = x.astype(jnp.float32)
  return (y * 0.5 * (1.0 + jax.lax.erf(y * np.float32(np.sqrt(0.5))))).astype(x.dtype)


def gelu(x: jax.Array) -> jax.Array:
  """The exact (erf) GELU that BERT uses; the tanh form under `options(gelu="tanh")`."""
  if _OPTIONS.get()[1] == "tanh":
    return jax.nn.gelu(x, approximate=True)
  return erf_gelu(x)


def layer_norm(name: str, dtype: Dtype, epsilon: float = LAYER_NORM_EPS) -> nn.LayerNorm:
  """A LayerNorm computing in `dtype` with float32 params (BERT's eps unless told)."""
  return nn.LayerNorm(epsilon=epsilon, dtype=dtype, param_dtype=jnp.float32, name=name)


def dense(features: int, name: str, dtype: Dtype, use_bias: bool = True) -> nn.Dense:
  """A Dense computing in `dtype` with float32 params."""
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, name=name)


def cudnn_can_run(dtype: Dtype, head_dim: int, platform: str) -> bool:
  """Whether "auto" picks cuDNN: a GPU, 16-bit inputs, a head width cuDNN's flash kernel takes."""
  return (platform == "gpu" and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
          and head_dim % 8 == 0 and head_dim <= _CUDNN_MAX_HEAD_DIM)


_warned: set[str] = set()


def _explicit_attention(query, key, value, bias, mask, causal, dropout):
  """The math of the XLA kernel, with dropout on the attention weights (training only)."""
  logits = jnp.einsum("nqhd,nkhd->nhqk", query, key, preferred_element_type=jnp.float32)
  logits = logits * jnp.float32(query.shape[-1] ** -0.5)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  allowed = None if mask is None else mask
  if causal:
    tq, tk = logits.shape[-2:]
    lower = jnp.tril(jnp.ones((tq, tk), bool))
    allowed = lower if allowed is None else allowed & lower
  if allowed is not None:
    # `where`, not an additive bias: a fully masked row (left padding) stays finite.
    logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
  weights = dropout(jax.nn.softmax(logits, axis=-1).astype(value.dtype))
  return jnp.einsum("nhqk,nkhd->nqhd", weights, value)


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                          bias: jax.Array | None = None, dropout=None, *,
                          mask: jax.Array | None = None, causal: bool = False) -> jax.Array:
  """Scaled softmax attention of already projected heads, shared by every transformer port.

  Args:
    query: [N, Tq, heads, head_dim]; key, value: [N, Tk, heads, head_dim], all one dtype (the
      compute dtype).
    bias: additive mask broadcastable to [N, heads, Tq, Tk] (see `attention_bias`), or None.
    dropout: callable applied to the attention weights (a bound `nn.Dropout` in training), or
      None (inference: the fused kernels run).
    mask: boolean, True where a query may see a key, broadcastable to [N, heads, Tq, Tk].
    causal: also hide later keys from each query (CLIP's text tower).

  The logits, the bias and the softmax are in float32 whatever the compute dtype, so that bf16
  runs keep the -10000 masks exact.

  Returns:
    [N, Tq, heads, head_dim] in the dtype of `value`.
  """
  if dropout is not None:
    return _explicit_attention(query, key, value, bias, mask, causal, dropout)
  choice = _OPTIONS.get()[0]
  if choice == "auto":
    platform = jax.default_backend()
    choice = "cudnn" if cudnn_can_run(query.dtype, query.shape[-1], platform) else "xla"
    if choice == "cudnn":
      try:
        return _cudnn_attention(query, key, value, bias, mask, causal)
      except (NotImplementedError, ValueError, RuntimeError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        if message not in _warned:
          _warned.add(message)
          logging.warning("scorers/layers.py: cuDNN attention cannot run %s x %s heads (%s); "
                          "using XLA's.", query.shape, key.shape, message)
        choice = "xla"
  if choice == "cudnn":
    return _cudnn_attention(query, key, value, bias, mask, causal)
  if bias is not None:
    bias = bias.astype(jnp.float32)
  return jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask, is_causal=causal,
                                      implementation="xla")


def _cudnn_attention(query, key, value, bias, mask, causal):
  """cuDNN's fused kernel; it takes a bias only at the full [.., Tq, Tk] size (and applies it in
  the compute dtype: -10000 stays far below any logit)."""
  n, tq = query.shape[:2]
  tk = key.shape[1]

  def full(x):
    return None if x is None else jnp.broadcast_to(x, (n, x.shape[1], tq, tk))

  bias = None if bias is None else full(bias).astype(query.dtype)
  return jax.nn.dot_product_attention(query, key, value, bias=bias, mask=full(mask),
                                      is_causal=causal, implementation="cudnn")


def attention_dropout(rate: float, deterministic: bool):
  """The dropout on attention weights of a training pass, or None (inference, or rate 0).

  Call inside a compact module: it binds an `nn.Dropout` submodule there (it has no params).
  """
  if deterministic or rate == 0.0:
    return None
  drop = nn.Dropout(rate)
  return lambda weights: drop(weights, deterministic=False)


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
    out = dot_product_attention(query, key, value, bias,
                                attention_dropout(self.dropout_rate, deterministic))
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


def feed_forward(x: jax.Array, intermediate_size: int, dropout_rate: float, dtype: Dtype,
                 deterministic: bool, intermediate: str = "intermediate",
                 output: str = "output") -> jax.Array:
  """BERT's feed-forward half: `intermediate` (dense, GELU), then the `output` residual block
  back to x's width. Call inside a compact module: it binds both submodules there, under the
  names given (ViLBERT's co-attention layers name them per stream)."""
  inner = BertIntermediate(intermediate_size, dtype, name=intermediate)(x)
  return BertResidualOutput(x.shape[-1], dropout_rate, dtype, name=output)(inner, x,
                                                                          deterministic)


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
    return feed_forward(hidden, self.intermediate_size, self.dropout_rate, self.dtype,
                        deterministic)


class BertPooler(nn.Module):
  """tanh(`dense`(hidden of token 0))."""
  hidden_size: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden):
    return jnp.tanh(dense(self.hidden_size, "dense", self.dtype)(hidden[:, 0]))


class BertTextEmbeddings(nn.Module):
  """word + position (0..T-1) + token type -> `LayerNorm` -> dropout (`bert.embeddings.*`;
  ROSITA names the norm `layer_norm`)."""
  vocab_size: int
  hidden_size: int
  max_position: int = 512
  type_vocab_size: int = 2
  dropout_rate: float = 0.1
  dtype: Dtype = jnp.float32
  norm_name: str = "LayerNorm"

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
    return _norm_and_dropout(x, self.norm_name, self.dropout_rate, self.dtype, deterministic)


class RegionEmbeddings(nn.Module):
  """dense(features) + dense(boxes) -> LayerNorm -> dropout: the visual embeddings of ROSITA and
  ViLBERT (one LayerNorm over the sum, no type or position embedding).

  Attributes:
    names: the checkpoint's names of the feature Dense, the box Dense and the LayerNorm.
  """
  hidden_size: int
  names: tuple[str, str, str]
  dropout_rate: float = 0.1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features, boxes, deterministic: bool = True):
    """features: [N, R, F]; boxes: [N, R, B] -> [N, R, hidden_size]."""
    feature_name, box_name, norm_name = self.names
    x = (dense(self.hidden_size, feature_name, self.dtype)(features)
         + dense(self.hidden_size, box_name, self.dtype)(boxes))
    return _norm_and_dropout(x, norm_name, self.dropout_rate, self.dtype, deterministic)


def _norm_and_dropout(x, norm_name: str, dropout_rate: float, dtype: Dtype, deterministic: bool):
  """The tail of every embedding block: LayerNorm named `norm_name`, then dropout."""
  x = layer_norm(norm_name, dtype)(x)
  return nn.Dropout(dropout_rate)(x, deterministic=deterministic)
