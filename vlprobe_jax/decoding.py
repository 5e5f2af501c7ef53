"""Greedy, sampling and beam-search decoding in `lax.scan`, vectorised over the batch.

Every decoder takes a `step_fn(tokens, state, t) -> (logprobs, state)`: tokens [batch] int32
(the previous token; 0 = BOS at t = 0), any pytree state with a leading batch axis, the step
index t (for per-step dropout keys), returning [batch, vocab] float32 log-probs. The captioner
provides one (`captioner_step_fn`); tests pass toy functions whose outputs are known.

Conventions of self-critical.pytorch: id 0 is BOS, EOS and PAD; once a greedy or sampled row has
emitted 0 every later token is forced to 0 and its log-prob to 0; the sampled token's log-prob is
taken from the untempered distribution; beam search sets a beam aside when it ends, as the
original's `done_beams`. There is no early exit: the scan always runs `max_length` steps, which
is what keeps decoding on the device with no host round trip.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from vlprobe_jax import captioner as captioner_lib

StepFn = Callable[[jax.Array, Any, jax.Array], tuple[jax.Array, Any]]

# What self-critical.pytorch takes off an ended beam's slot (CaptionModel.py, beam_search:
# `beam_logprobs_sum_table[divm][b, is_end] -= 1000`).
ENDED_PENALTY = 1000.0


def _decode(step_fn: StepFn, state: Any, batch: int, max_length: int,
            choose: Callable[[jax.Array, jax.Array], jax.Array],
            with_entropy: bool = False) -> tuple[jax.Array, ...]:
  """Shared loop of greedy and sampling: `choose(logprobs, t) -> tokens`."""

  def body(carry, t):
    tokens, state, finished = carry
    logprobs, state = step_fn(tokens, state, t)
    chosen = jax.lax.stop_gradient(choose(logprobs, t)).astype(jnp.int32)
    chosen_logprob = jnp.take_along_axis(logprobs, chosen[:, None], axis=-1)[:, 0]
    chosen = jnp.where(finished, 0, chosen)
    chosen_logprob = jnp.where(finished, 0.0, chosen_logprob)
    finished = finished | (chosen == 0)
    outputs = (chosen, chosen_logprob)
    if with_entropy:
      outputs += (-jnp.sum(jnp.exp(logprobs) * logprobs, axis=-1),)
    return (chosen, state, finished), outputs

  init = (jnp.zeros((batch,), jnp.int32), state, jnp.zeros((batch,), bool))
  _, outputs = jax.lax.scan(body, init, jnp.arange(max_length))
  return tuple(x.T for x in outputs)


def greedy(step_fn: StepFn, state: Any, batch: int, max_length: int):
  """Argmax decoding. Returns (seq [batch, max_length] int32, logprobs [batch, max_length])."""
  return _decode(step_fn, state, batch, max_length,
                 lambda logprobs, t: jnp.argmax(logprobs, axis=-1))


def sample(step_fn: StepFn, state: Any, batch: int, max_length: int, rng: jax.Array,
           temperature: float = 1.0, with_entropy: bool = False):
  """Samples from softmax(logprobs / temperature); step t uses `fold_in(rng, t)`.

  Differentiable in the params inside `step_fn`: the log-probs of the drawn tokens carry
  gradients (the draws themselves do not), so a policy gradient can come from this pass.

  Returns (seq [batch, max_length] int32, logprobs of the chosen tokens under the untempered
  distribution [batch, max_length]) and, with `with_entropy`, the entropy of each step's
  untempered distribution [batch, max_length] (after a row ends: that of the fed EOS, as in
  `teacher_forced`).
  """

  def choose(logprobs, t):
    return jax.random.categorical(jax.random.fold_in(rng, t), logprobs / temperature, axis=-1)

  return _decode(step_fn, state, batch, max_length, choose, with_entropy)


def beam_search(step_fn: StepFn, state: Any, batch: int, max_length: int, beam_size: int,
                suppress_token: int | None = None):
  """Beam search of self-critical.pytorch (`CaptionModel.beam_search`); the best ended beam per row.

  The original's settings for plain beam search: group_size 1 (no diversity term), no length
  penalty (score = total log-prob, the EOS's included), remove_bad_endings and
  decoding_constraint off. As there, a beam that emits EOS (0) is set aside for good (its
  `done_beams`) and its slot's score is lowered by `ENDED_PENALTY`, so live candidates take the
  slot; at the last step every beam is set aside, ended or not. The answer is the set-aside beam
  of highest score, the earliest on a tie (Python's stable sort there). Only that best one is kept
  here, so the scan's carry has a fixed shape.

  Args:
    step_fn, state, batch, max_length: as for `greedy`; `state` is for `batch` rows and is
      repeated beam_size times here.
    beam_size: beams per row.
    suppress_token: a token id never chosen (self-critical suppresses UNK in beam search).

  Returns:
    (seq [batch, max_length] int32, score [batch]) of the best beam; seq is 0 after the step
    at which it ended.
  """
  vocab_fill = -1e9  # instead of -inf, so that sums never make NaNs
  rows = jnp.arange(batch)

  def repeat(x):
    return jnp.repeat(x, beam_size, axis=0)

  def body(carry, t):
    tokens, state, scores, seqs, best_seq, best_score = carry
    # An ended slot is fed its EOS and goes on like any other, at its penalised score.
    logprobs, state = step_fn(tokens, state, t)
    vocab = logprobs.shape[-1]
    if suppress_token is not None:
      logprobs = logprobs.at[:, suppress_token].set(vocab_fill)
    total = (scores[:, None] + logprobs).reshape(batch, beam_size * vocab)
    top_scores, top_index = jax.lax.top_k(total, beam_size)
    parent = top_index // vocab + (rows * beam_size)[:, None]
    parent = parent.reshape(-1)
    new_tokens = (top_index % vocab).reshape(-1).astype(jnp.int32)
    state = jax.tree_util.tree_map(lambda x: x[parent], state)
    # Columns after t are still 0 in every row, so a beam set aside now reads as padded.
    seqs = seqs[parent].at[:, t].set(new_tokens)

    ended = (new_tokens.reshape(batch, beam_size) == 0) | (t == max_length - 1)
    ended_scores = jnp.where(ended, top_scores, -jnp.inf)
    pick = jnp.argmax(ended_scores, axis=-1)  # the first of equals: top_k ranks them
    pick_score = ended_scores[rows, pick]
    better = pick_score > best_score  # strict, so an earlier beam wins a tie
    pick_seq = seqs.reshape(batch, beam_size, max_length)[rows, pick]
    best_seq = jnp.where(better[:, None], pick_seq, best_seq)
    best_score = jnp.where(better, pick_score, best_score)
    scores = jnp.where(ended, top_scores - ENDED_PENALTY, top_scores).reshape(-1)
    return (new_tokens, state, scores, seqs, best_seq, best_score), None

  state = jax.tree_util.tree_map(repeat, state)
  # Only beam 0 is live at the start, so the first step does not pick the same token k times.
  scores = jnp.tile(jnp.array([0.0] + [vocab_fill] * (beam_size - 1)), batch)
  init = (jnp.zeros((batch * beam_size,), jnp.int32), state, scores,
          jnp.zeros((batch * beam_size, max_length), jnp.int32),
          jnp.zeros((batch, max_length), jnp.int32), jnp.full((batch,), -jnp.inf))
  (_, _, _, _, best_seq, best_score), _ = jax.lax.scan(body, init, jnp.arange(max_length))
  return best_seq, best_score


def captioner_step_fn(config: captioner_lib.CaptionerConfig, params: Any,
                      dropout_rng: jax.Array | None = None) -> StepFn:
  """The FC captioner as a `step_fn`; dropout on its output when `dropout_rng` is given.

  Step t uses the dropout key `fold_in(dropout_rng, t)`, which `teacher_forced`
  reproduces so both passes see the same masks.
  """
  model = captioner_lib.FCCaptioner(config)

  def step_fn(tokens, state, t):
    state = model.apply({"params": params}, tokens, state, method=model.cell)
    rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, t)
    outputs = captioner_lib.output_dropout(state[0], config.dropout, rng)
    return model.apply({"params": params}, outputs, method=model.logprobs), state

  return step_fn


def initial_state(config: captioner_lib.CaptionerConfig, params: Any, fc_feats: jax.Array):
  """The captioner state after the image step, for fc_feats [batch, fc_dim]."""
  model = captioner_lib.FCCaptioner(config)
  return model.apply({"params": params}, fc_feats, method=model.init_state)


def decode_captions(config, params, fc_feats, max_length: int, *, method: str = "greedy",
                    rng: jax.Array | None = None, temperature: float = 1.0, beam_size: int = 3,
                    suppress_token: int | None = None):
  """Captions for fc_feats [batch, fc_dim]: method "greedy", "sample" or "beam".

  Dropout is off for greedy and beam; on for "sample" (the policy SCST samples from).
  Returns (seq [batch, max_length], per-token log-probs or beam scores).
  """
  state = initial_state(config, params, fc_feats)
  batch = fc_feats.shape[0]
  if method == "greedy":
    return greedy(captioner_step_fn(config, params), state, batch, max_length)
  if method == "sample":
    rng_sample, rng_dropout = jax.random.split(rng)
    return sample(captioner_step_fn(config, params, rng_dropout), state, batch, max_length,
                  rng_sample, temperature)
  if method == "beam":
    return beam_search(captioner_step_fn(config, params), state, batch, max_length, beam_size,
                       suppress_token)
  raise ValueError(f"decoding method must be 'greedy', 'sample' or 'beam'; found {method!r}.")


def teacher_forced(config: captioner_lib.CaptionerConfig, params: Any, fc_feats: jax.Array,
                   inputs: jax.Array, targets: jax.Array, *, dropout_rng: jax.Array | None,
                   ss_rng: jax.Array | None = None,
                   ss_prob: jax.Array | float = 0.0) -> tuple[jax.Array, jax.Array]:
  """Log-probs of `targets` and the entropy of each step, the captioner fed `inputs`.

  Only the chosen token's log-prob and the entropy leave each step, never the [N, T, V] table,
  which keeps memory flat in the vocabulary size.

  Args:
    config, params: the captioner.
    fc_feats: [N, D] image features.
    inputs: [N, T] tokens fed at each step (0 = BOS first).
    targets: [N, T] tokens whose log-probs are wanted.
    dropout_rng: step t uses dropout key `fold_in(dropout_rng, t)`, as
      `captioner_step_fn` does, so a sampling pass and this pass share masks.
    ss_rng, ss_prob: with `ss_rng`, each input after the first is replaced, per row with
      probability `ss_prob`, by a token sampled from the previous step (scheduled sampling).

  Returns:
    (token log-probs [N, T], entropies [N, T]).
  """
  step_fn = captioner_step_fn(config, params, dropout_rng)
  state = initial_state(config, params, fc_feats)
  batch = inputs.shape[0]

  def body(carry, t):
    state, previous_logprobs = carry
    tokens = inputs[:, t]
    if ss_rng is not None:
      key = jax.random.fold_in(ss_rng, t)
      use_sample = (jax.random.uniform(key, (batch,)) < ss_prob) & (t > 0)
      sampled = jax.random.categorical(jax.random.fold_in(key, 1), previous_logprobs, axis=-1)
      tokens = jnp.where(use_sample, jax.lax.stop_gradient(sampled), tokens)
    logprobs, state = step_fn(tokens, state, t)
    chosen = jnp.take_along_axis(logprobs, targets[:, t, None], axis=-1)[:, 0]
    entropy = -jnp.sum(jnp.exp(logprobs) * logprobs, axis=-1)
    carried = logprobs if ss_rng is not None else previous_logprobs
    return (state, carried), (chosen, entropy)

  # The previous step's distribution is carried only when scheduled sampling needs it.
  init_logprobs = jnp.zeros((batch, config.vocab_size) if ss_rng is not None else (batch, 1),
                            jnp.float32)
  _, (chosen, entropy) = jax.lax.scan(body, (state, init_logprobs), jnp.arange(inputs.shape[1]))
  return chosen.T, entropy.T
