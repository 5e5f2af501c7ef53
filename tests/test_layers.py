"""The shared attention and GELU of the scorer ports: the fused-kernel path equals the explicit
math, masks mean the same in both forms, and the options are checked and scoped."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from scorers import layers


def _heads(seed, n=3, tq=5, tk=7, heads=2, head_dim=8, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(rng.normal(size=(n, t, heads, head_dim)), dtype)
             for t in (tq, tk, tk))
  return q, k, v


def _identity(weights):
  return weights


def test_kernel_equals_the_explicit_math_with_an_additive_mask():
  q, k, v = _heads(0)
  key_mask = jnp.asarray([[1, 1, 1, 0, 0, 0, 0], [1] * 7, [1, 1, 1, 1, 1, 1, 0]], jnp.int32)
  bias = layers.attention_bias(key_mask)
  fused = layers.dot_product_attention(q, k, v, bias)
  explicit = layers.dot_product_attention(q, k, v, bias, _identity)
  np.testing.assert_allclose(fused, explicit, atol=1e-6, rtol=0)
  # A masked key changes nothing: drop it from the inputs instead (row 0 sees 3 keys).
  only = layers.dot_product_attention(q[:1], k[:1, :3], v[:1, :3], bias[:1, ..., :3])
  np.testing.assert_allclose(fused[:1], only, atol=1e-6, rtol=0)


def test_causal_boolean_mask_equals_the_explicit_math_and_stays_finite():
  q, k, v = _heads(1, tq=6, tk=6)
  key_mask = np.ones((3, 6), bool)
  key_mask[1, 4:] = False  # right padding
  key_mask[2, :2] = False  # left padding: rows 0 and 1 of this caption see no key at all
  mask = jnp.asarray(key_mask)[:, None, None, :]
  fused = layers.dot_product_attention(q, k, v, mask=mask, causal=True)
  explicit = layers.dot_product_attention(q, k, v, None, _identity, mask=mask, causal=True)
  assert np.all(np.isfinite(fused))
  np.testing.assert_allclose(fused, explicit, atol=1e-6, rtol=0)
  # Query 0 may see key 0 only: its output is value 0.
  np.testing.assert_allclose(fused[0, 0], v[0, 0], atol=1e-6)


def test_bfloat16_kernel_is_close_to_float32():
  q, k, v = _heads(2)
  bias = layers.attention_bias(jnp.ones((3, 7), jnp.int32))
  full = layers.dot_product_attention(q, k, v, bias)
  half = layers.dot_product_attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)), bias)
  assert half.dtype == jnp.bfloat16
  # Inputs rounded to bf16 (8 bits): outputs of size ~1 within a few bf16 steps.
  np.testing.assert_allclose(half.astype(jnp.float32), full, atol=5e-2, rtol=0)


def test_auto_picks_cudnn_only_where_it_can_run():
  assert layers.cudnn_can_run(jnp.bfloat16, 64, "gpu")
  assert layers.cudnn_can_run(jnp.float16, 128, "gpu")
  assert not layers.cudnn_can_run(jnp.float32, 64, "gpu")  # the flash kernel is 16-bit only
  assert not layers.cudnn_can_run(jnp.bfloat16, 64, "cpu")
  assert not layers.cudnn_can_run(jnp.bfloat16, 12, "gpu")  # head width not a multiple of 8
  assert not layers.cudnn_can_run(jnp.bfloat16, 256, "gpu")


def test_options_are_checked_and_scoped():
  assert layers.current_options() == {"attention": "auto", "gelu": "exact"}
  with layers.options(gelu="tanh"):
    assert layers.current_options() == {"attention": "auto", "gelu": "tanh"}
    with layers.options(attention="xla"):
      assert layers.current_options() == {"attention": "xla", "gelu": "tanh"}
    assert layers.current_options()["attention"] == "auto"
  assert layers.current_options() == {"attention": "auto", "gelu": "exact"}
  with pytest.raises(ValueError, match="attention='flash'"):
    with layers.options(attention="flash"):
      pass
  with pytest.raises(ValueError, match="gelu='erf'"):
    with layers.options(gelu="erf"):
      pass


def test_gelu_forms():
  x64 = np.linspace(-8.0, 8.0, 4001)
  exact = 0.5 * x64 * scipy.special.erfc(-x64 / np.sqrt(2.0))
  x = jnp.asarray(x64, jnp.float32)
  # The erf form is the originals' exact GELU: float32 rounding only (values up to 8).
  np.testing.assert_allclose(layers.gelu(x), exact, atol=2e-6, rtol=0)
  np.testing.assert_allclose(layers.erf_gelu(x), jax.nn.gelu(x, approximate=False), atol=2e-6,
                             rtol=0)
  x_half = x.astype(jnp.bfloat16)
  half = layers.gelu(x_half)
  assert half.dtype == jnp.bfloat16  # computed in float32, rounded once (bf16 unit roundoff 2^-8)
  rounded = np.asarray(x_half.astype(jnp.float32), np.float64)
  exact_half = 0.5 * rounded * scipy.special.erfc(-rounded / np.sqrt(2.0))
  np.testing.assert_allclose(half.astype(jnp.float32), exact_half, atol=2e-6, rtol=2 ** -8)
  with layers.options(gelu="tanh"):
    tanh = np.asarray(jax.jit(layers.gelu)(x))
  np.testing.assert_allclose(tanh, jax.nn.gelu(x, approximate=True), atol=1e-6, rtol=0)
  # The tanh form is an approximation: off by up to ~5e-4, but not equal.
  gap = np.max(np.abs(tanh - exact))
  assert 1e-4 < gap < 1e-3, gap
