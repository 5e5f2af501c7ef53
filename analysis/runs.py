"""What the analysis reads: runs (captions, stored scores and metrics) and the text corpus.

A run directory (a workdir of `launch.py`) holds, per finished stage,
`{xe,scst}/eval/test_captions.json` (a list of `{"image_id", "caption", "scores": {scorer:
score}}`), `{xe,scst}/eval/metrics.json` and the run's `config.json`, whose `scst.scorer` names
the reward. It yields the runs "XE" and "SCST-<scorer>". A plain captions file (a list of
`{"image_id", "caption"}`) from any other system yields one run named after the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence

STAGES = ("xe", "scst")


@dataclasses.dataclass
class Corpus:
  """The text the analysis compares captions with.

  Attributes:
    train_captions: tokenized training captions (the language model's data).
    references: image id -> reference captions (lower-case words separated by spaces) of the
      evaluated split.
  """
  train_captions: list[list[str]]
  references: dict[int, list[str]]

  @classmethod
  def from_dataset(cls, dataset, split: str = "test") -> "Corpus":
    """From a `vlprobe_jax.data.dataset.Dataset`: its train references and `split`'s."""
    train = [r.split() for refs in dataset["train"].references for r in refs]
    evaluated = dataset[split]
    references = {int(i): list(refs) for i, refs in zip(evaluated.image_ids,
                                                          evaluated.references)}
    return cls(train_captions=train, references=references)


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
  """
  name: str
  captions: dict[int, str]
  stored_scores: dict[str, dict[int, float]] = dataclasses.field(default_factory=dict)
  metrics: dict | None = None
  source: str = ""
  reward: str | None = None
  workdir: str = ""


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as error:
    raise ValueError(f"{path}: not valid JSON ({error}); expected the file the eval stage "
                     "writes.") from error


def load_captions(path: str, name: str | None = None) -> Run:
  """A captions file: a JSON list of {"image_id": int, "caption": str[, "scores": {...}]}."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: captions file not found; expected a JSON list of "
                            '{"image_id": int, "caption": str}.')
  items = _read_json(path)
  if not isinstance(items, list):
    raise ValueError(f"{path}: expected a JSON list of captions; found {type(items).__name__}.")
  captions, scores = {}, {}
  for n, item in enumerate(items):
    if not isinstance(item, Mapping) or "image_id" not in item or "caption" not in item:
      raise ValueError(f"{path}: item #{n} must be an object with fields 'image_id' and "
                       f"'caption'; found {str(item)[:120]}.")
    image_id = int(item["image_id"])
    if image_id in captions:
      raise ValueError(f"{path}: image_id {image_id} appears twice (item #{n}); keep one "
                       "caption per image.")
    captions[image_id] = str(item["caption"]).strip()
    for scorer, value in (item.get("scores") or {}).items():
      scores.setdefault(scorer, {})[image_id] = float(value)
  if name is None:
    name = os.path.splitext(os.path.basename(path))[0]
  return Run(name=name, captions=captions, stored_scores=scores, source=path)


def _reward_of(run_dir: str) -> str | None:
  path = os.path.join(run_dir, "config.json")
  if not os.path.isfile(path):
    return None
  config = _read_json(path)
  scst = config.get("scst") if isinstance(config, Mapping) else None
  return scst.get("scorer") if isinstance(scst, Mapping) else None


def load_run_dir(run_dir: str) -> list[Run]:
  """The runs of one workdir: XE if `xe/eval` exists, SCST-<scorer> if `scst/eval` does."""
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
    run = load_captions(captions_path, name=name)
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


def load_runs(run_dirs: Sequence[str] = (), captions_files: Sequence[str] = ()) -> list[Run]:
  """Runs from workdirs and captions files, with unique names.

  Workdirs usually share their XE stage: identical XE captions are kept once, as "XE"; a
  different XE run gets its directory's name appended ("XE@<dir>").
  """
  runs: list[Run] = []
  for run_dir in run_dirs:
    for run in load_run_dir(run_dir):
      if run.name == "XE":
        same = [r for r in runs if r.name.startswith("XE") and r.captions == run.captions]
        if same:
          continue
        if any(r.name == "XE" for r in runs):
          run.name = f"XE@{os.path.basename(os.path.normpath(run_dir))}"
      runs.append(run)
  runs.extend(load_captions(path) for path in captions_files)
  names = [r.name for r in runs]
  for run in runs:
    if names.count(run.name) > 1:
      where = run.workdir or os.path.dirname(run.source)
      run.name = f"{run.name}@{os.path.basename(os.path.normpath(where))}"
  if len({r.name for r in runs}) != len(runs):
    raise ValueError(f"analysis/runs.py: run names collide: {sorted(names)}; give the "
                     "workdirs or captions files distinct names.")
  return runs
