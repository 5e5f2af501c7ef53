"""How much the benchmark's faster numerics change the scores: bf16 vs float32, tanh vs exact GELU.

Each check scores the same captions (the decoded batch of the benchmark: greedy of n images, then
their K samples) twice, the image side included, and reports the largest and mean change of the
scores and how often the advantage (sample score - greedy score) keeps its sign, which is what
the policy gradient reads. With random weights LXMERT's scores are nearly constant, so the sign
agreement is a harsh test there; real weights (`scorer_checkpoint`) mean more.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from scorers import layers
from scorers import tokens
from vlprobe_jax.bench.build import Setup


def caption_images(images, num_samples):
  """Per-image inputs -> per-caption inputs in the step's order (greedy, then samples)."""
  return jax.tree_util.tree_map(
      lambda x: jnp.concatenate([x, jnp.repeat(x, num_samples, axis=0)], axis=0), images)


def _scores(setup: Setup, ids, mask, raw, num_samples: int, dtype: str, gelu: str) -> np.ndarray:
  spec = setup.spec
  cfg = dataclasses.replace(setup.scorer.config, dtype=dtype)

  def score(p, i, m, x):
    with layers.options(attention=setup.scorer.attention, gelu=gelu):
      images = x if setup.name == "clip" else spec.image_inputs(p, cfg, x)
      return spec.score(p, cfg, i, m, caption_images(images, num_samples))

  return np.asarray(jax.jit(score)(setup.scorer.params, ids, mask, raw), np.float64)


def compare(base: np.ndarray, other: np.ndarray, num_samples: int) -> dict[str, float]:
  """Score changes and advantage-sign agreement; scores [n * (K + 1)], greedy first."""
  n = len(base) // (num_samples + 1)
  advantage = lambda s: s[n:].reshape(n, num_samples) - s[:n, None]
  diff = np.abs(other - base)
  return {"captions": int(len(base)), "max_abs_diff": float(diff.max()),
          "mean_abs_diff": float(diff.mean()), "base_mean": float(base.mean()),
          "base_std": float(base.std()),
          "advantage_sign_agreement": float(np.mean(np.sign(advantage(base))
                                                    == np.sign(advantage(other))))}


def numerics_checks(setup: Setup, seqs: np.ndarray, raw: dict[str, np.ndarray], num_samples: int,
                    *, dtype_check: bool, gelu_check: bool) -> dict[str, dict | None]:
  """{"dtype": bf16 vs float32 (exact GELU), "gelu": tanh vs exact (the benchmark's dtype)}.

  Args:
    seqs: [N, T] captions, greedy of n images then their K samples (N = n * (K + 1)).
    raw: the n images' raw scorer inputs.
  """
  ids, mask = tokens.retokenize(setup.scorer.table, jnp.asarray(seqs), setup.scorer.width)
  run = lambda dtype, gelu: _scores(setup, ids, mask, raw, num_samples, dtype, gelu)
  out = {"dtype": None, "gelu": None}
  exact32 = run("float32", "exact") if dtype_check else None
  if dtype_check:
    out["dtype"] = compare(exact32, run("bfloat16", "exact"), num_samples)
  if gelu_check and setup.name != "clip":  # CLIP's quick_gelu has no erf to approximate
    dtype = setup.scorer.config.dtype
    exact = exact32 if dtype == "float32" and exact32 is not None else run(dtype, "exact")
    out["gelu"] = dict(compare(exact, run(dtype, "tanh"), num_samples), dtype=dtype)
  return out
