"""Which stage runs, in what order, and where its outputs go (the "stages" entry point).

Workdir layout:
  config.json                    the resolved config of the run (see `run_record.py`)
  data/                          the cached synthetic world
  scorers/<name>/                tiny scorers pretrained on the synthetic world
  xe/        checkpoints/, metrics.jsonl, tensorboard/, eval/{test_captions.json, metrics.json}
  scst/      the same for SCST
  analysis/  report.md, *.png, analysis.json

A finished stage says so and is reused; an interrupted one resumes from its latest checkpoint.
Only process 0 writes the config record, eval outputs and the analysis.
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections

from vlprobe_jax import captioner_stage
from vlprobe_jax import evaluation
from vlprobe_jax import run_record
from vlprobe_jax import scoring
from vlprobe_jax import xe
from vlprobe_jax.data import sources

STAGES = ("data", "scorers", "xe", "scst", "eval", "analysis")


def run(config: ml_collections.ConfigDict) -> dict:
  """Runs the stages of `config.stages` in `config.workdir`; returns a summary dict."""
  stages = tuple(config.stages)
  workdir = config.workdir
  os.makedirs(workdir, exist_ok=True)
  run_record.check_and_record(config, workdir)
  started = time.time()
  summary: dict = {"workdir": os.path.abspath(workdir)}

  dataset = sources.load(config.data, workdir)
  scorers = {}
  if {"scorers", "scst", "eval", "analysis"} & set(stages):
    names = scoring.scorer_names(config)
    if names:
      scorers = scoring.load_scorers(config, names, dataset, workdir)

  trained = {}
  if "xe" in stages:
    trained["xe"] = xe.train(config, dataset, os.path.join(workdir, "xe")).params
  if "scst" in stages:
    from vlprobe_jax import scst  # pylint: disable=g-import-not-at-top
    xe_params = trained.get("xe") or xe.best_params(config, dataset.vocab.size,
                                                    os.path.join(workdir, "xe"))
    trained["scst"] = scst.train(config, dataset, os.path.join(workdir, "scst"), xe_params,
                                 scorers[config.scst.scorer]).params
  if "eval" in stages:
    for stage in ("xe", "scst") if "scst" in config else ("xe",):
      params = trained.get(stage) or finished_params(config, dataset, workdir, stage)
      if params is None:
        print(f"[eval] {stage}: no finished {stage} stage in {workdir}; nothing to evaluate",
              flush=True)
        continue
      summary[stage] = evaluate_stage(config, dataset, params, scorers,
                                      os.path.join(workdir, stage, "eval"), stage)
  if "analysis" in stages and jax.process_index() == 0:
    from vlprobe_jax import reporting  # pylint: disable=g-import-not-at-top
    summary["analysis"] = reporting.analyse_workdir(config, dataset, scorers, workdir)
  summary["seconds"] = time.time() - started
  return summary


def finished_params(config, dataset, workdir: str, stage: str):
  """The best params of a finished `stage` ("xe" or "scst") in `workdir`, or None."""
  cap_config = captioner_stage.captioner_config(config, dataset.vocab.size)
  more = {"scorer": config.scst.scorer} if stage == "scst" else {}
  return evaluation.best_params(os.path.join(workdir, stage), cap_config,
                                captioner_stage.checkpoint_meta(stage, cap_config, **more))


def evaluate_stage(config, dataset, params, scorers, out_dir: str, stage: str) -> dict:
  """Greedy test captions of a trained stage, their metrics and their scores; written to disk."""
  split = dataset["test"]
  cap_config = captioner_stage.captioner_config(config, dataset.vocab.size)
  print(f"[eval] {stage}: captioning {len(split)} test images ...", flush=True)
  captions = evaluation.split_captions(cap_config, params, split, dataset.vocab, config.eval)
  metrics = evaluation.caption_metrics(split, captions, spice_dir=config.eval.spice_dir or None,
                                       include_meteor=config.eval.meteor)
  scores = {name: scorer.score_texts(captions, split) for name, scorer in scorers.items()}
  if jax.process_index() == 0:
    evaluation.write_eval(out_dir, split, captions, scores, metrics)
  shown = {k: v for k, v in metrics.items() if isinstance(v, float)}
  line = ", ".join(f"{k} {v:.3f}" for k, v in shown.items())
  line += "".join(f", {name} score {float(s.mean()):.2f}" for name, s in scores.items())
  print(f"[eval] {stage} test: {line}", flush=True)
  if metrics.get("SPICE") is None and metrics.get("SPICE_note"):
    print(f"[eval] {metrics['SPICE_note']}", flush=True)
  print(f"[eval] {stage}: captions and metrics in {out_dir}", flush=True)
  return {"metrics": metrics, "scores": {n: float(s.mean()) for n, s in scores.items()}}
