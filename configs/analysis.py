r"""The paper's analysis (Tables 2, 4, 5, 7; Figures 2, 3, 4) of finished runs.

Command:
  python launch.py --config=configs/analysis.py:runs=workdir/scst_lxmert,workdir/scst_clip
  python launch.py --config=configs/analysis.py:runs=workdir/scst_lxmert,captions=other.json,out_dir=/tmp/ana
  python launch.py --config=configs/analysis.py:runs=workdir/scst_clip,no_meteor,no_probes

Args (comma-separated; a bare path after `runs=` or `captions=` adds another one):
  runs=<dir>[,<dir>...]     launch.py workdirs (their xe/ and scst/ eval captions); the first
                            one's test references and training captions are the corpus;
  captions=<file>[,...]     plain caption files ([{"image_id", "caption"}]) of other systems;
  scorers=<name>[,...]      the scorers that score every run (default: those the runs used);
  out_dir=<dir>             default: <first workdir>/analysis;
  spice_dir=<dir>           folder with the two Stanford CoreNLP 3.6.0 jars (else no SPICE);
  seed=<int>                the probes' random seed (default 0);
  no_meteor, no_probes      skip METEOR (its Java start takes ~10-40 s) / the section 5 probes;
  ptb, recompute_metrics    PTB-tokenize captions first / ignore stored metrics.json.

Produces, in out_dir: report.md (every table, markdown), analysis.json (all numbers),
unigrams.png, probe_replacement.png, probe_visual_words.png.

Takes: on COCO's 5,000 test images with 6 runs and 5 scorers, on CPU, about 3-5 min outside
the scorers: the language model of the 566k training captions (~30 s), spaCy tagging (~4 s per
5,000 captions; the 25,000 references once for the probes, ~20 s), METEOR (~10-40 s start plus
~10 s per run when a run has no metrics.json); the probes score about 11 x 5,000 captions per
scorer (that part is the scorers' speed). The synthetic world takes seconds.
"""

from __future__ import annotations

import ml_collections

from configs import common

_LISTS = ("runs", "captions", "scorers")
_FLAGS = {"no_meteor": ("include_meteor", False), "no_probes": ("probes.enabled", False),
          "ptb": ("ptb_tokenize", True), "recompute_metrics": ("recompute_metrics", True)}
_VALUES = ("out_dir", "spice_dir", "seed")


def parse_arg(arg: str | None) -> dict:
  """`runs=a,b,captions=c,seed=1,no_meteor` -> {"runs": [a, b], "captions": [c], ...}."""
  out = {name: [] for name in _LISTS}
  current = None
  for token in filter(None, (t.strip() for t in (arg or "").split(","))):
    if "=" in token:
      key, value = token.split("=", 1)
      if key not in _LISTS + _VALUES:
        raise ValueError(f"configs/analysis.py: unknown argument {key!r}; known: "
                         f"{', '.join(_LISTS + _VALUES + tuple(_FLAGS))}.")
      current = key if key in _LISTS else None
      if current:
        out[key].append(value)
      else:
        out[key] = value
    elif token in _FLAGS:
      out[token] = True
      current = None
    elif current:
      out[current].append(token)
    else:
      raise ValueError(f"configs/analysis.py: argument {token!r} is neither key=value, a flag "
                       f"({', '.join(_FLAGS)}) nor a path after runs=/captions=; see the "
                       "docstring for the syntax.")
  return out


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg)
  config = common.analysis_block()
  config.entry = "analysis"
  config.runs = tuple(args["runs"])
  config.captions = tuple(args["captions"])
  # Names of the scorers to build score functions for; empty: the ones the runs were scored by.
  config.scorers = tuple(args["scorers"])
  config.out_dir = args.get("out_dir", "")
  config.spice_dir = args.get("spice_dir", "")
  config.seed = int(args.get("seed", 0))
  config.multihost = False
  for flag, (field, value) in _FLAGS.items():
    if args.get(flag):
      parent = config
      *path, leaf = field.split(".")
      for name in path:
        parent = parent[name]
      parent[leaf] = value
  return config
