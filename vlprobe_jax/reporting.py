"""Connects the analysis suite (`analysis/`) to runs: corpus, score functions, out dirs.

Two ways in:
  * at the end of every SCST run (`stages.run`, stage "analysis"): the run's own XE and SCST
    test captions, scored by the run's scorers, with the run's `config.analysis` settings;
  * on its own (the "analysis" entry point, `configs/analysis.py:runs=<dir>,<dir>`): any finished
    workdirs and captions files, with the data and scorers of the first workdir.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np

from vlprobe_jax import checkpoints
from vlprobe_jax import scoring
from vlprobe_jax.data import sources
from vlprobe_jax.data.dataset import Split


def score_fns_for(scorers: dict[str, scoring.LoadedScorer], split: Split) -> dict:
  """`{name: fn(captions, image_ids) -> scores}` over the images of `split`."""
  position = {int(i): n for n, i in enumerate(split.image_ids)}

  def make(scorer):
    def score_fn(captions, image_ids):
      missing = [i for i in image_ids if int(i) not in position]
      if missing:
        raise KeyError(f"image ids {missing[:5]} are not in the {split.name} split that the "
                       f"{scorer.name} scorer scores against.")
      index = np.array([position[int(i)] for i in image_ids], np.int64)
      return scorer.score_texts(list(captions), split, index)
    return score_fn

  return {name: make(scorer) for name, scorer in scorers.items()}


def analyse_workdir(config, dataset, scorers: dict, workdir: str) -> dict:
  """The analysis of one run's workdir, written to `<workdir>/analysis/`."""
  from analysis import report  # pylint: disable=g-import-not-at-top
  from analysis import runs as runs_lib  # pylint: disable=g-import-not-at-top

  out_dir = os.path.join(workdir, "analysis")
  acfg = ml_collections.ConfigDict(config.analysis.to_dict())
  acfg.runs, acfg.captions, acfg.out_dir = (workdir,), (), out_dir
  acfg.include_meteor = bool(config.eval.get("meteor", True))
  acfg.bad_captions = "skip"  # An empty caption of our own captioner is counted, not fatal.
  acfg.spice_dir = config.eval.get("spice_dir") or None
  corpus = runs_lib.Corpus.from_dataset(dataset)
  print(f"[analysis] writing the report to {out_dir} ...", flush=True)
  report.run_from_config(acfg, corpus, score_fns_for(scorers, dataset["test"]))
  print(f"[analysis] report: {os.path.join(out_dir, 'report.md')}", flush=True)
  return {"report": os.path.join(out_dir, "report.md")}


def _run_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir} has no config.json: it is not a launch.py workdir. Pass "
                            "finished run directories with runs=<dir>,<dir>.")
  return ml_collections.ConfigDict(checkpoints.read_json(path))


def run_standalone(acfg) -> dict:
  """The "analysis" entry point (configs/analysis.py); returns the report's short summary.

  The data (test references, training captions) is the first workdir's, unless references= or
  lm_corpus= name files; each scorer is the one cached in the first workdir that has it
  (`<workdir>/scorers/<name>`), or its configured checkpoint. Captions files alone are analysed
  against the files references=/lm_corpus= name, without scorers. Nothing is generated.
  """
  from analysis import corpus as corpus_lib  # pylint: disable=g-import-not-at-top
  from analysis import report  # pylint: disable=g-import-not-at-top
  from analysis import runs as runs_lib  # pylint: disable=g-import-not-at-top

  if not acfg.runs:
    summary = report.run_from_config(acfg, corpus_lib.corpus_from_config(acfg), {})
  else:
    base_dir = acfg.runs[0]
    run_config = _run_config(base_dir)
    dataset = sources.load(run_config.data, base_dir)
    names = list(acfg.scorers)
    if not names:
      for workdir in acfg.runs:
        names += scoring.scorer_names(_run_config(workdir))
    loaded = {}
    for name in dict.fromkeys(names):
      home = next((w for w in acfg.runs if os.path.isdir(os.path.join(w, "scorers", name))),
                  base_dir)
      config = _run_config(home) if os.path.exists(os.path.join(home, "config.json")) else (
          run_config)
      loaded.update(scoring.load_scorers(config, [name], dataset, home))
    corpus = corpus_lib.corpus_from_config(acfg, fallback=runs_lib.Corpus.from_dataset(dataset))
    summary = report.run_from_config(acfg, corpus, score_fns_for(loaded, dataset["test"]))
  print(f"[analysis] report: {summary['report']}", flush=True)
  summary["headline"] = report.summary_line(summary)
  summary["summary_path"] = os.path.join(os.path.dirname(summary["report"]), "summary.json")
  if jax.process_index() == 0:
    checkpoints.write_json_atomic(summary["summary_path"], summary)
  return summary
