"""The compiled reward scores at the narrowest width that holds the batch, with the same scores."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scorers import clip
from scorers import uniter
from scorers import tokens
from vlprobe_jax.bench import build as bench_setup
from vlprobe_jax import scoring


def test_width_buckets_keep_only_branches_that_save_positions():
  assert scoring.text_width_buckets(77) == (16, 24, 32, 40, 48, 77)
  assert scoring.text_width_buckets(20) == (16, 20)
  assert scoring.text_width_buckets(18) == (18,)


def _clip_scorer():
  config = clip.tiny_config()
  params = clip.init_params(config, jax.random.key(0))
  words = bench_setup.benchmark_words(300, 0.3, seed=0)
  return scoring.LoadedScorer("clip", clip, config, params, words, max_caption_length=16)


def test_bucketed_reward_equals_scoring_at_the_full_width():
  scorer = _clip_scorer()
  assert scorer.width == 77 and len(scorer.width_buckets) > 2
  rng = np.random.default_rng(0)
  embeds = rng.normal(size=(6, scorer.config.projection_dim))
  images = {"image_embeds": jnp.asarray(embeds / np.linalg.norm(embeds, axis=1, keepdims=True),
                                        jnp.float32)}
  reward = jax.jit(scorer.reward_fn)
  full = jax.jit(lambda p, seq, x: clip.score(
      p, scorer.config, *tokens.retokenize(scorer.table, seq, scorer.width), x))
  short = np.zeros((6, 16), np.int32)
  short[:, :3] = rng.integers(1, len(scorer.words) - 1, size=(6, 3))  # a bucket of 16
  long = rng.integers(1, len(scorer.words) - 1, size=(6, 16)).astype(np.int32)  # wider buckets
  for seq in (short, long):
    longest = int(np.asarray(tokens.retokenize(scorer.table, jnp.asarray(seq),
                                               scorer.width)[1]).sum(-1).max())
    got = np.asarray(reward(scorer.params, jnp.asarray(seq), images))
    want = np.asarray(full(scorer.params, jnp.asarray(seq), images))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0,
                               err_msg=f"longest caption {longest} tokens")
  assert longest > 16  # The long batch did use a wider bucket than the short one.


def test_a_tokenizer_with_ids_beyond_the_model_vocabulary_is_refused():
  config = uniter.tiny_config()  # vocab_size 100; the cased BERT tokenizer gives ids to 28,995
  words = bench_setup.benchmark_words(50, 0.0, seed=0)
  with pytest.raises(ValueError, match=r"token ids up to \d+, but the model's vocab_size is 100"):
    scoring.LoadedScorer("uniter", uniter, config, {}, words, max_caption_length=16,
                         source="tiny.pt")
