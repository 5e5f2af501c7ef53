"""Captions for a split, their captioning metrics, and the files an evaluation writes."""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import jax
import numpy as np

from vlprobe_jax import captioner as captioner_lib
from vlprobe_jax import checkpoints
from vlprobe_jax import decoding
from vlprobe_jax.data import pipeline
from vlprobe_jax.data.dataset import Split
from vlprobe_jax.data.vocab import Vocab


@functools.lru_cache(maxsize=16)
def _generate_fn(config: captioner_lib.CaptionerConfig, max_length: int, method: str,
                 beam_size: int, suppress_token: int | None):
  def generate(params, fc_feats):
    seq, _ = decoding.decode_captions(config, params, fc_feats, max_length, method=method,
                                      beam_size=beam_size, suppress_token=suppress_token)
    return seq
  return jax.jit(generate)


def generate(config: captioner_lib.CaptionerConfig, params: Any, fc_feats: np.ndarray, *,
             batch_size: int = 250, max_length: int = 16, method: str = "greedy",
             beam_size: int = 3, suppress_token: int | None = None) -> np.ndarray:
  """Word ids [N, max_length] for fc_feats [N, D], in fixed-size jitted batches."""
  fn = _generate_fn(config, max_length, method, beam_size, suppress_token)
  out = []
  for real, batch in pipeline.host_batches({"fc": fc_feats}, batch_size):
    out.append(np.asarray(fn(params, batch["fc"]))[:real])
  return np.concatenate(out, axis=0)


def split_captions(config, params, split: Split, vocab: Vocab, eval_config) -> list[str]:
  """Greedy (or beam, per `eval_config.method`) captions of every image of `split`."""
  suppress = vocab.unk_id if eval_config.get("suppress_unk", True) else None
  seq = generate(config, params, split.fc_feats, batch_size=eval_config.batch_size,
                 max_length=eval_config.max_length, method=eval_config.method,
                 beam_size=eval_config.beam_size,
                 suppress_token=suppress if eval_config.method == "beam" else None)
  return vocab.decode_batch(seq)


def references(split: Split) -> dict[int, list[str]]:
  return {int(i): list(refs) for i, refs in zip(split.image_ids, split.references)}


def cider(split: Split, captions: list[str]) -> float:
  """CIDEr-D of `captions` against the split's references (fast, no Java)."""
  from analysis import metrics as metrics_lib

  candidates = {int(i): c for i, c in zip(split.image_ids, captions)}
  return float(metrics_lib.cider(candidates, references(split)))


def caption_metrics(split: Split, captions: list[str], spice_dir: str | None = None,
                    include_meteor: bool = True) -> dict[str, Any]:
  """BLEU-1..4, METEOR, ROUGE-L, CIDEr (and SPICE when its jars are present) for `captions`."""
  from analysis import metrics as metrics_lib

  candidates = {int(i): c for i, c in zip(split.image_ids, captions)}
  return metrics_lib.caption_metrics(candidates, references(split), spice_dir=spice_dir,
                                     include_meteor=include_meteor)


def write_eval(directory: str, split: Split, captions: list[str],
               scores: dict[str, np.ndarray], metrics: dict[str, Any]) -> None:
  """Writes `test_captions.json` (image id, caption, score under every scorer) and
  `metrics.json` (captioning metrics plus the mean score per scorer) into `directory`."""
  os.makedirs(directory, exist_ok=True)
  rows = []
  for n, (image_id, caption) in enumerate(zip(split.image_ids, captions)):
    rows.append({"image_id": int(image_id), "caption": caption,
                 "scores": {name: float(s[n]) for name, s in scores.items()}})
  checkpoints.write_json_atomic(os.path.join(directory, f"{split.name}_captions.json"), rows)
  metrics = dict(metrics)
  metrics["scores"] = {name: float(np.mean(s)) for name, s in scores.items()}
  checkpoints.write_json_atomic(os.path.join(directory, "metrics.json"), metrics)


def read_captions(path: str) -> list[dict[str, Any]]:
  """Reads a captions file: a JSON list of {"image_id": int, "caption": str, ...}."""
  with open(path) as f:
    try:
      rows = json.load(f)
    except json.JSONDecodeError as error:
      raise ValueError(f"{path}: not valid JSON ({error}).") from error
  if not isinstance(rows, list):
    raise ValueError(f"{path}: expected a JSON list of {{image_id, caption}} objects; found "
                     f"{type(rows).__name__}.")
  for n, row in enumerate(rows):
    if not isinstance(row, dict) or "image_id" not in row or "caption" not in row:
      raise ValueError(f"{path}: entry {n} must be an object with fields 'image_id' and "
                       f"'caption'; found {row!r:.200}.")
  return rows


def best_params(stage_dir: str, cap_config: captioner_lib.CaptionerConfig, meta: dict):
  """The params of the best checkpoint in `<stage_dir>/checkpoints`, or None without one."""
  if not os.path.isdir(os.path.join(stage_dir, "checkpoints", "best")):
    return None
  template = jax.eval_shape(lambda: captioner_lib.init_params(cap_config, jax.random.key(0)))
  ckpt = checkpoints.StageCheckpoints(os.path.join(stage_dir, "checkpoints"), meta)
  try:
    return ckpt.restore_best(template) if ckpt.has_best() else None
  finally:
    ckpt.close()
