"""How much bf16 and the tanh GELU change a finished run's rewards, on its own SCST samples.

  python -m vlprobe_jax.bench.numerics --workdir=workdir/scst_lxmert [--stage=scst]
      [--split=val] [--images=250] [--samples=12] [--seed=0]

Takes a finished run (its trained scorer and its best `stage` captioner), draws for `images`
images of `split` one greedy caption and `samples` samples each (dropout on, as in the SCST
step), scores them all with the run's scorer under each of: float32 exact GELU (the reference),
bfloat16 exact, float32 tanh, bfloat16 tanh, and prints, against the reference, the largest and
mean change of the scores and how often the advantage of a sample over the greedy caption keeps
its sign. The random-weight benchmark (`configs/bench_reward.py`) has the same checks on
near-constant scores; this one has trained weights and real captions. Seconds on a CPU for the
synthetic world's tiny scorers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from scorers import tokens
from vlprobe_jax import captioner_stage
from vlprobe_jax import checkpoints
from vlprobe_jax import decoding
from vlprobe_jax import scoring
from vlprobe_jax import stages
from vlprobe_jax.bench import checks
from vlprobe_jax.bench.build import Setup
from vlprobe_jax.data import sources

VARIANTS = (("float32", "exact"), ("bfloat16", "exact"), ("float32", "tanh"),
            ("bfloat16", "tanh"))


def captions(cap_config, params, fc: np.ndarray, num_samples: int, max_length: int,
             seed: int) -> np.ndarray:
  """Greedy captions of the images, then `num_samples` samples each: [n * (K + 1), T]."""
  greedy, _ = jax.jit(lambda p, x: decoding.decode_captions(
      cap_config, p, x, max_length, method="greedy"))(params, fc)
  fc_samples = jnp.repeat(jnp.asarray(fc), num_samples, axis=0)
  samples, _ = jax.jit(lambda p, x, rng: decoding.decode_captions(
      cap_config, p, x, max_length, method="sample", rng=rng))(
          params, fc_samples, jax.random.key(seed))
  return np.concatenate([np.asarray(greedy), np.asarray(samples)])


def measure(workdir: str, stage: str = "scst", split_name: str = "val", num_images: int = 250,
            num_samples: int = 12, seed: int = 0) -> dict:
  """The score changes of every entry of VARIANTS against float32 exact; see the docstring."""
  config = ml_collections.ConfigDict(checkpoints.read_json(os.path.join(workdir, "config.json")))
  dataset = sources.load(config.data, workdir)
  name = config.scst.scorer
  scorer = scoring.load_scorers(config, [name], dataset, workdir)[name]
  cap_config = captioner_stage.captioner_config(config, dataset.vocab.size)
  params = stages.finished_params(config, dataset, workdir, stage)
  if params is None:
    raise ValueError(f"{workdir}: no finished {stage} stage to draw captions from.")
  split = dataset[split_name]
  n = min(num_images, len(split))
  seqs = captions(cap_config, params, split.fc_feats[:n], num_samples, config.scst.max_length,
                  seed)
  raw = split.scorer_images(np.arange(n))
  setup = Setup(name, scorer.spec, scorer, cap_config, params, jax.local_devices())
  ids, mask = tokens.retokenize(scorer.table, jnp.asarray(seqs), scorer.width)
  scores = {v: checks._scores(setup, ids, mask, raw, num_samples, *v)  # pylint: disable=protected-access
            for v in VARIANTS}
  reference = scores[VARIANTS[0]]
  return {"workdir": workdir, "stage": stage, "scorer": name, "split": split_name,
          "images": n, "samples": num_samples, "mean_caption_words": float((seqs > 0).sum(1).mean()),
          "changes": {f"{dtype} {gelu}": checks.compare(reference, scores[(dtype, gelu)],
                                                         num_samples)
                      for dtype, gelu in VARIANTS[1:]}}


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--stage", default="scst", choices=("xe", "scst"))
  parser.add_argument("--split", default="val")
  parser.add_argument("--images", type=int, default=250)
  parser.add_argument("--samples", type=int, default=12)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  out = measure(args.workdir, args.stage, args.split, args.images, args.samples, args.seed)
  print(f"{out['scorer']} scores of {out['images']} {out['split']} images x (1 greedy + "
        f"{out['samples']} samples) from the {out['stage']} captioner of {out['workdir']} "
        f"({out['mean_caption_words']:.1f} words per caption); against float32 exact GELU:")
  for variant, change in out["changes"].items():
    print(f"  {variant:15s} max |diff| {change['max_abs_diff']:.4f}, mean |diff| "
          f"{change['mean_abs_diff']:.4f} (scores mean {change['base_mean']:.2f}, std "
          f"{change['base_std']:.2f}); advantage signs agree "
          f"{100 * change['advantage_sign_agreement']:.2f}%")
  print(json.dumps(out))


if __name__ == "__main__":
  main(sys.argv[1:])
