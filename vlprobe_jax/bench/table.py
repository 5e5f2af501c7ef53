"""The printed tables of the reward benchmark (`bench.run`): one per batch size.

Rows of the JAX parts and of the PyTorch reference, with captions/s, images/s, ms per step and
compile seconds; the jax/torch ratios; the data wait; the bf16-vs-fp32 score check; and the
profile summary when one was taken.
"""

from __future__ import annotations

from vlprobe_jax.bench import profile as profile_summary


_ROWS = (("full", "full SCST step"), ("decode", "decode (greedy + K samples)"),
         ("reward", "re-tokenize + score"), ("score", "score (pre-tokenized)"),
         ("image_side", "image side (raw regions -> inputs)"),
         ("update", "policy gradient + Adam (the rest)"))
_TORCH_ROWS = (("full", "full step (reference)"), ("decode", "decode (Python loop)"),
               ("strings_tokenize", "ids -> strings + tokenizer (CPU)"),
               ("score", "score"), ("update", "reward, backward, Adam"))


def _row(pipeline: str, label: str, part: dict) -> str:
  def fmt(value, spec):
    return "-" if value is None else format(value, spec)
  return (f"{pipeline:<6} {label:<34} {fmt(part.get('captions_per_s'), ',.0f'):>12} "
          f"{fmt(part.get('images_per_s'), ',.1f'):>11} {fmt(part.get('ms_per_step'), '.2f'):>9} "
          f"{fmt(part.get('compile_s'), '.1f'):>9}")


def _score_change(check: dict, base: str) -> str:
  return (f"max |diff| {check['max_abs_diff']:.3f}, mean |diff| {check['mean_abs_diff']:.3f} "
          f"({base} scores mean {check['base_mean']:.2f}, std {check['base_std']:.3f}); "
          f"advantage signs agree {100 * check['advantage_sign_agreement']:.1f}%")


def format_result(summary: dict, result: dict) -> str:
  """The printed table of one batch size."""
  lines = [f"[bench] {summary['scorer']} | {summary['device']} | scorer {summary['dtype']}, "
           f"captioner {summary['captioner_dtype']}, {summary['vocab_size']:,} logits | "
           f"{result['images_per_batch']} images x ({summary['num_samples']} samples + 1 greedy) "
           f"= {result['captions_per_step']} captions/step, {summary['max_length']} words max | "
           f"image inputs {summary['image_inputs']} | attention {summary['attention']}, GELU "
           f"{summary['gelu']}, policy gradient {summary['policy_gradient']}",
           f"{'':6} {'part':<34} {'captions/s':>12} {'images/s':>11} {'ms/step':>9} "
           f"{'compile s':>9}"]
  parts = result["jax"]["parts"]
  lines += [_row("jax", label, parts[key]) for key, label in _ROWS if key in parts]
  reward = parts.get("reward", {})
  if "group_widths" in reward:
    lines.append(f"reward text widths: {reward['length_groups']} length group(s) at "
                 f"{reward['group_widths']} (mean {reward['mean_width']:.1f}; captions "
                 f"{reward['mean_caption_tokens']:.1f} tokens on average); one group would take "
                 f"{parts['score']['text_width']}")
  for number, variant in enumerate(result.get("variants") or (), start=1):
    changes = ", ".join(f"{k}={v}" for k, v in variant["changes"].items())
    lines.append(_row("jax", f"full step, variant {number}", variant["full"])
                 + f"  {variant['speedup']:.2f}x the first row with {changes}")
  torch_result = result["torch"]
  if torch_result is None:
    lines.append(f"torch  reference skipped: {result['torch_skipped']}")
  else:
    lines += [_row("torch", label, torch_result["parts"][key]) for key, label in _TORCH_ROWS]
    ratio = result["ratio"]
    lines.append(f"ratio jax/torch: full step {ratio['full_step']:.1f}x, score "
                 f"{ratio['score']:.1f}x, decode {ratio['decode']:.1f}x | torch on "
                 f"{torch_result['device']}, {torch_result['tokenizer']}, "
                 f"{torch_result['scorer']}, autocast {torch_result['autocast']}, text width "
                 f"{torch_result['text_width']:.1f} (jax {parts['score']['text_width']})")
  data = result["jax"]["data"]
  lines.append(f"data: BatchIterator wait {data['wait_ms_per_step']:.3f} ms/step vs step "
               f"{data['step_ms']:.2f} ms ({100 * data['wait_fraction']:.1f}%)")
  check = result["dtype_check"]
  if check is None:
    lines.append("bf16 vs fp32 scores: not checked here (only at the first batch size, when "
                 "config.dtype_check)")
  else:
    lines.append(f"bf16 vs fp32 scores ({check['captions']} captions): "
                 + _score_change(check, "fp32"))
  gelu = result.get("gelu_check")
  if gelu is not None:
    lines.append(f"tanh vs exact GELU scores ({gelu['captions']} captions, {gelu['dtype']}): "
                 + _score_change(gelu, "exact"))
  if result.get("profile"):
    lines.append(profile_summary.format_summary(result["profile"]))
  return "\n".join(lines)
