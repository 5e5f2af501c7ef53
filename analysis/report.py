"""The whole analysis of a set of runs: numbers, tables (report.md), plots and analysis.json.

Entry points:
  run_from_config(config, corpus, score_fns)                 what launch.py calls; returns a
                                                             short summary (see `summarize`)
  analyze(runs, corpus, score_fns, out_dir, ...)             the full result dict
  analyze_runs(run_dirs, corpus, score_fns, out_dir, ...)    workdirs of launch.py
  analyze_captions_file(path, corpus, score_fns, out_dir)    captions of any other system
Everything is written under `out_dir` and nowhere else: report.md, analysis.json (the full
result, what `analyze` returns) and the PNG figures.

Coverage is stated, never implied. Table 2 (scores and metrics) covers the captions whose image
has references; captions without are counted, listed in analysis.json
(`runs.<run>.coverage.without_references`) and warned about. Tables 4 and 5 and Figure 4 cover
every caption analysed. Captions left out under the "skip" policy are listed too.

Scores: a scorer's mean for a run comes from the scores stored next to its captions when every
covered caption has one, else from `score_fns[scorer]`. Metrics: from the run's metrics.json
when present (unless `recompute_metrics`), else computed with `analysis.metrics`. Perplexity:
only against a language model of the corpus' training text; without one it is skipped with a
note, and the out-of-vocabulary share is given next to every perplexity.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence

import numpy as np

from analysis import java
from analysis import lm as lm_lib
from analysis import markdown
from analysis import metrics as metrics_lib
from analysis import patterns as patterns_lib
from analysis import plots
from analysis import pos as pos_lib
from analysis import probes as probes_lib
from analysis import text as text_lib
from analysis.runs import Corpus, Run, load_captions, load_runs

ScoreFn = probes_lib.ScoreFn
# Past this share of words outside the LM's vocabulary a perplexity is flagged as not comparable.
OOV_WARNING_SHARE = 0.10


def _clean(value):
  """JSON-safe copy: numpy scalars to Python, NaN/inf to None, int keys to strings."""
  if isinstance(value, Mapping):
    return {str(k): _clean(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_clean(v) for v in value]
  if isinstance(value, np.ndarray):
    return _clean(value.tolist())
  if isinstance(value, (np.floating, float)):
    return float(value) if math.isfinite(value) else None
  if isinstance(value, np.integer):
    return int(value)
  return value


def _run_scores(run: Run, score_fns: Mapping[str, ScoreFn], ids: list[int],
                notes: list[str]) -> dict:
  """scorer -> mean score of the run's captions of `ids` (stored scores first)."""
  out = {}
  for name in sorted(set(run.stored_scores) | set(score_fns)):
    stored = run.stored_scores.get(name, {})
    if ids and all(i in stored for i in ids):
      out[name] = float(np.mean([stored[i] for i in ids]))
    elif name in score_fns and ids:
      try:
        out[name] = float(np.mean(probes_lib.score_all(
            score_fns[name], [run.captions[i] for i in ids], ids)))
      except KeyError as error:  # an image the scorer has no inputs for
        notes.append(f"{run.name}: not scored by {name}: {error}")
  return out


def _run_metrics(run: Run, corpus: Corpus, ids: list[int], recompute: bool, **kwargs) -> dict:
  stored = run.metrics or {}
  if stored and not recompute:
    out = {m: stored.get(m) for m in metrics_lib.METRIC_NAMES}
    notes = list(stored.get("notes", []))
    if out["SPICE"] is None and not any(n.startswith("SPICE") for n in notes):
      notes.append("SPICE unavailable: null in metrics.json")
    out["notes"] = ["from metrics.json"] + notes
    out["num_captions"] = stored.get("num_captions", len(run.captions))
    return out
  if not ids:
    return {m: None for m in metrics_lib.METRIC_NAMES} | {
        "num_captions": 0, "notes": ["metrics skipped: no caption has references"]}
  return metrics_lib.caption_metrics({i: run.captions[i] for i in ids}, corpus.references,
                                     **kwargs)


def _coverage(run: Run, corpus: Corpus) -> dict:
  ids = sorted(run.captions)
  with_refs = [i for i in ids if corpus.references.get(i)]
  return {"read": run.num_read or len(ids), "analysed": len(ids), "skipped": run.skipped,
          "with_references": len(with_refs),
          "without_references": [i for i in ids if not corpus.references.get(i)]}


def _sentence(model: lm_lib.KneserNeyLM | None, tagged) -> dict | None:
  if model is None:
    return None
  ppl = model.perplexity([t.words for t in tagged])
  words = sum(len(t.words) for t in tagged)
  return {"perplexity": ppl.perplexity,
          "mean_caption_perplexity": float(np.nanmean(ppl.per_caption)) if len(tagged) else None,
          "num_events": ppl.num_events, "zero_prob_events": ppl.zero_prob_events,
          "oov_words": ppl.oov_words, "num_words": words,
          "oov_share": ppl.oov_words / words if words else 0.0}


def _warnings(name: str, entry: dict, corpus_desc: str) -> list[str]:
  out, cov = [], entry["coverage"]
  missing = len(cov["without_references"])
  if missing and cov["with_references"]:
    out.append(f"{name}: {missing} of its {cov['analysed']} captions have no references in "
               f"{corpus_desc}; Table 2 covers the other {cov['with_references']}. Their image "
               f"ids: analysis.json runs.{name}.coverage.without_references.")
  elif missing:
    out.append(f"{name}: none of its {cov['analysed']} captions has references in "
               f"{corpus_desc}: no captioning metrics. Pass references= with the split these "
               "image ids come from.")
  if cov["skipped"]:
    first = ", ".join(f"{s['key']} ({s['reason']})" for s in cov["skipped"][:3])
    out.append(f"{name}: {len(cov['skipped'])} of its {cov['read']} captions were skipped "
               f"(bad_captions=skip): {first}; all listed in analysis.json.")
  s = entry["sentence"]
  if s and s["oov_share"] > OOV_WARNING_SHARE:
    out.append(f"{name}: {100 * s['oov_share']:.1f}% of its words are outside the language "
               "model's vocabulary: the LM's text is not of the same kind as these captions, so "
               "its perplexity is not comparable. Pass lm_corpus= with training captions of "
               "the same kind.")
  if s and s["zero_prob_events"]:
    out.append(f"{name}: {s['zero_prob_events']} of its {s['num_events'] + s['zero_prob_events']}"
               " scored events (words and caption ends) had probability 0 under the LM and are "
               "left out of its perplexity.")
  return out


def analyze(runs: Sequence[Run], corpus: Corpus, score_fns: Mapping[str, ScoreFn],
            out_dir: str, *, reference: str = "XE", spice_dir: str | None = None,
            include_meteor: bool = True, ptb_tokenize: bool = False,
            recompute_metrics: bool = False, lm_order: int = 3, lm_discount: float = 0.75,
            lm_unk_cutoff: int = 2, top_k: int = 10, probes: bool = True,
            probe_run: str | None = None, k_values: Sequence[int] = (3, 4, 5, 6, 7),
            probe_max_images: int | None = None, seed: int = 0,
            java_timeout_s: float = java.DEFAULT_TIMEOUT_S,
            normalisation: Mapping | None = None) -> dict:
  """Analyses runs and writes report.md, analysis.json and the PNGs into out_dir.

  Args:
    runs: the runs, their captions already normalised (see `analysis.runs`).
    corpus: training captions (language model; None: no perplexity) and references
      (metrics, probes; empty: none).
    score_fns: scorer name -> (captions, image_ids) -> [N] scores on the paper's scale.
    out_dir: where the outputs go (created); nothing is written elsewhere.
    reference: the row of Table 2 others are compared with; the first run if absent.
    spice_dir, include_meteor, ptb_tokenize, java_timeout_s: see
      `analysis.metrics.caption_metrics`.
    recompute_metrics: ignore stored metrics.json files.
    lm_order, lm_discount, lm_unk_cutoff: the Kneser-Ney model (see `analysis.lm`).
    top_k: unigrams per run (Figure 4).
    probes: run the section 5 probes (needs score_fns and references).
    probe_run: whose captions the probes start from; default the reference run.
    k_values: numbers of visual words of Figure 3.
    probe_max_images: at most this many images in the Figure 3 probe (None: all).
    seed: the random seed of the probes.
    normalisation: how the captions were read ({"tokenizer", "bad_captions"}), for the report.
  """
  if not runs:
    raise ValueError("analysis/report.py: no runs to analyse.")
  os.makedirs(out_dir, exist_ok=True)
  names = [r.name for r in runs]
  if reference not in names:
    reference = names[0]
  timings, notes = {}, []

  start = time.perf_counter()
  model = None
  if corpus.train_captions:
    model = lm_lib.KneserNeyLM(corpus.train_captions, order=lm_order, discount=lm_discount,
                               unk_cutoff=lm_unk_cutoff)
  else:
    notes.append("perplexity skipped: no language-model text. Pass lm_corpus=<Karpathy json or "
                 "text file> with training captions of the same kind as the captions analysed.")
  timings["lm_fit_s"] = time.perf_counter() - start
  provenance = dict(corpus.provenance)
  counts = (f"{len(corpus.references)} images, "
            f"{sum(len(r) for r in corpus.references.values())} captions")
  result = {
      "runs": {}, "reference": reference, "notes": notes, "warnings": [],
      "normalisation": dict(normalisation or {}),
      "corpus": {"references": provenance.get("references", f"given in code ({counts})"),
                 "lm": provenance.get("lm", "given in code" if model else "none"),
                 "reference_images": len(corpus.references),
                 "reference_captions": sum(len(r) for r in corpus.references.values()),
                 "skipped": provenance.get("skipped", []),
                 "lm_overlap": provenance.get("lm_overlap")},
      "lm": None if model is None else {
          "model": "interpolated Kneser-Ney (nltk KneserNeyInterpolated)", "order": lm_order,
          "discount": lm_discount, "unk_cutoff": lm_unk_cutoff, "vocab_size": model.size,
          "train_captions": len(corpus.train_captions)}}
  if provenance.get("tokenizer"):
    result["normalisation"].setdefault("tokenizer", provenance["tokenizer"])
  if provenance.get("lm_overlap"):
    result["warnings"].append(provenance["lm_overlap"])

  tagged_runs = {}
  for run in runs:
    start = time.perf_counter()
    ids = sorted(run.captions)
    coverage = _coverage(run, corpus)
    covered = [i for i in ids if corpus.references.get(i)]
    tagged = pos_lib.tag_captions([run.captions[i] for i in ids])
    tagged_runs[run.name] = dict(zip(ids, tagged))
    metrics = _run_metrics(run, corpus, covered, recompute_metrics, spice_dir=spice_dir,
                           include_meteor=include_meteor, ptb_tokenize=ptb_tokenize,
                           java_timeout_s=java_timeout_s)
    scored = covered if corpus.references else ids
    entry = {
        "source": run.source, "reward": run.reward, "num_captions": len(ids),
        "coverage": coverage,
        "scores": _run_scores(run, score_fns, scored, notes), "scores_over": len(scored),
        "metrics": metrics,
        "sentence": _sentence(model, tagged),
        "tokens": pos_lib.token_stats(tagged),
        "unigrams": pos_lib.top_unigrams(tagged, top_k),
        "patterns": patterns_lib.summarize(tagged),
        "examples": [run.captions[i] for i in ids[:5]],
    }
    result["runs"][run.name] = entry
    result["warnings"] += _warnings(run.name, entry, result["corpus"]["references"])
    notes += [f"{run.name}: {n}" for n in metrics.get("notes", []) if n != "from metrics.json"]
    timings[f"run/{run.name}_s"] = time.perf_counter() - start

  table2, arrows = metrics_lib.cross_scoring_table(
      {n: result["runs"][n] for n in names}, reference=reference)
  result["table2_arrows"] = arrows
  figures = {"unigrams": plots.plot_top_unigrams(
      {n: result["runs"][n]["unigrams"] for n in names}, os.path.join(out_dir, "unigrams.png"),
      {n: result["runs"][n]["num_captions"] for n in names})}

  probe_run = probe_run or reference
  if probe_run not in names:
    raise ValueError(f"analysis/report.py: probe_run {probe_run!r} is not among the runs "
                     f"{names}; pass one of them (or None for the reference run).")
  if probes and score_fns and corpus.references:
    start = time.perf_counter()
    base = next(r for r in runs if r.name == probe_run)
    ref_ids = sorted(corpus.references)
    tagged_refs = probes_lib.tag_references(corpus.references, ref_ids)
    nouns, others = probes_lib.word_pools(
        [t for ts in tagged_refs.values() for t in ts]
        + [t for tagged in tagged_runs.values() for t in tagged.values()])
    known = {i: c for i, c in base.captions.items() if i in corpus.references}
    try:
      result["probes"] = {
          "run": probe_run,
          "replacement": probes_lib.replacement_probe(
              known, corpus.references, score_fns, nouns, others,
              tagged=tagged_runs[probe_run], seed=seed),
          "templates": probes_lib.template_probe(known, score_fns,
                                                 tagged=tagged_runs[probe_run]),
          "visual_words": probes_lib.visual_words_probe(
              corpus.references, score_fns, k_values, probe_max_images, seed,
              tagged_references=tagged_refs),
      }
    except KeyError as error:  # references of images the scorers have no inputs for
      result.pop("probes", None)
      notes.append(f"probes skipped: a scorer cannot score the references' images ({error}); "
                   "pass references of the split the scorers score against.")
    else:
      figures["replacement"] = plots.plot_replacement(
          result["probes"]["replacement"], os.path.join(out_dir, "probe_replacement.png"))
      figures["visual_words"] = plots.plot_visual_words(
          result["probes"]["visual_words"], os.path.join(out_dir, "probe_visual_words.png"))
    timings["probes_s"] = time.perf_counter() - start
  elif probes:
    why = "no score functions given" if not score_fns else "no references"
    notes.append(f"probes skipped: {why} (they need scorers and the images' references)")
  result["figures"] = {k: os.path.basename(v) for k, v in figures.items()}
  result["timings"] = timings

  result = _clean(result)
  with open(os.path.join(out_dir, "analysis.json"), "w") as f:
    json.dump(result, f, indent=1, ensure_ascii=False)
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write(markdown.render(result, table2))
  return result


def summarize(result: Mapping, out_dir: str) -> dict:
  """A few headline numbers and where the files are: what a launcher prints on one line."""
  runs = {}
  for name, r in result["runs"].items():
    cider, sentence = r["metrics"].get("CIDEr"), r.get("sentence")
    runs[name] = {
        "captions": r["num_captions"],
        "with_references": r["coverage"]["with_references"],
        "CIDEr": None if cider is None else round(100 * cider, 1),
        "PPL": None if not sentence or sentence["perplexity"] is None
               else round(sentence["perplexity"], 1),
        "OOV%": None if not sentence else round(100 * sentence["oov_share"], 1)}
  return {"report": os.path.join(out_dir, "report.md"),
          "analysis_json": os.path.join(out_dir, "analysis.json"), "runs": runs,
          "warnings": len(result.get("warnings", [])), "notes": len(result.get("notes", []))}


def summary_line(summary: Mapping) -> str:
  """The summary as one line of text."""
  parts = []
  for name, r in summary["runs"].items():
    part = f"{name}: {r['captions']} captions ({r['with_references']} with references)"
    if r["CIDEr"] is not None:
      part += f", CIDEr {r['CIDEr']}"
    if r["PPL"] is not None:
      part += f", PPL {r['PPL']} (OOV {r['OOV%']}%)"
    parts.append(part)
  return (f"report {summary['report']}; " + "; ".join(parts)
          + f"; {summary['warnings']} warnings, {summary['notes']} notes")


def _read_kwargs(config) -> dict:
  return {"policy": config.get("bad_captions", "refuse"),
          "tokenizer": config.get("tokenizer", "auto"),
          "timeout_s": float(config.get("java_timeout_s", java.DEFAULT_TIMEOUT_S))}


def analyze_runs(run_dirs: Sequence[str], corpus: Corpus, score_fns: Mapping[str, ScoreFn],
                 out_dir: str, captions_files: Sequence[str] = (), *, policy: str = "refuse",
                 tokenizer: str = "auto", **kwargs) -> dict:
  """Analyses the runs of launch.py workdirs (plus optional captions files); see `analyze`."""
  runs = load_runs(run_dirs, captions_files, policy=policy, tokenizer=tokenizer)
  normalisation = {"tokenizer": text_lib.resolve_tokenizer(tokenizer), "bad_captions": policy}
  return analyze(runs, corpus, score_fns, out_dir, normalisation=normalisation, **kwargs)


def analyze_captions_file(path: str, corpus: Corpus, score_fns: Mapping[str, ScoreFn],
                          out_dir: str, probes: bool = False, *, policy: str = "refuse",
                          tokenizer: str = "auto", **kwargs) -> dict:
  """Analyses one captions file (probes off by default: they start from XE captions)."""
  run = load_captions(path, policy=policy, tokenizer=tokenizer)
  normalisation = {"tokenizer": text_lib.resolve_tokenizer(tokenizer), "bad_captions": policy}
  return analyze([run], corpus, score_fns, out_dir, probes=probes,
                 normalisation=normalisation, **kwargs)


def run_from_config(config, corpus: Corpus, score_fns: Mapping[str, ScoreFn]) -> dict:
  """What launch.py calls with `configs/analysis.py`'s config, the corpus and the scorers.

  Writes report.md, analysis.json (the full result) and the figures under the config's
  out_dir (default `<first workdir or captions file's folder>/analysis`) and returns the short
  summary of `summarize`, to be printed with `summary_line`.
  """
  if not config.runs and not config.captions:
    raise ValueError("analysis/report.py: the config names no runs and no captions files; "
                     "pass --config=configs/analysis.py:runs=<workdir>[,<workdir>] and/or "
                     "captions=<file>.")
  read = _read_kwargs(config)
  runs = load_runs(list(config.runs), list(config.captions), **read)
  out_dir = config.out_dir or os.path.join(
      runs[0].workdir or os.path.dirname(os.path.abspath(runs[0].source)), "analysis")
  result = analyze(
      runs, corpus, score_fns, out_dir, reference=config.reference,
      spice_dir=config.spice_dir or None, include_meteor=config.include_meteor,
      ptb_tokenize=config.ptb_tokenize, recompute_metrics=config.recompute_metrics,
      lm_order=config.lm.order, lm_discount=config.lm.discount,
      lm_unk_cutoff=config.lm.unk_cutoff, top_k=config.top_k, probes=config.probes.enabled,
      probe_run=config.probes.run or None, k_values=tuple(config.probes.k_values),
      probe_max_images=config.probes.max_images or None, seed=config.seed,
      java_timeout_s=read["timeout_s"],
      normalisation={"tokenizer": text_lib.resolve_tokenizer(read["tokenizer"]),
                     "bad_captions": read["policy"]})
  return summarize(result, out_dir)
