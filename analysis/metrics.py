"""Captioning metrics (coco-caption via pycocoevalcap) and the cross-scoring table (Table 2).

`caption_metrics` gives BLEU-1..4, METEOR, ROUGE-L, CIDEr and, when the Stanford CoreNLP 3.6.0
jars are available, SPICE, as fractions (pycocoevalcap's scale; tables show them x100 as the
paper does). The numbers equal plain pycocoevalcap's to every digit on the same tokens.

Captions must already be what coco-caption scores: lower-case PTB tokens separated by spaces.
Captions read from files are brought there by `analysis.text` before they get here; the
project's own captions are that by construction. `ptb_tokenize=True` runs coco-caption's PTB
tokenizer on both sides here as well (idempotent on normalised text). Whitespace is always
folded to single spaces first, so a caption with a newline scores the same as without it (the
n-gram metrics split on whitespace anyway; METEOR's line protocol would otherwise break).

The Java tools (PTB tokenizer, METEOR, SPICE) run through `analysis.java`, each bounded by
`java_timeout_s`. `cider` needs no Java and is fast enough to validate during training.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from analysis import java

METRIC_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")
# What the paper's Table 2 shows.
TABLE2_METRICS = ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")
CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
tokenize_ptb = java.tokenize_ptb


def _check(candidates: Mapping[int, str], references: Mapping[int, Sequence[str]]) -> None:
  if not candidates:
    raise ValueError("analysis/metrics.py: no candidate captions to evaluate.")
  missing = [i for i in candidates if not references.get(i)]
  if missing:
    raise ValueError(f"analysis/metrics.py: {len(missing)} candidate image ids have no "
                     f"references (first: {missing[:5]}); pass references for every image id "
                     "of the candidates (e.g. the test split's).")


def _gts_res(candidates, references, tokenize, timeout_s=java.DEFAULT_TIMEOUT_S):
  ids = sorted(candidates)
  res = {i: [java.fold(candidates[i])] for i in ids}
  gts = {i: [java.fold(r) for r in references[i]] for i in ids}
  if tokenize:
    flat = [c for i in ids for c in gts[i]]
    tokens = java.tokenize_ptb(flat + [res[i][0] for i in ids], timeout_s)
    it = iter(tokens)
    gts = {i: [next(it) for _ in gts[i]] for i in ids}
    res = {i: [next(it)] for i in ids}
  return gts, res


def cider(candidates: Mapping[int, str], references: Mapping[int, Sequence[str]],
          per_image: bool = False):
  """coco-caption CIDEr-D (no Java): the mean, or (mean, [N] per-image scores sorted by id).

  Document frequencies come from the references of the evaluated images, as in coco-caption.
  """
  _check(candidates, references)
  gts, res = _gts_res(candidates, references, tokenize=False)
  score, scores = Cider().compute_score(gts, res)
  return (float(score), np.asarray(scores, np.float64)) if per_image else float(score)


def find_corenlp(spice_dir: str | None) -> tuple[list[str] | None, str]:
  """The CoreNLP 3.6.0 jars SPICE needs, from `spice_dir` or `spice_dir/lib`, or a reason."""
  if not spice_dir:
    return None, "no spice_dir given"
  for folder in (spice_dir, os.path.join(spice_dir, "lib")):
    jars = [os.path.join(folder, j) for j in CORENLP_JARS]
    if all(os.path.isfile(j) for j in jars):
      return jars, ""
  return None, f"{' and '.join(CORENLP_JARS)} not found in {spice_dir} (or its lib/)"


def caption_metrics(candidates: Mapping[int, str], references: Mapping[int, Sequence[str]],
                    spice_dir: str | None = None, include_meteor: bool = True,
                    ptb_tokenize: bool = False,
                    java_timeout_s: float = java.DEFAULT_TIMEOUT_S) -> dict:
  """coco-caption metrics of one caption per image.

  Args:
    candidates: image id -> caption (lower-case PTB tokens separated by spaces).
    references: image id -> reference captions; must cover every candidate id.
    spice_dir: folder with stanford-corenlp-3.6.0.jar and stanford-corenlp-3.6.0-models.jar
      (as pycocoevalcap's get_stanford_models would put in spice/lib); SPICE is skipped without.
    include_meteor: METEOR costs a ~10-40 s Java start (once per process).
    ptb_tokenize: run coco-caption's PTB tokenizer on both sides first (Java).
    java_timeout_s: the longest any one Java call (PTB, METEOR, SPICE) may take; past it the
      tool is killed and a `analysis.java.JavaToolError` names it.

  Returns:
    {"BLEU-1": f, ..., "BLEU-4": f, "METEOR": f or None, "ROUGE-L": f, "CIDEr": f,
     "SPICE": f or None, "num_captions": n, "notes": [one line per metric skipped, and why]}.
  """
  _check(candidates, references)
  gts, res = _gts_res(candidates, references, ptb_tokenize, java_timeout_s)
  out, notes = {}, []
  bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
  for n, value in enumerate(bleu, 1):
    out[f"BLEU-{n}"] = float(value)
  out["METEOR"] = None
  if not include_meteor:
    notes.append("METEOR skipped: include_meteor=False")
  elif not java.have_java():
    notes.append("METEOR unavailable: no `java` on PATH (install a JRE, e.g. openjdk-17)")
  else:
    out["METEOR"] = float(java.meteor(gts, res, java_timeout_s)[0])
  out["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
  out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
  out["SPICE"] = None
  jars, why = find_corenlp(spice_dir)
  if jars is None:
    notes.append(f"SPICE unavailable: {why}; put the two CoreNLP 3.6.0 jars there and pass "
                 "spice_dir")
  elif not java.have_java():
    notes.append("SPICE unavailable: no `java` on PATH")
  else:
    try:
      out["SPICE"] = java.spice(gts, res, jars, java_timeout_s)
    except (java.JavaToolError, OSError, ValueError, KeyError) as error:
      notes.append(f"SPICE failed: {java.fold(str(error))[-400:]}")
  out["num_captions"] = len(res)
  out["notes"] = notes
  return out


def cross_scoring_table(runs: Mapping[str, Mapping], reference: str = "XE",
                        scorers: Sequence[str] | None = None,
                        metrics: Sequence[str] = TABLE2_METRICS) -> tuple[str, dict]:
  """Table 2: runs as rows, mean scorer scores then captioning metrics (x100) as columns.

  Args:
    runs: run name -> {"scores": {scorer: mean score}, "metrics": {metric: fraction or None}}.
    reference: the row every other run is compared with (the cross-entropy captioner).
    scorers: the score columns, in order; default: every scorer of any run, sorted.
    metrics: the metric columns.

  Returns:
    (markdown table, arrows) where arrows[run][scorer] is "↑" when the run's mean score under
    that scorer is above the reference run's, "↓" when below, "" when equal or unknown.
  """
  if reference not in runs:
    raise ValueError(f"analysis/metrics.py: reference run {reference!r} is not among the runs "
                     f"{sorted(runs)}; pass reference= one of them.")
  if scorers is None:
    scorers = sorted({s for r in runs.values() for s in r.get("scores", {})})
  base = runs[reference].get("scores", {})
  arrows = {}
  for name, run in runs.items():
    arrows[name] = {}
    for s in scorers:
      mine, theirs = run.get("scores", {}).get(s), base.get(s)
      arrow = ""
      if name != reference and mine is not None and theirs is not None:
        arrow = "↑" if mine > theirs else "↓" if mine < theirs else ""
      arrows[name][s] = arrow

  def cell(value, scale=1.0):
    return "–" if value is None else f"{value * scale:.1f}"

  header = ["run"] + list(scorers) + list(metrics)
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  order = [reference] + [n for n in runs if n != reference]
  for name in order:
    run = runs[name]
    row = [name]
    row += [cell(run.get("scores", {}).get(s)) + arrows[name][s] for s in scorers]
    row += [cell(run.get("metrics", {}).get(m), 100.0) for m in metrics]
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines), arrows

