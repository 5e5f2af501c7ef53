"""Captioning metrics (coco-caption via pycocoevalcap) and the cross-scoring table (Table 2).

`caption_metrics` gives BLEU-1..4, METEOR, ROUGE-L, CIDEr and, when the Stanford CoreNLP 3.6.0
jars are available, SPICE, as fractions (pycocoevalcap's scale; tables show them x100 as the
paper does). Captions are lower-case space-separated words already, so by default they are only
split on spaces; `ptb_tokenize=True` runs coco-caption's PTB tokenizer (Java) first.

pycocoevalcap's own PTB tokenizer and SPICE wrappers write temporary files inside its package
folder and SPICE downloads CoreNLP on first use; we call those jars ourselves with temporary
files in the system temp folder and never download anything. METEOR's Java process takes ~10 s
to start, so it is started once per Python process and reused. `cider` needs no Java and is
fast enough to validate during training.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

METRIC_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")
# What the paper's Table 2 shows.
TABLE2_METRICS = ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")
CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
_PTB_PUNCTUATION = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?",
                              "!", ",", ":", "-", "--", "...", ";"])


def _package_dir(sub: str) -> str:
  """A folder of pycocoevalcap (a namespace package: no __file__), where its jars are."""
  import pycocoevalcap  # pylint: disable=g-import-not-at-top
  return os.path.join(list(pycocoevalcap.__path__)[0], sub)


def _check(candidates: Mapping[int, str], references: Mapping[int, Sequence[str]]) -> None:
  if not candidates:
    raise ValueError("analysis/metrics.py: no candidate captions to evaluate.")
  missing = [i for i in candidates if not references.get(i)]
  if missing:
    raise ValueError(f"analysis/metrics.py: {len(missing)} candidate image ids have no "
                     f"references (first: {missing[:5]}); pass references for every image id "
                     "of the candidates (e.g. the test split's).")


def tokenize_ptb(texts: Sequence[str]) -> list[str]:
  """coco-caption's tokenization: Stanford PTBTokenizer (lower-cased), punctuation removed."""
  jar = os.path.join(_package_dir("tokenizer"), "stanford-corenlp-3.4.1.jar")
  with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
    f.write("\n".join(t.replace("\n", " ") for t in texts))
    path = f.name
  try:
    out = subprocess.run(["java", "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer",
                          "-preserveLines", "-lowerCase", path], check=True,
                         capture_output=True).stdout.decode()
  finally:
    os.remove(path)
  lines = out.split("\n")[:len(texts)]
  return [" ".join(w for w in line.rstrip().split(" ") if w not in _PTB_PUNCTUATION)
          for line in lines]


def _gts_res(candidates, references, tokenize):
  ids = sorted(candidates)
  res = {i: [candidates[i]] for i in ids}
  gts = {i: list(references[i]) for i in ids}
  if tokenize:
    flat = [c for i in ids for c in gts[i]]
    tokens = tokenize_ptb(flat + [res[i][0] for i in ids])
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


@functools.lru_cache(maxsize=1)
def _meteor():
  from pycocoevalcap.meteor.meteor import Meteor  # pylint: disable=g-import-not-at-top
  return Meteor()


def find_corenlp(spice_dir: str | None) -> tuple[list[str] | None, str]:
  """The CoreNLP 3.6.0 jars SPICE needs, from `spice_dir` or `spice_dir/lib`, or a reason."""
  if not spice_dir:
    return None, "no spice_dir given"
  for folder in (spice_dir, os.path.join(spice_dir, "lib")):
    jars = [os.path.join(folder, j) for j in CORENLP_JARS]
    if all(os.path.isfile(j) for j in jars):
      return jars, ""
  return None, f"{' and '.join(CORENLP_JARS)} not found in {spice_dir} (or its lib/)"


def spice(gts: Mapping[int, list[str]], res: Mapping[int, list[str]], jars: list[str]) -> float:
  """Mean SPICE F-score through pycocoevalcap's spice-1.0.jar (needs Java and ~8 GB)."""
  spice_dir = _package_dir("spice")
  classpath = os.pathsep.join([os.path.join(spice_dir, "spice-1.0.jar"),
                               os.path.join(spice_dir, "lib", "*")] + jars)
  with tempfile.TemporaryDirectory() as tmp:
    in_file, out_file = os.path.join(tmp, "in.json"), os.path.join(tmp, "out.json")
    with open(in_file, "w") as f:
      json.dump([{"image_id": i, "test": res[i][0], "refs": gts[i]} for i in sorted(res)], f)
    # No -cache: its LMDB store needs native libraries and only speeds up repeated runs.
    subprocess.run(["java", "-Xmx8G", "-cp", classpath, "edu.anu.spice.SpiceScorer", in_file,
                    "-out", out_file, "-subset", "-silent"], check=True, capture_output=True)
    with open(out_file) as f:
      results = json.load(f)
  values = [float(r["scores"]["All"]["f"]) for r in results]
  return float(np.nanmean(values))


def caption_metrics(candidates: Mapping[int, str], references: Mapping[int, Sequence[str]],
                    spice_dir: str | None = None, include_meteor: bool = True,
                    ptb_tokenize: bool = False) -> dict:
  """coco-caption metrics of one caption per image.

  Args:
    candidates: image id -> caption (lower-case words separated by spaces).
    references: image id -> reference captions; must cover every candidate id.
    spice_dir: folder with stanford-corenlp-3.6.0.jar and stanford-corenlp-3.6.0-models.jar
      (as pycocoevalcap's get_stanford_models would put in spice/lib); SPICE is skipped without.
    include_meteor: METEOR costs a ~10 s Java start (once per process).
    ptb_tokenize: run coco-caption's PTB tokenizer on both sides first (Java).

  Returns:
    {"BLEU-1": f, ..., "BLEU-4": f, "METEOR": f or None, "ROUGE-L": f, "CIDEr": f,
     "SPICE": f or None, "notes": [one line per metric that was skipped, and why]}.
  """
  _check(candidates, references)
  gts, res = _gts_res(candidates, references, ptb_tokenize)
  out, notes = {}, []
  bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
  for n, value in enumerate(bleu, 1):
    out[f"BLEU-{n}"] = float(value)
  out["METEOR"] = None
  if not include_meteor:
    notes.append("METEOR skipped: include_meteor=False")
  elif shutil.which("java") is None:
    notes.append("METEOR unavailable: no `java` on PATH (install a JRE, e.g. openjdk-17)")
  else:
    out["METEOR"] = float(_meteor().compute_score(gts, res)[0])
  out["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
  out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
  out["SPICE"] = None
  jars, why = find_corenlp(spice_dir)
  if jars is None:
    notes.append(f"SPICE unavailable: {why}; put the two CoreNLP 3.6.0 jars there and pass "
                 "spice_dir")
  elif shutil.which("java") is None:
    notes.append("SPICE unavailable: no `java` on PATH")
  else:
    try:
      out["SPICE"] = spice(gts, res, jars)
    except (subprocess.CalledProcessError, OSError, ValueError, KeyError) as error:
      detail = getattr(error, "stderr", b"") or b""
      notes.append(f"SPICE failed: {error} {detail.decode(errors='replace')[-300:]}".strip())
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

