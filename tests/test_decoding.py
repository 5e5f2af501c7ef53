"""Decoders against a toy step function whose outputs are known exactly."""

import jax
import jax.numpy as jnp
import numpy as np

from vlprobe_jax import decoding

VOCAB = 10


def _next_token_step(tokens, state, t):
  """Always predicts (previous token + 1) mod VOCAB with probability ~1; 0 is EOS."""
  del t
  logits = jnp.where(jax.nn.one_hot((tokens + 1) % VOCAB, VOCAB) > 0, 5.0, -5.0)
  return jax.nn.log_softmax(logits), state + 1


def _offset_state(batch):
  return jnp.zeros((batch,), jnp.int32)


def test_greedy_counts_up_then_pads():
  seq, logprobs = jax.jit(lambda s: decoding.greedy(_next_token_step, s, 2, 12))(_offset_state(2))
  expected = [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 0, 0]
  np.testing.assert_array_equal(seq, [expected, expected])
  # Log-probs after the EOS are zero; the EOS step itself has its own log-prob.
  assert np.all(np.asarray(logprobs)[:, 10:] == 0.0)
  assert np.all(np.asarray(logprobs)[:, :10] < 0.0)


def _start_step(start):
  """Row r starts counting from start[r]: the first token is start[r], then +1."""

  def step(tokens, state, t):
    prev = jnp.where(t == 0, start - 1, tokens)
    return _next_token_step(prev, state, t)

  return step


def test_tokens_after_eos_forced_to_zero():
  start = jnp.array([7, 3])
  seq, logprobs = decoding.greedy(_start_step(start), _offset_state(2), 2, 9)
  np.testing.assert_array_equal(seq[0], [7, 8, 9, 0, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(seq[1], [3, 4, 5, 6, 7, 8, 9, 0, 0])
  np.testing.assert_array_equal(np.asarray(logprobs)[0, 4:], 0.0)


def test_sampling_same_key_same_captions_and_temperature():
  def uniform_step(tokens, state, t):
    return jnp.full((tokens.shape[0], VOCAB), -np.log(VOCAB)), state

  run = jax.jit(lambda rng: decoding.sample(uniform_step, _offset_state(64), 64, 8, rng))
  a, _ = run(jax.random.key(3))
  b, _ = run(jax.random.key(3))
  c, _ = run(jax.random.key(4))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  # A confident toy model sampled at a very low temperature is greedy.
  seq, _ = decoding.sample(_next_token_step, _offset_state(4), 4, 12, jax.random.key(0), 0.01)
  np.testing.assert_array_equal(seq[0], [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 0, 0])


def test_sampled_logprob_is_untempered():
  logits = jnp.log(jnp.array([0.1, 0.6, 0.3]))

  def step(tokens, state, t):
    return jnp.broadcast_to(logits, (tokens.shape[0], 3)), state

  seq, logprobs = decoding.sample(step, _offset_state(500), 500, 1, jax.random.key(0), 2.0)
  np.testing.assert_allclose(logprobs[:, 0], logits[seq[:, 0]], rtol=1e-6)


def test_beam_search_finds_better_than_greedy():
  # At t=0, token 1 (p=.6) looks best, but after it every token is uniform; token 2 (p=.4) is
  # followed by a certain EOS. Beam 2 finds "2 EOS" (log .4) over "1 x" (log .6 + log .1).
  def step(tokens, state, t):
    first = jnp.log(jnp.array([1e-6, 0.6, 0.4 - 1e-6] + [1e-9] * 7))
    after_one = jnp.full((VOCAB,), np.log(0.1))
    after_two = jnp.log(jnp.array([1.0 - 9e-9] + [1e-9] * 9))
    rows = jnp.where((t == 0), first[None], jnp.where((tokens == 1)[:, None], after_one[None],
                                                       after_two[None]))
    return rows, state

  greedy_seq, _ = decoding.greedy(step, _offset_state(1), 1, 3)
  beam_seq, score = decoding.beam_search(step, _offset_state(1), 1, 3, beam_size=2)
  assert int(greedy_seq[0, 0]) == 1
  np.testing.assert_array_equal(beam_seq[0], [2, 0, 0])
  np.testing.assert_allclose(score[0], np.log(0.4), atol=1e-4)


def test_beam_search_suppresses_token():
  seq, _ = decoding.beam_search(_next_token_step, _offset_state(2), 2, 5, beam_size=3,
                                suppress_token=3)
  assert not np.any(np.asarray(seq) == 3)


# A next-token table: row = previous token (0 is BOS, and EOS), column = next token. An ended
# beam enters the beam at t = 0 and is pushed out at t = 1 by live candidates that all fall below
# it by t = 2.
_UNIFORM = [1 / 6] * 6
_PUSH_OUT_TABLE = np.array([
    [0.05, 0.5, 0.4, 0.03, 0.01, 0.01],  # after BOS (or EOS)
    [0.02, 0.2, 0.12, 0.27, 0.22, 0.17],  # after 1
    _UNIFORM, _UNIFORM, _UNIFORM, _UNIFORM,
])
# The same, except that EOS after BOS is at 0.025: the ended beam [0] now scores below the best
# live one, and must lose.
_KEEP_TABLE = _PUSH_OUT_TABLE.copy()
_KEEP_TABLE[0] = [0.025, 0.5, 0.45, 0.01, 0.01, 0.005]


def _table_step(tables):
  """Batch row r follows tables[r]; the state is the row index."""
  logs = jnp.log(jnp.asarray(tables, jnp.float32))

  def step(tokens, state, t):
    del t
    return logs[state, tokens], state

  return step


def test_beam_search_keeps_an_ended_beam_as_done_beams_does():
  """self-critical.pytorch@4c48a33 `CaptionModel.beam_search`, with its eval defaults (opts.py
  L339-357: group_size 1, length_penalty '' (misc.py L134-135: score = total log-prob),
  remove_bad_endings 0, decoding_constraint 0), beam_size 3 (configs/common.py), max_length 3.

  By hand, for _PUSH_OUT_TABLE:
    t = 0 (CaptionModel.py L76-81, from BOS only): [1] .5, [2] .4, [0] .05. [0] has ended; it is
      put in done_beams with p = log .05 = -2.996 (L183-197) and its slot loses 1000 (L198).
    t = 1: [1,3] .135, [1,4] .11, [1,1] .1 beat [1,5] .085, [2,*] .067 and the ended slot
      (about -1000). All three are above .05: a beam search that keeps [0] in a slot at a fixed
      score (vlprobe_jax before issue 20) loses it here.
    t = 2, the last step, where every beam is put in done_beams (L186-187): [1,1,3] .027
      (-3.612) is the best of them ([1,3,*] .0225, [1,1,4] .022, ...).
    done_beams sorted by p (L207) begin with [0] -2.996, which AttModel._sample_beam returns padded
      with 0 (AttModel.py L252-253). Before this fix: [1,1,3], -3.612.
  For _KEEP_TABLE the beams are the same, but [0] scores log .025 = -3.689 < -3.612: [1,1,3].
  (Both answers were also checked by running the original beam_search on these tables.)
  """
  tables = np.stack([_PUSH_OUT_TABLE, _KEEP_TABLE])
  run = jax.jit(lambda state: decoding.beam_search(_table_step(tables), state, 2, 3, beam_size=3))
  seq, score = run(jnp.arange(2))
  np.testing.assert_array_equal(seq, [[0, 0, 0], [1, 1, 3]])
  np.testing.assert_allclose(score, [np.log(0.05), np.log(0.5 * 0.2 * 0.27)], atol=1e-5)
  np.testing.assert_allclose(score, [-2.996, -3.612], atol=1e-3)


def test_beam_search_ended_beam_survives_a_longer_search():
  """As above with max_length 5: live beams only lose log-prob, so [0] stays the best for both
  tables (the original gives [0] -2.996 and [0] -3.689 here)."""
  tables = np.stack([_PUSH_OUT_TABLE, _KEEP_TABLE])
  seq, score = decoding.beam_search(_table_step(tables), jnp.arange(2), 2, 5, beam_size=3)
  np.testing.assert_array_equal(seq, np.zeros((2, 5)))
  np.testing.assert_allclose(score, np.log([0.05, 0.025]), atol=1e-5)
