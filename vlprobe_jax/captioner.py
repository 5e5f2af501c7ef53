"""The FC-LSTM captioner: self-critical.pytorch `NewFCModel` in Flax.

Wiring (self-critical.pytorch `NewFCModel` in `models/AttModel.py`, its `LSTMCore` from
`models/FCModel.py`): the 2048-d image feature goes through `fc_embed` (Linear 2048 -> 512) and
is pushed through the cell once before BOS, its output dropped; then word embeddings (index 0 is
BOS, EOS and PAD at once) drive the cell; the cell's output goes through dropout (p = 0.5,
training only) and `logit` (Linear 512 -> V+1), then log-softmax.

The cell (`LSTMCore`) is the 5-chunk maxout LSTM: s = i2h(x) + h2h(h), both with bias;
i, f, o = sigmoid of chunks 1-3; g = max(chunk 4, chunk 5) with no tanh; c = f*c + i*g;
h = o*tanh(c). Only the output is dropped out; the state keeps the undropped h.

Dropout is applied by `output_dropout` with an explicit key per time step, so that a sampling
pass and a teacher-forced pass over the same sequence can share the same masks.

Initialisation is PyTorch's default, which NewFCModel keeps (it has no `init_weights`): the
embedding N(0, 1) (`nn.Embedding.reset_parameters`), and every Linear's weight and bias uniform
in +-1/sqrt(fan_in) (`nn.Linear.reset_parameters`: kaiming_uniform with a = sqrt(5), and the bias
bound). Flax's defaults differ (embedding std 1/sqrt(512) = 0.044, lecun-normal kernels about
1.7x wider, zero biases), so XE from scratch would start from another distribution.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

State = tuple[jax.Array, jax.Array]  # (h, c), each [batch, rnn_size]


def _uniform(bound: float) -> jax.nn.initializers.Initializer:
  """Uniform in [-bound, bound), the law of torch.nn.init.uniform_."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _torch_linear(features: int, fan_in: int, dtype: jnp.dtype, name: str | None = None) -> nn.Dense:
  """nn.Dense initialised as PyTorch's nn.Linear(fan_in, features): kernel and bias both uniform
  in +-1/sqrt(fan_in). The kernel is [fan_in, features], the transpose of PyTorch's weight."""
  init = _uniform(1.0 / math.sqrt(fan_in))
  return nn.Dense(features, dtype=dtype, kernel_init=init, bias_init=init, name=name)


@dataclasses.dataclass(frozen=True)
class CaptionerConfig:
  """Sizes of the FC captioner (the paper's: 9,488 logits, 512 everywhere, dropout 0.5)."""
  vocab_size: int = 9488  # logits, id 0 included
  fc_dim: int = 2048
  embed_size: int = 512
  rnn_size: int = 512
  dropout: float = 0.5
  dtype: str = "float32"


class LSTMCore(nn.Module):
  """The maxout LSTM cell of self-critical.pytorch (`LSTMCore` in FCModel.py)."""
  rnn_size: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, state: State) -> State:
    """x: [batch, input] -> new (h, c), each [batch, rnn_size]."""
    h, c = state
    size = self.rnn_size
    sums = (_torch_linear(5 * size, x.shape[-1], self.dtype, name="i2h")(x)
            + _torch_linear(5 * size, size, self.dtype, name="h2h")(h))
    gates = jax.nn.sigmoid(sums[:, :3 * size])
    in_gate, forget_gate, out_gate = jnp.split(gates, 3, axis=-1)
    cell_input = jnp.maximum(sums[:, 3 * size:4 * size], sums[:, 4 * size:])
    c = forget_gate * c + in_gate * cell_input
    h = out_gate * jnp.tanh(c)
    return h, c


class FCCaptioner(nn.Module):
  """NewFCModel. Use `init_state` once per image, then `step` once per token."""
  config: CaptionerConfig

  def setup(self):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    self.fc_embed = _torch_linear(cfg.embed_size, cfg.fc_dim, dtype)
    self.embed = nn.Embed(cfg.vocab_size, cfg.embed_size, dtype=dtype,
                          embedding_init=nn.initializers.normal(stddev=1.0))
    self.core = LSTMCore(cfg.rnn_size, dtype=dtype)
    self.logit = _torch_linear(cfg.vocab_size, cfg.rnn_size, dtype)

  def init_state(self, fc_feats: jax.Array) -> State:
    """fc_feats: [batch, fc_dim] -> the state after the image step ("step -1")."""
    batch = fc_feats.shape[0]
    zeros = jnp.zeros((batch, self.config.rnn_size), jnp.float32)
    h, c = self.core(self.fc_embed(fc_feats), (zeros, zeros))
    return h.astype(jnp.float32), c.astype(jnp.float32)

  def cell(self, tokens: jax.Array, state: State) -> State:
    """tokens: [batch] int32 -> new state (undropped)."""
    h, c = self.core(self.embed(tokens), state)
    return h.astype(jnp.float32), c.astype(jnp.float32)

  def logprobs(self, outputs: jax.Array) -> jax.Array:
    """outputs: [..., rnn_size] (already dropped out) -> [..., vocab_size] float32 log-probs."""
    return jax.nn.log_softmax(self.logit(outputs).astype(jnp.float32), axis=-1)

  def __call__(self, fc_feats: jax.Array, tokens: jax.Array) -> jax.Array:
    """Used only to create all parameters: fc_feats [B, fc_dim], tokens [B] -> log-probs."""
    state = self.init_state(fc_feats)
    h, _ = self.cell(tokens, state)
    return self.logprobs(h)


def output_dropout(h: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
  """Inverted dropout on the cell output; `rng=None` means evaluation (no dropout)."""
  if rng is None or rate == 0.0:
    return h
  keep = jax.random.bernoulli(rng, 1.0 - rate, h.shape)
  return jnp.where(keep, h / (1.0 - rate), 0.0)


def init_params(config: CaptionerConfig, rng: jax.Array) -> dict:
  """Random parameters drawn as PyTorch's defaults draw NewFCModel's (see the module docstring)."""
  model = FCCaptioner(config)
  fc = jnp.zeros((1, config.fc_dim), jnp.float32)
  return model.init(rng, fc, jnp.zeros((1,), jnp.int32))["params"]
