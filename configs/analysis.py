r"""The paper's analysis (Tables 2, 4, 5, 7; Figures 2, 3, 4) of finished runs or anyone's captions.

Command:
  python launch.py --config=configs/analysis.py:runs=workdir/scst_lxmert,workdir/scst_clip
  python launch.py --config=configs/analysis.py:captions=other_system.json,out_dir=/tmp/ana,\
      references=dataset_coco.json,lm_corpus=dataset_coco.json
  python launch.py --config=configs/analysis.py:runs=workdir/scst_clip,no_meteor,no_probes

Args (comma-separated; a bare path after `runs=` or `captions=` adds another one):
  runs=<dir>[,<dir>...]     launch.py workdirs (their xe/ and scst/ eval captions); the first
                            one's data (test references, training captions) and scorers are
                            used unless references=/lm_corpus= name files;
  captions=<file>[,...]     plain caption files ([{"image_id", "caption"}]) of other systems;
                            with runs=workdir/scst_lxmert they are compared with the synthetic
                            world's references and scored by its scorers;
  scorers=<name>[,...]      the scorers that score every run (default: those the runs used);
  out_dir=<dir>             default: <first workdir, or the captions file's folder>/analysis;
  references=<file>         a Karpathy json (its references_split images) or a COCO captions
                            json (captions_val2014.json): the references (default: the runs'
                            dataset; none for captions files alone: no metrics, no probes);
  references_split=<name>   the Karpathy split of the references (default test);
  lm_corpus=<file>          the language model's training text: a Karpathy json (its train and
                            restval captions), a COCO captions json or a text file, one caption
                            a line (default: the runs' dataset; none for captions files alone:
                            perplexity skipped with a note);
  bad_captions=refuse|skip  a null or empty caption stops the analysis naming its image id
                            (refuse, default) or is left out and listed in analysis.json (skip);
  tokenizer=auto|ptb|lower  how captions from files are tokenized (analysis/text.py; auto: PTB
                            through Java when present, else a Java-free approximation);
  java_timeout_s=<float>    the longest one Java call (PTB, METEOR, SPICE) may take (300);
  spice_dir=<dir>           folder with the two Stanford CoreNLP 3.6.0 jars (else no SPICE);
  seed=<int>                the probes' random seed (default 0);
  no_meteor, no_probes      skip METEOR (its Java start takes ~10-40 s) / the section 5 probes;
  ptb, recompute_metrics    PTB-tokenize run captions first / ignore stored metrics.json.

Produces, in out_dir and nowhere else: report.md (every table with its coverage and legend),
analysis.json (all numbers, the captions left out and those without references),
unigrams.png, probe_replacement.png, probe_visual_words.png, summary.json; prints the report's
path and a one-line summary. Nothing is generated: no synthetic world, no scorer training.

Takes: on COCO's 5,000 test images with 6 runs and 5 scorers, on CPU, about 3-5 min outside
the scorers: the language model of the 566k training captions (~30 s), spaCy tagging (~4 s per
5,000 captions; the 25,000 references once for the probes, ~20 s), METEOR (~10-40 s start plus
~10 s per run when a run has no metrics.json); the probes score about 11 x 5,000 captions per
scorer (that part is the scorers' speed). Captions read from files are PTB-tokenized first
(~2 s per 25,000 captions: ~45 s for a Karpathy json's 566k training captions as lm_corpus).
"""

from __future__ import annotations

import ml_collections

from configs import common

_LISTS = ("runs", "captions", "scorers")
_FLAGS = {"no_meteor": ("include_meteor", False), "no_probes": ("probes.enabled", False),
          "ptb": ("ptb_tokenize", True), "recompute_metrics": ("recompute_metrics", True)}
_VALUES = ("out_dir", "spice_dir", "seed", "references", "references_split", "lm_corpus",
           "bad_captions", "tokenizer", "java_timeout_s")


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
  # Text from files (analysis/corpus.py); "": from the runs' dataset, or none at all.
  config.references = args.get("references", "")
  config.references_split = args.get("references_split", "test")
  config.lm_corpus = args.get("lm_corpus", "")
  config.lm_splits = ("train", "restval")  # the Karpathy splits the LM is trained on
  config.bad_captions = args.get("bad_captions", config.bad_captions)
  config.tokenizer = args.get("tokenizer", config.tokenizer)
  config.java_timeout_s = float(args.get("java_timeout_s", config.java_timeout_s))
  config.multihost = False
  for flag, (field, value) in _FLAGS.items():
    if args.get(flag):
      parent = config
      *path, leaf = field.split(".")
      for name in path:
        parent = parent[name]
      parent[leaf] = value
  return config
