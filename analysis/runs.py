"""What the analysis reads: runs (captions, stored scores and metrics).

A run directory (a workdir of `launch.py`) holds, per finished stage,
`{xe,scst}/eval/test_captions.json` (a list of `{"image_id", "caption", "scores": {scorer:
score}}`), `{xe,scst}/eval/metrics.json` and the run's `config.json`, whose `scst.scorer` names
the reward. It yields the runs "XE" and "SCST-<scorer>". A plain captions file (a list of
`{"image_id", "caption"}`) from any other system yields one run named after the file.

Every caption is checked and normalised on reading (`analysis.text.normalize`: strings only,
whitespace folded, lower-cased and PTB-tokenized as coco-caption expects); bad captions are
refused naming their image id, or, with `policy="skip"`, left out and kept in `Run.skipped`.
The text corpus (references, LM text) is `analysis.corpus.Corpus`, re-exported here.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence

from analysis import java
from analysis import text as text_lib
from analysis.corpus import Corpus  # pylint: disable=unused-import  (re-exported)

__all__ = ["Corpus", "Run", "load_captions", "load_run_dir", "load_runs"]

STAGES = ("xe", "scst")


@dataclasses.dataclass
class Run:
  """One set of captions to analyse.

  Attributes:
    name: "XE", "SCST-<scorer>", or the captions file's name.
    captions: image id -> caption.
    stored_scores: scorer -> image id -> score, as stored next to the captions.
    metrics: the stored captioning metrics (metrics.json), or None.
    source: the file the captions came from.
    reward: the SCST reward scorer, or None.
    workdir: the run directory, or "" for a captions file.
    num_read: captions in the file, bad ones included.
    skipped: captions left out under the "skip" policy ([{"key", "reason", "text"}]).
  """
  name: str
  captions: dict[int, str]
  stored_scores: dict[str, dict[int, float]] = dataclasses.field(default_factory=dict)
  metrics: dict | None = None
  source: str = ""
  reward: str | None = None
  workdir: str = ""
  num_read: int = 0
  skipped: list[dict] = dataclasses.field(default_factory=list)


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as error:
    raise ValueError(f"{path}: not valid JSON ({error}); expected the file the eval stage "
                     "writes.") from error


def load_captions(path: str, name: str | None = None, *, policy: str = "refuse",
                  tokenizer: str = "auto", timeout_s: float = java.DEFAULT_TIMEOUT_S) -> Run:
  """A captions file: a JSON list of {"image_id": int, "caption": str[, "scores": {...}]}.

  Args:
    path: the file.
    name: the run's name; default the file's name without extension.
    policy, tokenizer, timeout_s: see `analysis.text.normalize`.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: captions file not found; expected a JSON list of "
                            '{"image_id": int, "caption": str}.')
  items = _read_json(path)
  if not isinstance(items, list):
    raise ValueError(f"{path}: expected a JSON list of captions; found {type(items).__name__}.")
  raw, scores = {}, {}
  for n, item in enumerate(items):
    if not isinstance(item, Mapping) or "image_id" not in item or "caption" not in item:
      raise ValueError(f"{path}: item #{n} must be an object with fields 'image_id' and "
                       f"'caption'; found {str(item)[:120]}.")
    try:
      image_id = int(item["image_id"])
    except (TypeError, ValueError):
      raise ValueError(f"{path}: item #{n} has image_id {item['image_id']!r}; expected an "
                       "integer image id (COCO's id, or the Karpathy json's imgid).") from None
    if image_id in raw:
      raise ValueError(f"{path}: image_id {image_id} appears twice (item #{n}); keep one "
                       "caption per image.")
    raw[image_id] = item["caption"]
    for scorer, value in (item.get("scores") or {}).items():
      scores.setdefault(scorer, {})[image_id] = float(value)
  captions, skipped = text_lib.normalize(raw.items(), what="caption", source=path,
                                         policy=policy, tokenizer=tokenizer,
                                         timeout_s=timeout_s)
  if not captions:
    raise ValueError(f"{path}: none of its {len(raw)} captions can be analysed (all were "
                     "skipped: not strings or empty); check the file.")
  if name is None:
    name = os.path.splitext(os.path.basename(path))[0]
  return Run(name=name, captions=captions, stored_scores=scores, source=path,
             num_read=len(raw), skipped=[s.as_dict() for s in skipped])


def _reward_of(run_dir: str) -> str | None:
  path = os.path.join(run_dir, "config.json")
  if not os.path.isfile(path):
    return None
  config = _read_json(path)
  scst = config.get("scst") if isinstance(config, Mapping) else None
  return scst.get("scorer") if isinstance(scst, Mapping) else None


def load_run_dir(run_dir: str, **kwargs) -> list[Run]:
  """The runs of one workdir: XE if `xe/eval` exists, SCST-<scorer> if `scst/eval` does.

  Keyword arguments go to `load_captions` (policy, tokenizer, timeout_s).
  """
  runs = []
  for stage in STAGES:
    captions_path = os.path.join(run_dir, stage, "eval", "test_captions.json")
    if not os.path.isfile(captions_path):
      continue
    reward = None
    if stage == "xe":
      name = "XE"
    else:
      reward = _reward_of(run_dir)
      name = f"SCST-{reward}" if reward else f"SCST-{os.path.basename(os.path.normpath(run_dir))}"
    run = load_captions(captions_path, name=name, **kwargs)
    run.reward, run.workdir = reward, run_dir
    metrics_path = os.path.join(run_dir, stage, "eval", "metrics.json")
    if os.path.isfile(metrics_path):
      run.metrics = _read_json(metrics_path)
    runs.append(run)
  if not runs:
    raise FileNotFoundError(f"{run_dir}: no xe/eval/test_captions.json nor "
                            "scst/eval/test_captions.json; run the eval stage of this workdir "
                            "first, or pass a captions file instead.")
  return runs


def load_runs(run_dirs: Sequence[str] = (), captions_files: Sequence[str] = (),
              **kwargs) -> list[Run]:
  """Runs from workdirs and captions files, with unique names.

  Workdirs usually share their XE stage: identical XE captions are kept once, as "XE"; a
  different XE run gets its directory's name appended ("XE@<dir>"). Keyword arguments go to
  `load_captions` (policy, tokenizer, timeout_s).
  """
  runs: list[Run] = []
  for run_dir in run_dirs:
    for run in load_run_dir(run_dir, **kwargs):
      if run.name == "XE":
        same = [r for r in runs if r.name.startswith("XE") and r.captions == run.captions]
        if same:
          continue
        if any(r.name == "XE" for r in runs):
          run.name = f"XE@{os.path.basename(os.path.normpath(run_dir))}"
      runs.append(run)
  runs.extend(load_captions(path, **kwargs) for path in captions_files)
  names = [r.name for r in runs]
  for run in runs:
    if names.count(run.name) > 1:
      where = run.workdir or os.path.dirname(run.source)
      run.name = f"{run.name}@{os.path.basename(os.path.normpath(where))}"
  if len({r.name for r in runs}) != len(runs):
    raise ValueError(f"analysis/runs.py: run names collide: {sorted(names)}; give the "
                     "workdirs or captions files distinct names.")
  return runs
