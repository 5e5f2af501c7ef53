"""The compiled reward scores at the narrowest width that holds the batch, with the same scores."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scorers import clip
from scorers import lxmert
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


def _long_and_short_captions(rng, n, num_words):
  """n captions of 1 to 16 words (ids 1..num_words-2), zero-padded: mixed text widths."""
  lengths = rng.integers(1, 17, size=n)
  seq = rng.integers(1, num_words - 1, size=(n, 16)).astype(np.int32)
  return np.where(np.arange(16)[None] < lengths[:, None], seq, 0).astype(np.int32)


def _full_width_scores(scorer, seq, images):
  ids, mask = tokens.retokenize(scorer.table, jnp.asarray(seq), scorer.width)
  return np.asarray(jax.jit(lambda p, i, m, x: scorer.spec.score(p, scorer.config, i, m, x))(
      scorer.params, ids, mask, images))


def _clip_images(rng, n, dim):
  embeds = rng.normal(size=(n, dim))  # one image per caption: a mis-ordered score would show
  return {"image_embeds": jnp.asarray(embeds / np.linalg.norm(embeds, axis=1, keepdims=True),
                                      jnp.float32)}


def test_length_groups_score_like_the_full_width():
  scorer = _clip_scorer()
  rng = np.random.default_rng(1)
  n = 2 * scoring.MIN_GROUP_CAPTIONS + 6  # two groups; 6 rows of padding do not divide evenly
  seq = _long_and_short_captions(rng, n, len(scorer.words))
  images = _clip_images(rng, n, scorer.config.projection_dim)
  assert scoring.group_count(n, scorer.length_groups) == 2
  lengths = np.asarray(tokens.retokenize(scorer.table, jnp.asarray(seq), scorer.width)[1]).sum(-1)
  widths = scoring.group_widths(lengths, scorer.width_buckets, 2)
  assert widths[0] < widths[1]  # the short half is scored narrower than the long half
  got = np.asarray(jax.jit(scorer.reward_fn)(scorer.params, jnp.asarray(seq), images))
  np.testing.assert_allclose(got, _full_width_scores(scorer, seq, images), atol=1e-4, rtol=0)


@pytest.mark.parametrize("groups", [3, 4])
def test_score_by_length_pads_uneven_groups(groups):
  """22 captions in 3 groups (two rows of padding) or 4 (two): same scores, same order."""
  scorer = _clip_scorer()
  rng = np.random.default_rng(groups)
  seq = _long_and_short_captions(rng, 22, len(scorer.words))
  images = _clip_images(rng, 22, scorer.config.projection_dim)
  ids, mask = tokens.retokenize(scorer.table, jnp.asarray(seq), scorer.width)
  branches = [lambda p, i, m, x, b=b: clip.score(p, scorer.config, i[:, :b], m[:, :b], x)
              for b in scorer.width_buckets]
  got = jax.jit(lambda p, i, m, x: scoring.score_by_length(
      branches, scorer.width_buckets, groups, p, i, m, x))(scorer.params, ids, mask, images)
  assert len(set(scoring.group_widths(np.asarray(mask).sum(-1), scorer.width_buckets,
                                      groups))) > 1
  np.testing.assert_allclose(np.asarray(got), _full_width_scores(scorer, seq, images), atol=1e-4,
                             rtol=0)


def test_length_groups_of_a_bert_style_scorer():
  """LXMERT (additive -10000 masks, buckets 16 and 20): grouped scores equal full-width ones."""
  config = lxmert.tiny_config()
  params = lxmert.init_params(config, jax.random.key(0))
  words = bench_setup.benchmark_words(300, 0.3, seed=0)
  scorer = scoring.LoadedScorer("lxmert", lxmert, config, params, words, max_caption_length=16)
  assert scorer.width_buckets == (16, 20)
  rng = np.random.default_rng(5)
  n = 3 * scoring.MIN_GROUP_CAPTIONS
  seq = _long_and_short_captions(rng, n, len(words))
  regions = {"region_feats": rng.normal(size=(n, 4, config.visual_feat_dim)).astype(np.float32),
             "region_boxes": np.tile(np.array([0.1, 0.1, 0.6, 0.7], np.float32), (n, 4, 1)),
             "region_mask": np.ones((n, 4), np.int32)}
  images = jax.jit(scorer.image_inputs_fn)(params, regions)
  lengths = np.asarray(tokens.retokenize(scorer.table, jnp.asarray(seq), scorer.width)[1]).sum(-1)
  assert scoring.group_widths(lengths, scorer.width_buckets, 3)[0] == 16
  got = np.asarray(jax.jit(scorer.reward_fn)(params, jnp.asarray(seq), images))
  np.testing.assert_allclose(got, _full_width_scores(scorer, seq, images), atol=1e-4, rtol=0)


def test_group_widths_mirror_the_device_grouping():
  buckets = (16, 24, 77)
  assert scoring.group_widths(np.array([30, 3, 17, 5]), buckets, 2) == [16, 77]
  # Five captions in two groups of three: the shortest is repeated in front.
  assert scoring.group_widths(np.array([20, 3, 10, 12, 25]), buckets, 2) == [16, 77]
  assert scoring.group_widths(np.array([20, 3, 10, 12, 25]), buckets, 1) == [77]
  assert scoring.group_count(63, 8) == 1 and scoring.group_count(6000, 8) == 8
  assert scoring.group_count(200, 8) == 3
