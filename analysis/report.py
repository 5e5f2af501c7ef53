"""The whole analysis of a set of runs: numbers, tables (report.md), plots and analysis.json.

Entry points:
  analyze_runs(run_dirs, corpus, score_fns, out_dir, ...)   workdirs of launch.py
  analyze_captions_file(path, corpus, score_fns, out_dir)    captions of any other system
  run_from_config(config, corpus, score_fns)                 what launch.py calls
All three return the dict written to `out_dir/analysis.json`.

Scores: a scorer's mean for a run comes from the scores stored next to its captions when every
caption has one, else from `score_fns[scorer]`. Metrics: from the run's metrics.json when
present (unless `recompute_metrics`), else computed with `analysis.metrics.caption_metrics`.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence

import numpy as np

from analysis import lm as lm_lib
from analysis import metrics as metrics_lib
from analysis import patterns as patterns_lib
from analysis import plots
from analysis import pos as pos_lib
from analysis import probes as probes_lib
from analysis.runs import Corpus, Run, load_captions, load_runs

ScoreFn = probes_lib.ScoreFn


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


def _run_scores(run: Run, score_fns: Mapping[str, ScoreFn], ids: list[int]) -> dict:
  """scorer -> mean score of the run's captions (stored scores first, see module docstring)."""
  out = {}
  for name in sorted(set(run.stored_scores) | set(score_fns)):
    stored = run.stored_scores.get(name, {})
    if all(i in stored for i in ids):
      out[name] = float(np.mean([stored[i] for i in ids]))
    elif name in score_fns:
      out[name] = float(np.mean(probes_lib.score_all(score_fns[name],
                                                     [run.captions[i] for i in ids], ids)))
  return out


def _run_metrics(run: Run, corpus: Corpus, recompute: bool, **kwargs) -> dict:
  stored = run.metrics or {}
  if stored and not recompute:
    out = {m: stored.get(m) for m in metrics_lib.METRIC_NAMES}
    notes = list(stored.get("notes", []))
    if out["SPICE"] is None and not any(n.startswith("SPICE") for n in notes):
      notes.append("SPICE unavailable: null in metrics.json")
    out["notes"] = ["from metrics.json"] + notes
    return out
  known = {i: c for i, c in run.captions.items() if i in corpus.references}
  if not known:
    return {m: None for m in metrics_lib.METRIC_NAMES} | {
        "notes": [f"no references for the image ids of {run.name}; metrics skipped"]}
  return metrics_lib.caption_metrics(known, corpus.references, **kwargs)


def analyze(runs: Sequence[Run], corpus: Corpus, score_fns: Mapping[str, ScoreFn],
            out_dir: str, *, reference: str = "XE", spice_dir: str | None = None,
            include_meteor: bool = True, ptb_tokenize: bool = False,
            recompute_metrics: bool = False, lm_order: int = 3, lm_discount: float = 0.75,
            lm_unk_cutoff: int = 2, top_k: int = 10, probes: bool = True,
            probe_run: str | None = None, k_values: Sequence[int] = (3, 4, 5, 6, 7),
            probe_max_images: int | None = None, seed: int = 0) -> dict:
  """Analyses runs and writes report.md, analysis.json and the PNGs into out_dir.

  Args:
    runs: the runs (see `analysis.runs`).
    corpus: training captions (language model) and references (metrics, probes).
    score_fns: scorer name -> (captions, image_ids) -> [N] scores on the paper's scale.
    out_dir: where the outputs go (created).
    reference: the row of Table 2 others are compared with; the first run if absent.
    spice_dir, include_meteor, ptb_tokenize: see `analysis.metrics.caption_metrics`.
    recompute_metrics: ignore stored metrics.json files.
    lm_order, lm_discount, lm_unk_cutoff: the Kneser-Ney model (see `analysis.lm`).
    top_k: unigrams per run (Figure 4).
    probes: run the section 5 probes (needs score_fns).
    probe_run: whose captions the probes start from; default the reference run.
    k_values: numbers of visual words of Figure 3.
    probe_max_images: at most this many images in the Figure 3 probe (None: all).
    seed: the random seed of the probes.
  """
  if not runs:
    raise ValueError("analysis/report.py: no runs to analyse.")
  os.makedirs(out_dir, exist_ok=True)
  names = [r.name for r in runs]
  if reference not in names:
    reference = names[0]
  timings = {}

  start = time.perf_counter()
  model = lm_lib.KneserNeyLM(corpus.train_captions, order=lm_order, discount=lm_discount,
                             unk_cutoff=lm_unk_cutoff)
  timings["lm_fit_s"] = time.perf_counter() - start

  result = {"runs": {}, "reference": reference, "notes": [],
            "lm": {"model": "interpolated Kneser-Ney (nltk KneserNeyInterpolated)",
                   "order": lm_order, "discount": lm_discount, "unk_cutoff": lm_unk_cutoff,
                   "vocab_size": model.size, "train_captions": len(corpus.train_captions)}}
  tagged_runs = {}
  for run in runs:
    ids = sorted(run.captions)
    start = time.perf_counter()
    tagged = pos_lib.tag_captions([run.captions[i] for i in ids])
    tagged_runs[run.name] = dict(zip(ids, tagged))
    ppl = model.perplexity([t.words for t in tagged])
    metrics = _run_metrics(run, corpus, recompute_metrics, spice_dir=spice_dir,
                           include_meteor=include_meteor, ptb_tokenize=ptb_tokenize)
    result["runs"][run.name] = {
        "source": run.source, "reward": run.reward, "num_captions": len(ids),
        "scores": _run_scores(run, score_fns, ids),
        "metrics": metrics,
        "sentence": {"perplexity": ppl.perplexity,
                     "mean_caption_perplexity": float(np.nanmean(ppl.per_caption)),
                     "num_events": ppl.num_events, "zero_prob_events": ppl.zero_prob_events,
                     "oov_words": ppl.oov_words},
        "tokens": pos_lib.token_stats(tagged),
        "unigrams": pos_lib.top_unigrams(tagged, top_k),
        "patterns": patterns_lib.summarize(tagged),
        "examples": [run.captions[i] for i in ids[:5]],
    }
    result["notes"] += [f"{run.name}: {n}" for n in metrics.get("notes", [])
                        if n != "from metrics.json"]
    timings[f"run/{run.name}_s"] = time.perf_counter() - start

  table2, arrows = metrics_lib.cross_scoring_table(
      {n: result["runs"][n] for n in names}, reference=reference)
  result["table2_arrows"] = arrows
  figures = {"unigrams": plots.plot_top_unigrams(
      {n: result["runs"][n]["unigrams"] for n in names}, os.path.join(out_dir, "unigrams.png"))}

  probe_run = probe_run or reference
  if probe_run not in names:
    raise ValueError(f"analysis/report.py: probe_run {probe_run!r} is not among the runs "
                     f"{names}; pass one of them (or None for the reference run).")
  if probes and score_fns:
    start = time.perf_counter()
    base = next(r for r in runs if r.name == probe_run)
    ref_ids = sorted(corpus.references)
    tagged_refs = probes_lib.tag_references(corpus.references, ref_ids)
    nouns, others = probes_lib.word_pools(
        [t for ts in tagged_refs.values() for t in ts]
        + [t for tagged in tagged_runs.values() for t in tagged.values()])
    known = {i: c for i, c in base.captions.items() if i in corpus.references}
    result["probes"] = {
        "run": probe_run,
        "replacement": probes_lib.replacement_probe(
            known, corpus.references, score_fns, nouns, others,
            tagged=tagged_runs[probe_run], seed=seed),
        "templates": probes_lib.template_probe(known, score_fns, tagged=tagged_runs[probe_run]),
        "visual_words": probes_lib.visual_words_probe(
            corpus.references, score_fns, k_values, probe_max_images, seed,
            tagged_references=tagged_refs),
    }
    figures["replacement"] = plots.plot_replacement(
        result["probes"]["replacement"], os.path.join(out_dir, "probe_replacement.png"))
    figures["visual_words"] = plots.plot_visual_words(
        result["probes"]["visual_words"], os.path.join(out_dir, "probe_visual_words.png"))
    timings["probes_s"] = time.perf_counter() - start
  elif probes:
    result["notes"].append("probes skipped: no score functions given")
  result["figures"] = {k: os.path.basename(v) for k, v in figures.items()}
  result["timings"] = timings

  result = _clean(result)
  with open(os.path.join(out_dir, "analysis.json"), "w") as f:
    json.dump(result, f, indent=1, ensure_ascii=False)
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write(render_markdown(result, table2))
  return result


def _fmt(value, digits: int = 1) -> str:
  return "–" if value is None else f"{value:.{digits}f}"


def _ratio(entry: Mapping) -> str:
  return f"{100 * entry['ratio']:.1f}%"


def render_markdown(result: Mapping, table2: str) -> str:
  """report.md from the analysis dict (see `analyze`) and the Table 2 markdown."""
  runs = result["runs"]
  lm = result["lm"]
  out = ["# Caption analysis", "",
         "Runs: " + ", ".join(f"`{n}` ({r['num_captions']} captions)" for n, r in runs.items()),
         "", "## Scores and captioning metrics (Table 2)", "",
         f"Mean match score of each run's captions under every scorer (paper's scale: 100 x ITM "
         f"probability, CLIP 100 x cosine) and coco-caption metrics x100. ↑/↓: above/below "
         f"`{result['reference']}` under that scorer.", "", table2, "",
         "## Sentence and token statistics (Table 4)", "",
         f"PPL: corpus perplexity under a {lm['order']}-gram interpolated Kneser-Ney LM (nltk "
         f"KneserNeyInterpolated, discount {lm['discount']}, words seen < {lm['unk_cutoff']} "
         f"times in training as <UNK>) of {lm['train_captions']} training captions; one </s> "
         "per caption. Nouns: tokens tagged NOUN/PROPN by spaCy.", "",
         "| run | PPL | Avg. length | Nouns | Unique nouns | OOV words |",
         "|---|---|---|---|---|---|"]
  for name, r in runs.items():
    s, t = r["sentence"], r["tokens"]
    out.append(f"| {name} | {_fmt(s['perplexity'])} | {_fmt(t['avg_length'])} | "
               f"{_fmt(t['nouns'])} | {_fmt(t['unique_nouns'])} | {s['oov_words']} |")
  out += ["", "## Prefixes and sentence patterns (Table 5)", "",
          "NOUN.P: noun phrase (DET* ADJ* NOUN+); IMAGE.P: one with the noun \"image\"; REL: "
          "preposition or verb; (X)* one or more, (X)? optional (see `analysis/patterns.py`).", "",
          "| run | top prefix | ratio | example | top literal prefix | ratio | top pattern | "
          "ratio | example |", "|---|---|---|---|---|---|---|---|---|"]
  for name, r in runs.items():
    p = r["patterns"]
    pre, lit, pat = p["prefix"][0], p["literal_prefix"][0], p["pattern"][0]
    out.append(f"| {name} | `{pre['value']}` | {_ratio(pre)} | {pre['example']} | "
               f"{lit['value']} | {_ratio(lit)} | `{pat['value']}` | {_ratio(pat)} | "
               f"{pat['example']} |")
  out += ["", "## Top unigrams (Figure 4)", "", f"![top unigrams]({result['figures']['unigrams']})",
          ""]
  for name, r in runs.items():
    words = ", ".join(f"{u['word']} ({100 * u['share']:.1f}%, {u['pos']})" for u in r["unigrams"])
    out.append(f"- **{name}**: {words}")
  if "probes" in result:
    out += _render_probes(result)
  out += ["", "## Per run", ""]
  for name, r in runs.items():
    out += [f"### {name}", "", f"Source: `{r['source']}`" + (f"; reward: {r['reward']}"
                                                               if r["reward"] else ""), "",
            "Examples: " + "; ".join(f"\"{c}\"" for c in r["examples"]), "",
            "| kind | value | ratio | example |", "|---|---|---|---|"]
    for kind in ("prefix", "literal_prefix", "pattern"):
      for e in r["patterns"][kind]:
        out.append(f"| {kind} | `{e['value']}` | {_ratio(e)} | {e['example']} |")
    out.append("")
  if result["notes"]:
    out += ["## Notes", ""] + [f"- {n}" for n in result["notes"]]
  return "\n".join(out) + "\n"


def _render_probes(result: Mapping) -> list[str]:
  p = result["probes"]
  rep, tpl, vis = p["replacement"], p["templates"], p["visual_words"]
  out = ["", f"## Probes (section 5), from the captions of `{p['run']}`", "",
         f"### Replacing visual words vs other words (Figure 2; {rep['num_captions']} captions)",
         "", f"![replacement]({result['figures']['replacement']})", "",
         "| scorer | XE captions | other words replaced | nouns replaced |", "|---|---|---|---|"]
  for name, s in rep["scores"].items():
    out.append(f"| {name} | {_fmt(s['original'])} | {_fmt(s['replace_others'])} | "
               f"{_fmt(s['replace_nouns'])} |")
  if rep["examples"]:
    e = rep["examples"][0]
    out += ["", f"Example: \"{e['original']}\" / \"{e['replace_others']}\" / "
                f"\"{e['replace_nouns']}\""]
  out += ["", f"### Template reconstructions (Table 7; {tpl['num_captions']} captions)", "",
          "| scorer | CE | Recons. | template |", "|---|---|---|---|"]
  for name, s in tpl["table"].items():
    out.append(f"| {name} | {_fmt(s['ce'])} | {_fmt(s['recons'])} | `{s['template']}` |")
  scorers = list(tpl["table"])
  out += ["", "Every template under every scorer (rows: whose template):", "",
          "| template | " + " | ".join(scorers) + " |", "|---|" + "---|" * len(scorers)]
  for owner, row in tpl["matrix"].items():
    out.append(f"| {owner} | " + " | ".join(_fmt(row.get(s)) for s in scorers) + " |")
  out += ["", f"### Score vs number of visual words (Figure 3; {vis['num_images']} images)", "",
          f"![visual words]({result['figures']['visual_words']})", "",
          "| scorer | " + " | ".join(f"k={k}" for k in vis["k"]) + " |",
          "|---|" + "---|" * len(vis["k"])]
  for name, values in vis["scores"].items():
    out.append(f"| {name} | " + " | ".join(_fmt(v) for v in values) + " |")
  return out


def analyze_runs(run_dirs: Sequence[str], corpus: Corpus, score_fns: Mapping[str, ScoreFn],
                 out_dir: str, captions_files: Sequence[str] = (), **kwargs) -> dict:
  """Analyses the runs of launch.py workdirs (plus optional captions files); see `analyze`."""
  return analyze(load_runs(run_dirs, captions_files), corpus, score_fns, out_dir, **kwargs)


def analyze_captions_file(path: str, corpus: Corpus, score_fns: Mapping[str, ScoreFn],
                          out_dir: str, probes: bool = False, **kwargs) -> dict:
  """Analyses one captions file (probes off by default: they start from XE captions)."""
  return analyze([load_captions(path)], corpus, score_fns, out_dir, probes=probes, **kwargs)


def run_from_config(config, corpus: Corpus, score_fns: Mapping[str, ScoreFn]) -> dict:
  """What launch.py calls with `configs/analysis.py`'s config, the corpus and the scorers."""
  if not config.runs and not config.captions:
    raise ValueError("analysis/report.py: the config names no runs and no captions files; "
                     "pass --config=configs/analysis.py:runs=<workdir>[,<workdir>] and/or "
                     "captions=<file>.")
  runs = load_runs(list(config.runs), list(config.captions))
  out_dir = config.out_dir or os.path.join(
      runs[0].workdir or os.path.dirname(runs[0].source), "analysis")
  return analyze(
      runs, corpus, score_fns, out_dir, reference=config.reference,
      spice_dir=config.spice_dir or None, include_meteor=config.include_meteor,
      ptb_tokenize=config.ptb_tokenize, recompute_metrics=config.recompute_metrics,
      lm_order=config.lm.order, lm_discount=config.lm.discount,
      lm_unk_cutoff=config.lm.unk_cutoff, top_k=config.top_k, probes=config.probes.enabled,
      probe_run=config.probes.run or None, k_values=tuple(config.probes.k_values),
      probe_max_images=config.probes.max_images or None, seed=config.seed)
