"""Reward throughput: the compiled SCST step, its parts, and the reference PyTorch pipeline.

`run(config)` (configs/bench_reward.py) builds a random-weight FC captioner and scorer at the
configured sizes (`bench/build.py`) and, for each batch size, times on all local devices (pmap):
  * "full step": `scst.make_p_scst_step` (greedy + K samples, re-tokenize, score, update) fed by
    `data.pipeline.BatchIterator` from host arrays, with the data wait per step against the
    step time;
  * "decode": greedy + K samples only; "reward": re-tokenize + score of the B * (K + 1)
    captions; "score": the scorer on ids already re-tokenized; "update" is derived
    (full - decode - reward); "image side": the scorer's caption-independent work per image;
and XLA compile time of each. Then the reference pipeline (`bench/torch_reference.py`) on the same batch,
the ratios, the difference of the scores between float32 and bfloat16 compute, and with
`profile_dir` a profile summary (`bench/profile.py`); `bench/table.py` prints it all.
Timings: `jax.block_until_ready`, warm-up excluded, median over `repeats` of
`steps_per_repeat` back-to-back calls (dispatch overlapping compute, as in training).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scorers import tokens
from vlprobe_jax import checkpoints
from vlprobe_jax import decoding
from vlprobe_jax import devices as devices_lib
from vlprobe_jax import scoring
from vlprobe_jax import scst
from vlprobe_jax import training
from vlprobe_jax.bench import checks
from vlprobe_jax.bench import profile as profile_summary
from vlprobe_jax.bench import table as bench_table
from vlprobe_jax.bench.build import (Setup, batch_sizes, build, parse_variants, raw_images,
                                     variant_setup)
from vlprobe_jax.data import pipeline

def _compile(fn, *args) -> tuple[Any, float]:
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  return compiled, time.perf_counter() - start


def _time_calls(call, warmup: int, repeats: int, steps: int) -> list[float]:
  """Seconds per call, one value per repeat of `steps` back-to-back calls, after warm-up."""
  for _ in range(warmup):
    jax.block_until_ready(call())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = None
    for _ in range(steps):
      out = call()
    jax.block_until_ready(out)
    times.append((time.perf_counter() - start) / steps)
  return times


def _part(seconds: list[float], images: int, captions: int | None,
          compile_s: float | None = None) -> dict[str, Any]:
  median = float(statistics.median(seconds))
  return {"ms_per_step": 1e3 * median, "images_per_s": images / median,
          "captions_per_s": None if captions is None else captions / median,
          "compile_s": compile_s, "repeats_ms": [1e3 * s for s in seconds]}


def image_side(setup: Setup, raw: dict[str, np.ndarray], chunk: int, config):
  """The scorer's image inputs for every image of `raw` (host arrays) and their timing."""
  spec, scorer_config, params = setup.spec, setup.scorer.config, setup.scorer.params
  if setup.name == "clip":  # Cached embeddings: the vision tower is not part of the step.
    return dict(raw), None
  fn = jax.jit(lambda p, images: spec.image_inputs(p, scorer_config, images))
  batches = list(pipeline.host_batches(raw, chunk))
  compiled, compile_s = _compile(fn, params, batches[0][1])
  outputs = []
  for real, images in batches:
    outputs.append(jax.tree_util.tree_map(lambda x, r=real: np.asarray(x)[:r],
                                          jax.device_get(compiled(params, images))))
  pool = jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *outputs)
  on_device = jax.device_put(batches[0][1])  # The step gets its images on the device already.
  seconds = _time_calls(lambda: compiled(params, on_device), config.warmup, config.repeats, 1)
  return pool, _part(seconds, chunk, None, compile_s)


def _decode(params, fc, rng, *, cap_config, num_samples, max_length):
  """Phases 1-2 of the SCST step: greedy (dropout off) and K samples (dropout on)."""
  rng_sample, rng_dropout = jax.random.split(rng)
  greedy_seq, _ = decoding.decode_captions(cap_config, params, fc, max_length, method="greedy")
  fc_samples = jnp.repeat(fc, num_samples, axis=0)
  init = decoding.initial_state(cap_config, params, fc_samples)
  sample_seq, _ = decoding.sample(decoding.captioner_step_fn(cap_config, params, rng_dropout),
                                  init, fc_samples.shape[0], max_length, rng_sample)
  return jnp.concatenate([greedy_seq, sample_seq], axis=0)


def time_parts(setup: Setup, config, batch, num_images: int) -> tuple[dict, Any]:
  """Decode only, re-tokenize + score, score on pre-tokenized ids.

  Returns:
    (parts, the decoded captions [devices, B / devices * (K + 1), T]). "score" runs at the
    width the reward picks for this batch (`LoadedScorer.width_buckets`).
  """
  k, devices = config.num_samples, setup.devices
  captions = num_images * (k + 1)
  scorer, spec = setup.scorer, setup.spec
  params = devices_lib.replicate(setup.cap_params, devices)
  scorer_params = devices_lib.replicate(scorer.params, devices)
  keys = jax.device_put(devices_lib.device_keys(jax.random.key(config.seed + 1), 0, len(devices)),
                        devices_lib.device_sharding(devices))
  decode = jax.pmap(functools.partial(_decode, cap_config=setup.cap_config, num_samples=k,
                                      max_length=config.max_length), devices=devices)
  reward = jax.pmap(lambda p, seqs, images: scorer.reward_fn(p, seqs, checks.caption_images(images, k)),
                    devices=devices)
  retok = jax.pmap(lambda seqs: tokens.retokenize(scorer.table, seqs, scorer.width),
                   devices=devices)
  score = jax.pmap(lambda p, ids, mask, images: spec.score(p, scorer.config, ids, mask, images),
                   devices=devices)
  fc, images = batch["fc_feats"], batch["image_inputs"]
  compile_s = {}
  decode_c, compile_s["decode"] = _compile(decode, params, fc, keys)
  seqs = decode_c(params, fc, keys)
  reward_c, compile_s["reward"] = _compile(reward, scorer_params, seqs, images)
  ids, mask = retok(seqs)
  lengths = np.sum(np.asarray(jax.device_get(mask)), axis=-1)  # [devices, captions per device]
  # The width a single group would be scored at (the batch's longest caption's bucket).
  longest = int(np.max(lengths))
  bucket = scorer.width_buckets[int(scoring.bucket_index(scorer.width_buckets, longest))]
  ids, mask = ids[..., :bucket], mask[..., :bucket]
  caption_images = jax.pmap(lambda x: checks.caption_images(x, k), devices=devices)(images)
  score_c, compile_s["score"] = _compile(score, scorer_params, ids, mask, caption_images)
  calls = {"decode": lambda: decode_c(params, fc, keys),
           "reward": lambda: reward_c(scorer_params, seqs, images),
           "score": lambda: score_c(scorer_params, ids, mask, caption_images)}
  timing = (config.warmup, config.repeats, config.steps_per_repeat)
  parts = {name: _part(_time_calls(call, *timing), num_images, captions, compile_s[name])
           for name, call in calls.items()}
  parts["score"]["text_width"] = bucket
  parts["score"]["longest_caption_tokens"] = longest
  # The widths the reward's length groups are scored at on device 0 (scoring.score_by_length).
  groups = scoring.group_count(lengths.shape[1], scorer.length_groups)
  widths = (scoring.group_widths(lengths[0], scorer.width_buckets, groups)
            if len(scorer.width_buckets) > 1 else [scorer.width])
  parts["reward"].update(length_groups=groups, group_widths=widths,
                         mean_width=float(np.mean(widths)),
                         mean_caption_tokens=float(lengths.mean()))
  return parts, seqs


def time_full_step(setup: Setup, config, pool: dict[str, np.ndarray], num_images: int,
                   in_step: bool, with_profile: bool = True) -> dict[str, Any]:
  """The compiled SCST step fed by BatchIterator; returns its timing, data wait, measurements.

  `pool` holds per image "fc_feats" and "image_inputs": the scorer's cached image inputs, or
  with `in_step` its raw images, turned into inputs inside the step (the COCO setting).
  """
  devices, scorer, k = setup.devices, setup.scorer, config.num_samples
  sharding = devices_lib.device_sharding(devices)
  p_step = scst.make_p_scst_step(setup.cap_config, scorer.reward_fn, k, config.baseline,
                                 config.max_length, devices=devices,
                                 image_inputs_fn=scorer.image_inputs_fn if in_step else None,
                                 policy_gradient_pass=setup.policy_gradient)
  tx = training.make_optimizer(config.lr, config.grad_clip)
  state = devices_lib.replicate(training.TrainState.create(apply_fn=None, params=setup.cap_params, tx=tx),
                             devices)
  scorer_params = devices_lib.replicate(scorer.params, devices)
  steps = config.warmup + config.repeats * config.steps_per_repeat + config.profile_steps + 1
  rng = jax.random.key(config.seed + 2)
  keys = [jax.device_put(devices_lib.device_keys(rng, s, len(devices)), sharding)
          for s in range(steps)]
  rows = pipeline.EpochRows(len(pool["fc_feats"]), num_images, seed=config.seed)
  iterator = pipeline.BatchIterator(rows.source(pool), devices=devices, prefetch=config.prefetch)
  stream = iter(iterator)

  def next_batch():
    return next(stream)

  step_index = 0

  def run_step(compiled, state):
    nonlocal step_index
    batch = next_batch()
    with jax.transfer_guard("disallow"):  # Everything is on the device already.
      out = compiled(state, scorer_params, batch, keys[step_index])
    step_index += 1
    return out

  try:
    compiled, compile_s = _compile(p_step, state, scorer_params, next_batch(), keys[0])
    for _ in range(config.warmup):
      state, measurements = run_step(compiled, state)
    jax.block_until_ready(state)
    times, waits = [], []
    for _ in range(config.repeats):
      waited, start = iterator.wait_seconds, time.perf_counter()
      for _ in range(config.steps_per_repeat):
        state, measurements = run_step(compiled, state)
      jax.block_until_ready((state, measurements))
      times.append((time.perf_counter() - start) / config.steps_per_repeat)
      waits.append((iterator.wait_seconds - waited) / config.steps_per_repeat)
    profile = None
    if with_profile and config.profile_dir:
      path = os.path.join(config.profile_dir, f"{setup.name}_images{num_images}")
      os.makedirs(path, exist_ok=True)
      # The optimized HLO names each kernel's ops (and their named scopes) for the summary.
      with open(os.path.join(path, profile_summary.HLO_FILE), "w") as f:
        f.write(compiled.as_text())
      with jax.profiler.trace(path):
        for i in range(config.profile_steps):
          with jax.profiler.StepTraceAnnotation("scst_step", step_num=i):
            state, measurements = run_step(compiled, state)
        jax.block_until_ready((state, measurements))
      profile = profile_summary.summarize(path, config.profile_steps)
      print(f"[bench] profile of {config.profile_steps} steps written to {path}", flush=True)
  finally:
    iterator.close()
  full = _part(times, num_images, num_images * (k + 1), compile_s)
  step_s, wait_s = statistics.median(times), statistics.median(waits)
  data = {"wait_ms_per_step": 1e3 * wait_s, "step_ms": 1e3 * step_s,
          "wait_fraction": wait_s / step_s}
  scalars = {key: float(value) for key, value in devices_lib.unreplicate(measurements).items()}
  return {"full": full, "data": data, "measurements": scalars, "profile": profile}


def run_reference(setup: Setup, config, fc: np.ndarray, raw: dict[str, np.ndarray]):
  """The PyTorch reference on the same batch; None (with the reason) when it cannot run."""
  if not config.reference:
    return None, "reference=False"
  try:
    from vlprobe_jax.bench import torch_reference as bench_torch  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    return None, f"torch is not importable ({error})"
  if setup.name not in bench_torch.REFERENCE_SCORERS:
    return None, (f"no PyTorch reference for {setup.name} (transformers has no such model; "
                  f"references: {', '.join(bench_torch.REFERENCE_SCORERS)})")
  result = bench_torch.run_reference(
      scorer_name=setup.name, scorer_config=setup.scorer.config, cap_config=setup.cap_config,
      cap_params=jax.device_get(setup.cap_params), words=setup.scorer.words,
      tokenizer=setup.scorer.tokenizer, text_max_length=setup.scorer.fmt.max_length,
      fc_feats=fc, images=raw, num_samples=config.num_samples, max_length=config.max_length,
      dtype=setup.scorer.config.dtype, lr=config.lr, grad_clip=config.grad_clip,
      warmup=config.warmup, repeats=config.reference_repeats, seed=config.seed)
  num_images = len(fc)
  captions = num_images * (config.num_samples + 1)
  phases = result.pop("phases")
  result["parts"] = {name: _part(seconds, num_images, captions)
                     for name, seconds in phases.items()}
  return result, ""


def image_inputs_in_step(setup: Setup, config) -> bool:
  """Region scorers: the step turns raw regions into inputs unless config.cache_image_inputs.

  CLIP always gets cached image embeddings (its vision tower is not part of the reward).
  """
  return setup.name != "clip" and not config.cache_image_inputs


def bench_batch(setup: Setup, config, num_images: int, check_dtype: bool = True,
                with_reference: bool = True) -> dict[str, Any]:
  """All timings for one batch size, the full step of each of config.variants, and (when
  `check_dtype`) the bf16-vs-fp32 and tanh-vs-exact GELU score checks."""
  if num_images % len(setup.devices):
    raise ValueError(f"config.images_per_batch: {num_images} images do not split over "
                     f"{len(setup.devices)} devices; use a multiple of the device count.")
  rng = np.random.default_rng([config.seed, num_images])
  pool_size = max(config.pool_batches, 1) * num_images
  raw = raw_images(setup, pool_size, rng)
  fc = np.maximum(rng.normal(size=(pool_size, setup.cap_config.fc_dim)), 0.0).astype(np.float32)
  images, image_part = image_side(setup, raw, num_images, config)
  first = {"fc_feats": fc[:num_images],
           "image_inputs": jax.tree_util.tree_map(lambda x: x[:num_images], images)}
  sharded = jax.tree_util.tree_map(
      lambda x: jax.device_put(x.reshape((len(setup.devices), -1) + x.shape[1:]),
                               devices_lib.device_sharding(setup.devices)), first)
  parts, seqs = time_parts(setup, config, sharded, num_images)
  if image_part is not None:
    parts["image_side"] = image_part
  in_step = image_inputs_in_step(setup, config)
  fed = raw if in_step else images
  if in_step and setup.name == "lxmert" and setup.scorer.config.dtype == "bfloat16":
    # LXMERT casts regions to its compute dtype first thing (scorers/lxmert.py `_regions`), so
    # feeding them as bfloat16 gives the same scores and halves the bytes the host moves. The
    # other region scorers read them in float32 (ViLBERT averages them), so they get float32.
    fed = dict(raw, region_feats=raw["region_feats"].astype(jnp.bfloat16))
  pool = {"fc_feats": fc, "image_inputs": fed}
  full = time_full_step(setup, config, pool, num_images, in_step)
  parts["full"] = full["full"]
  subtracted = ("decode", "reward") + (("image_side",) if in_step else ())
  parts["update"] = {"ms_per_step": parts["full"]["ms_per_step"] - sum(
      parts[name]["ms_per_step"] for name in subtracted), "derived": " - ".join(("full",)
                                                                                + subtracted)}
  variants = []
  for changes in parse_variants(config.variants):
    timed = time_full_step(variant_setup(setup, changes), config, pool, num_images, in_step,
                           with_profile=False)
    variants.append({"changes": changes, "full": timed["full"],
                     "speedup": parts["full"]["ms_per_step"] / timed["full"]["ms_per_step"]})
  # The score checks use device 0's share: its images are the first rows of the batch.
  local = np.asarray(jax.device_get(seqs))[0]
  local_images = len(local) // (config.num_samples + 1)
  numerics = checks.numerics_checks(
      setup, local, {k: v[:local_images] for k, v in raw.items()}, config.num_samples,
      dtype_check=check_dtype and config.dtype_check,
      gelu_check=check_dtype and config.gelu_check)
  if with_reference:
    reference, skipped = run_reference(setup, config, fc[:num_images],
                                       {k: v[:num_images] for k, v in raw.items()})
  else:
    reference, skipped = None, f"not at {num_images} images (config.reference_images)"
  ratio = None
  if reference is not None:  # torch time / jax time of the same part.
    ratio = {"full_step" if name == "full" else name:
             reference["parts"][name]["ms_per_step"] / parts[name]["ms_per_step"]
             for name in ("full", "score", "decode")}
  return {"images_per_batch": num_images,
          "captions_per_step": num_images * (config.num_samples + 1),
          "jax": {"parts": parts, "data": full["data"], "measurements": full["measurements"]},
          "torch": reference, "torch_skipped": skipped, "ratio": ratio,
          "dtype_check": numerics["dtype"], "gelu_check": numerics["gelu"],
          "variants": variants, "profile": full["profile"]}


def versions() -> dict[str, str]:
  """The software the numbers come from (torch only when it is already imported)."""
  import sys  # pylint: disable=import-outside-toplevel
  import flax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  out = {"jax": jax.__version__, "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__")
         else "", "flax": flax.__version__, "optax": optax.__version__,
         "python": sys.version.split()[0]}
  if "torch" in sys.modules:
    out["torch"] = sys.modules["torch"].__version__
  return out


def run(config) -> dict[str, Any]:
  """Runs the benchmark of configs/bench_reward.py; prints tables, writes and returns a summary."""
  devices = jax.local_devices()
  if (devices[0].platform == "gpu" and config.reference
      and os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", "").lower() != "false"):
    print("[bench] warning: JAX preallocated most of the GPU; the PyTorch reference may run out "
          "of memory. Set XLA_PYTHON_CLIENT_PREALLOCATE=false.", flush=True)
  start = time.perf_counter()
  setup = build(config, devices)
  summary = {
      "scorer": config.scorer, "scorer_size": config.scorer_size,
      "scorer_weights": setup.scorer.source,
      "device": f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform})",
      "num_devices": len(devices), "dtype": setup.scorer.config.dtype,
      "captioner_dtype": setup.cap_config.dtype, "vocab_size": setup.cap_config.vocab_size,
      "attention": setup.scorer.attention, "gelu": setup.scorer.gelu,
      "length_groups": setup.scorer.length_groups, "policy_gradient": setup.policy_gradient,
      "versions": versions(),
      "multi_piece_words": int(np.sum(setup.scorer.table.npieces[1:] > 1)),
      "max_pieces": int(setup.scorer.table.max_pieces), "num_samples": config.num_samples,
      "max_length": config.max_length, "timing": (f"median of {config.repeats} x "
                                                  f"{config.steps_per_repeat} steps after "
                                                  f"{config.warmup} warm-up"),
      "image_inputs": ("computed in the step from raw regions" if image_inputs_in_step(
          setup, config) else "cached per image, fed to the step"),
      "profile_dir": config.profile_dir or None, "results": []}
  print(f"[bench] setup in {time.perf_counter() - start:.1f}s: {summary['multi_piece_words']} of "
        f"{summary['vocab_size'] - 1} captioner words are several scorer tokens (max "
        f"{summary['max_pieces']})", flush=True)
  reference_sizes = set(batch_sizes(config.reference_images)) if config.reference_images else None
  out_json = os.path.join(config.workdir, config.out_json) if config.out_json else ""
  if out_json:
    os.makedirs(os.path.dirname(os.path.abspath(out_json)), exist_ok=True)
  for i, num_images in enumerate(batch_sizes(config.images_per_batch)):
    with_reference = reference_sizes is None or num_images in reference_sizes
    result = bench_batch(setup, config, num_images, check_dtype=i == 0,
                         with_reference=with_reference)
    summary["results"].append(result)
    print(bench_table.format_result(summary, result), flush=True)
    summary["seconds"] = time.perf_counter() - start
    if out_json:  # After every batch size, so a run cut short keeps what it measured.
      checkpoints.write_json_atomic(out_json, summary)
  if out_json:
    print(f"[bench] summary written to {out_json}", flush=True)
  summary["summary_path"] = out_json or None
  summary["headline"] = ", ".join(
      f"{r['images_per_batch']} images: {r['jax']['parts']['full']['captions_per_s']:,.0f} "
      "captions/s" for r in summary["results"])
  return summary
