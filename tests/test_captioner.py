"""The FC captioner's cell and wiring against numbers computed by hand in numpy."""

import jax
import jax.numpy as jnp
import numpy as np

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
