"""The FC captioner's cell and wiring against numbers computed by hand in numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlprobe_jax import captioner


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def test_lstm_core_one_step_matches_numpy():
  rnn, inp, batch = 4, 3, 2
  rng = np.random.default_rng(0)
  params = {
      "i2h": {"kernel": rng.normal(size=(inp, 5 * rnn)), "bias": rng.normal(size=(5 * rnn,))},
      "h2h": {"kernel": rng.normal(size=(rnn, 5 * rnn)), "bias": rng.normal(size=(5 * rnn,))},
  }
  x = rng.normal(size=(batch, inp))
  h = rng.normal(size=(batch, rnn))
  c = rng.normal(size=(batch, rnn))

  core = captioner.LSTMCore(rnn)
  h_new, c_new = core.apply({"params": jax.tree.map(jnp.asarray, params)},
                            jnp.asarray(x, jnp.float32),
                            (jnp.asarray(h, jnp.float32), jnp.asarray(c, jnp.float32)))

  # By hand: one affine sum, five chunks, maxout on the last two, no tanh on g.
  s = x @ params["i2h"]["kernel"] + params["i2h"]["bias"] + h @ params["h2h"]["kernel"] + params["h2h"]["bias"]
  i, f, o, g1, g2 = np.split(s, 5, axis=-1)
  i, f, o = _sigmoid(i), _sigmoid(f), _sigmoid(o)
  g = np.maximum(g1, g2)
  c_expected = f * c + i * g
  h_expected = o * np.tanh(c_expected)
  np.testing.assert_allclose(np.asarray(c_new), c_expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(h_new), h_expected, rtol=1e-5, atol=1e-5)


def test_paper_sizes_and_image_step():
  config = captioner.CaptionerConfig()
  params = jax.eval_shape(lambda: captioner.init_params(config, jax.random.key(0)))
  assert params["fc_embed"]["kernel"].shape == (2048, 512)
  assert params["embed"]["embedding"].shape == (9488, 512)
  assert params["core"]["i2h"]["kernel"].shape == (512, 2560)
  assert params["core"]["h2h"]["bias"].shape == (2560,)
  assert params["logit"]["kernel"].shape == (512, 9488)


def test_image_is_fed_once_before_bos():
  config = captioner.CaptionerConfig(vocab_size=11, fc_dim=6, embed_size=5, rnn_size=4)
  params = captioner.init_params(config, jax.random.key(1))
  model = captioner.FCCaptioner(config)
  fc = jax.random.normal(jax.random.key(2), (3, 6))
  state = model.apply({"params": params}, fc, method=model.init_state)
  zeros = jnp.zeros((3, 4))
  x = fc @ params["fc_embed"]["kernel"] + params["fc_embed"]["bias"]
  expected = captioner.LSTMCore(4).apply({"params": params["core"]}, x, (zeros, zeros))
  np.testing.assert_allclose(state[0], expected[0], rtol=1e-6)
  np.testing.assert_allclose(state[1], expected[1], rtol=1e-6)


def test_output_dropout_only_in_training():
  h = jnp.ones((4, 1000))
  assert jnp.array_equal(captioner.output_dropout(h, 0.5, None), h)
  dropped = captioner.output_dropout(h, 0.5, jax.random.key(0))
  kept = dropped > 0
  assert 0.4 < float(kept.mean()) < 0.6
  np.testing.assert_allclose(dropped[kept], 2.0)


# Kolmogorov-Smirnov critical value at the 0.1% level: D < 1.95 / sqrt(n). Means and spreads must
# lie within 5 standard errors. The draws are seeded, so these tests are deterministic; the bands
# say how far a correct initialiser can stray by chance.
_KS = 1.95
_SE = 5.0


def _ks_distance(sorted_x, cdf):
  """sup |empirical CDF - cdf| for sorted samples."""
  n = sorted_x.size
  f = np.asarray(cdf(sorted_x), np.float64)
  return max(np.max(np.arange(1, n + 1) / n - f), np.max(f - np.arange(n) / n))


def _check_uniform(x, bound, what):
  """x is a sample of U(-bound, bound): support, mean, variance bound^2/3, KS distance."""
  x = np.sort(np.asarray(x, np.float64).ravel())
  n = x.size
  assert x[0] >= -bound and x[-1] <= bound, f"{what}: outside +-{bound:.4g}: [{x[0]}, {x[-1]}]"
  var = bound**2 / 3
  assert abs(x.mean()) < _SE * np.sqrt(var / n), f"{what}: mean {x.mean():.3g}"
  # The sample variance of U(-b, b) has standard error b^2 sqrt(4 / (45 n)).
  assert abs(x.var() - var) < _SE * bound**2 * np.sqrt(4 / (45 * n)), (
      f"{what}: variance {x.var():.4g}, expected {var:.4g}")
  d = _ks_distance(x, lambda v: (v + bound) / (2 * bound))
  assert d < _KS / np.sqrt(n), f"{what}: KS distance to U(-b, b) {d:.3g}"


@pytest.mark.parametrize("config", [
    captioner.CaptionerConfig(),  # the paper's sizes
    # Every fan-in different, so that each Linear is seen to use its own.
    captioner.CaptionerConfig(vocab_size=1000, fc_dim=300, embed_size=40, rnn_size=24),
], ids=["paper", "distinct_fan_ins"])
def test_init_is_pytorch_default(config):
  """NewFCModel (self-critical.pytorch@4c48a33 AttModel.py L907-909, L89; FCModel.py L21-22) has
  no init_weights, so every Linear keeps torch's nn.Linear.reset_parameters (torch 2.x
  torch/nn/modules/linear.py: weight kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)), bias
  U(+-1/sqrt(fan_in))), and the embedding nn.Embedding.reset_parameters (sparse.py: N(0, 1)).
  Flax's defaults fail each check: embedding std 1/sqrt(embed_size), lecun-normal kernels
  (std 1/sqrt(fan_in), past the bound), zero biases.
  """
  params = jax.jit(lambda rng: captioner.init_params(config, rng))(jax.random.key(0))
  fan_ins = {
      "fc_embed": (params["fc_embed"], config.fc_dim),
      "i2h": (params["core"]["i2h"], config.embed_size),
      "h2h": (params["core"]["h2h"], config.rnn_size),
      "logit": (params["logit"], config.rnn_size),
  }
  for name, (linear, fan_in) in fan_ins.items():
    for kind in ("kernel", "bias"):
      _check_uniform(linear[kind], 1 / np.sqrt(fan_in), f"{name}/{kind}")

  x = np.asarray(params["embed"]["embedding"], np.float64).ravel()
  n = x.size
  assert abs(x.mean()) < _SE / np.sqrt(n), f"embedding mean {x.mean():.3g}"
  # The standard deviation of n normal draws has standard error about 1 / sqrt(2n).
  assert abs(x.std() - 1.0) < _SE / np.sqrt(2 * n), f"embedding std {x.std():.4g}, expected 1"
  d = _ks_distance(np.sort(x), jax.scipy.stats.norm.cdf)
  assert d < _KS / np.sqrt(n), f"embedding: KS distance to N(0, 1) {d:.3g}"
