"""Which stage runs, in what order, and where its outputs go.

Workdir layout:
  config.json                    the resolved config of the last launch
  data/                          the cached synthetic world
  scorers/<name>/                tiny scorers pretrained on the synthetic world (or a note of the
                                 checkpoint path for real ones)
  xe/        checkpoints/, metrics.jsonl, tensorboard/, eval/{test_captions.json, metrics.json}
  scst/      the same for SCST
  analysis/  report.md, *.png, analysis.json

A stage whose outputs exist is skipped; an interrupted one resumes from its latest checkpoint.
"""

from __future__ import annotations

import os
import time

import ml_collections

from vlprobe_jax import checkpoints
from vlprobe_jax import evaluation
from vlprobe_jax import xe
from vlprobe_jax.data import sources

KNOWN_STAGES = ("data", "scorers", "xe", "scst", "eval", "analysis")


def parse_stages(text: str) -> list[str]:
  stages = [s.strip() for s in text.split(",") if s.strip()]
  unknown = [s for s in stages if s not in KNOWN_STAGES]
  if unknown:
    raise ValueError(f"config.stages has unknown stage(s) {unknown}; known stages: "
                     f"{', '.join(KNOWN_STAGES)}.")
  return stages


def scorer_names(config) -> list[str]:
  """Every scorer the run uses: the SCST reward scorer first, then `config.scorers`."""
  names = []
  if config.get("scst") is not None and config.scst.get("scorer"):
    names.append(config.scst.scorer)
  names += [n.strip() for n in config.get("scorers", "").split(",") if n.strip()]
  return list(dict.fromkeys(names))


def run(config: ml_collections.ConfigDict) -> dict:
  """Runs the stages of `config.stages` in `config.workdir`; returns a summary dict."""
  stages = parse_stages(config.stages)
  workdir = config.workdir
  os.makedirs(workdir, exist_ok=True)
  checkpoints.write_json_atomic(os.path.join(workdir, "config.json"), config.to_dict())
  started = time.time()
  summary: dict = {"workdir": os.path.abspath(workdir)}

  dataset = sources.load(config.data, workdir)
  scorers = {}
  if "scorers" in stages or "eval" in stages or "scst" in stages or "analysis" in stages:
    names = scorer_names(config)
    if names:
      from vlprobe_jax import scoring  # pylint: disable=g-import-not-at-top
      scorers = scoring.load_scorers(config, names, dataset, workdir)

  trained = {}
  if "xe" in stages:
    trained["xe"] = xe.train(config, dataset, os.path.join(workdir, "xe"))
  if "scst" in stages:
    from vlprobe_jax import scst  # pylint: disable=g-import-not-at-top
    xe_params = trained.get("xe") or xe.best_params(config, dataset.vocab.size,
                                                    os.path.join(workdir, "xe"), "xe")
    trained["scst"] = scst.train(config, dataset, os.path.join(workdir, "scst"), xe_params,
                                 scorers[config.scst.scorer])
  if "eval" in stages:
    for stage, params in trained.items():
      summary[stage] = evaluate_stage(config, dataset, params, scorers,
                                      os.path.join(workdir, stage, "eval"), stage)
  if "analysis" in stages:
    from vlprobe_jax import reporting  # pylint: disable=g-import-not-at-top
    summary["analysis"] = reporting.analyse_workdir(config, dataset, scorers, workdir)
  summary["seconds"] = time.time() - started
  return summary


def evaluate_stage(config, dataset, params, scorers, out_dir: str, stage: str) -> dict:
  """Greedy test captions of a trained stage, their metrics and their scores; written to disk."""
  split = dataset["test"]
  cap_config = xe.captioner_config(config, dataset.vocab.size)
  print(f"[eval] {stage}: captioning {len(split)} test images ...", flush=True)
  captions = evaluation.split_captions(cap_config, params, split, dataset.vocab, config.eval)
  metrics = evaluation.caption_metrics(split, captions, spice_dir=config.eval.spice_dir or None,
                                       include_meteor=config.eval.meteor)
  scores = {name: scorer.score_texts(captions, split) for name, scorer in scorers.items()}
  evaluation.write_eval(out_dir, split, captions, scores, metrics)
  shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
  line = ", ".join(f"{k} {v:.3f}" for k, v in shown.items())
  line += "".join(f", {name} score {float(s.mean()):.2f}" for name, s in scores.items())
  print(f"[eval] {stage} test: {line}", flush=True)
  if metrics.get("SPICE") is None and metrics.get("SPICE_note"):
    print(f"[eval] {metrics['SPICE_note']}", flush=True)
  print(f"[eval] {stage}: captions and metrics in {out_dir}", flush=True)
  return {"metrics": metrics, "scores": {n: float(s.mean()) for n, s in scores.items()}}
