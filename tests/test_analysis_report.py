"""Round trip of analysis/report.py, analysis/runs.py and configs/analysis.py on fake runs."""

import json
import os

import numpy as np
import pytest

from analysis import report
from analysis.runs import Corpus, load_runs
from configs import analysis as analysis_config

NOUNS = frozenset({"dog", "cat", "bed", "sofa", "man", "horse", "beach", "grass", "car",
                   "street", "tree", "rug", "mat", "fence", "field", "person"})
REFERENCES = {
    1: ["a dog lying on a bed", "a dog and a cat on a sofa", "a brown dog on a bed near a rug",
        "a dog sleeping on a mat"],
    2: ["a man riding a horse on the beach", "a person on a horse near the grass",
        "a man and a horse on a beach with a fence", "a horse in a field with a tree"],
    3: ["a car on a street", "a red car parked on the street near a tree", "a car near a tree"],
}
XE = {1: "a dog lying on a bed", 2: "a man riding a horse on the beach",
      3: "a car parked on a street"}
SCST = {1: "a dog dog bed of the dog bed", 2: "a horse horse man of the beach horse",
        3: "a car car street of the tree car"}


def _train_captions():
  rng = np.random.default_rng(0)
  subjects, verbs, places = ["dog", "cat", "man", "horse", "car"], ["lying", "riding",
                                                                    "parked"], ["bed", "beach",
                                                                                "street", "sofa"]
  return [f"a {rng.choice(subjects)} {rng.choice(verbs)} on a {rng.choice(places)}".split()
          for _ in range(300)]


CORPUS = Corpus(train_captions=_train_captions(), references=REFERENCES)


def nouns_scorer(captions, image_ids):
  refs = {i: {w for r in REFERENCES[i] for w in r.split()} & NOUNS for i in REFERENCES}
  return np.array([10.0 * len(set(c.split()) & refs[i]) for c, i in zip(captions, image_ids)])


def length_scorer(captions, image_ids):
  del image_ids
  return np.array([float(len(c.split())) for c in captions])


SCORE_FNS = {"nouns": nouns_scorer, "length": length_scorer}


def _write(path, value):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(value, f)


def _make_run(root, reward, scst_captions):
  """A workdir as launch.py leaves it: XE with metrics.json, SCST without."""
  # Stored "nouns" scores that differ from what nouns_scorer gives, to see which is used.
  _write(os.path.join(root, "xe", "eval", "test_captions.json"),
         [{"image_id": i, "caption": c, "scores": {"nouns": 50.0}} for i, c in XE.items()])
  _write(os.path.join(root, "xe", "eval", "metrics.json"),
         {"BLEU-1": 0.7, "BLEU-2": 0.5, "BLEU-3": 0.4, "BLEU-4": 0.3, "METEOR": 0.25,
          "ROUGE-L": 0.5, "CIDEr": 0.9, "SPICE": None, "scores": {"nouns": 50.0}})
  _write(os.path.join(root, "scst", "eval", "test_captions.json"),
         [{"image_id": i, "caption": c, "scores": {"nouns": 60.0}}
          for i, c in scst_captions.items()])
  _write(os.path.join(root, "config.json"), {"scst": {"scorer": reward}})
  return str(root)


def test_analyze_runs_round_trip(tmp_path):
  run_dir = _make_run(tmp_path / "scst_nouns", "nouns", SCST)
  out_dir = str(tmp_path / "out")
  result = report.analyze_runs([run_dir], CORPUS, SCORE_FNS, out_dir, include_meteor=False,
                               k_values=(3, 4), seed=0)
  for name in ("report.md", "analysis.json", "unigrams.png", "probe_replacement.png",
               "probe_visual_words.png"):
    assert os.path.getsize(os.path.join(out_dir, name)) > 0, name
  with open(os.path.join(out_dir, "analysis.json")) as f:
    saved = json.load(f)
  assert saved == result
  assert list(saved["runs"]) == ["XE", "SCST-nouns"]
  xe, scst = saved["runs"]["XE"], saved["runs"]["SCST-nouns"]

  # Stored scores win; scorers without stored scores are computed.
  assert xe["scores"]["nouns"] == 50.0 and scst["scores"]["nouns"] == 60.0
  assert xe["scores"]["length"] == pytest.approx((6 + 8 + 6) / 3)
  assert scst["scores"]["length"] == pytest.approx(8.0)
  assert saved["table2_arrows"]["SCST-nouns"] == {"length": "↑", "nouns": "↑"}

  # XE metrics from metrics.json, SCST metrics computed (and far worse).
  assert xe["metrics"]["BLEU-1"] == 0.7 and xe["metrics"]["CIDEr"] == 0.9
  assert 0.0 < scst["metrics"]["BLEU-1"] < 0.7 and scst["metrics"]["METEOR"] is None
  assert any("SCST-nouns: SPICE unavailable" in n for n in saved["notes"])

  # Table 4 and Table 5 numbers.
  assert scst["sentence"]["perplexity"] > 3 * xe["sentence"]["perplexity"]
  assert xe["tokens"]["nouns"] == pytest.approx((2 + 3 + 2) / 3)
  assert scst["tokens"]["unique_nouns"] < scst["tokens"]["nouns"]
  assert scst["patterns"]["literal_prefix"][0]["ratio"] == pytest.approx(1 / 3)
  assert scst["patterns"]["prefix"][0] == {
      "value": "(NOUN.P)*+REL", "count": 3, "ratio": 1.0, "example": SCST[1]}
  assert scst["unigrams"][0]["word"] == "a"

  # Probes start from the XE captions.
  probes = saved["probes"]
  assert probes["run"] == "XE"
  rep = probes["replacement"]["scores"]["nouns"]
  assert rep["original"] == rep["replace_others"] > rep["replace_nouns"]
  assert probes["templates"]["table"]["nouns"]["template"] == "a+NOUN+(and+a+NOUN)*"
  assert probes["visual_words"]["scores"]["nouns"] == [30.0, 40.0]

  text = open(os.path.join(out_dir, "report.md")).read()
  assert "| SCST-nouns | 8.0↑ | 60.0↑ |" in text
  assert "| XE | 6.7 | 50.0 | 70.0 | 30.0 | 25.0 | 50.0 | 90.0 | – |" in text
  assert "![top unigrams](unigrams.png)" in text and "for each of 2 images" in text


def test_analyze_captions_file(tmp_path):
  path = tmp_path / "other_system.json"
  _write(str(path), [{"image_id": i, "caption": c} for i, c in XE.items()])
  result = report.analyze_captions_file(str(path), CORPUS, SCORE_FNS, str(tmp_path / "o"),
                                        include_meteor=False)
  run = result["runs"]["other_system"]
  assert run["scores"]["nouns"] == pytest.approx(70 / 3)
  assert run["metrics"]["BLEU-1"] > 0.5
  assert "probes" not in result
  assert os.path.isfile(tmp_path / "o" / "report.md")


def test_bad_inputs_are_explained(tmp_path):
  with pytest.raises(FileNotFoundError, match="no xe/eval/test_captions.json"):
    load_runs([str(tmp_path)])
  bad = tmp_path / "bad.json"
  _write(str(bad), [{"image_id": 1, "text": "a dog"}])
  with pytest.raises(ValueError, match="item #0 must be an object with fields 'image_id' and "
                                       "'caption'"):
    load_runs(captions_files=[str(bad)])


def test_config_and_run_from_config(tmp_path):
  first = _make_run(tmp_path / "scst_nouns", "nouns", SCST)
  second = _make_run(tmp_path / "scst_length", "length",
                     {i: c + " on a bed" for i, c in SCST.items()})
  out_dir = str(tmp_path / "analysis")
  config = analysis_config.get_config(
      f"runs={first},{second},out_dir={out_dir},seed=3,no_meteor")
  assert config.runs == (first, second) and config.seed == 3
  assert not config.include_meteor and config.probes.enabled and not config.spice_dir
  config.probes.k_values = (3,)
  result = report.run_from_config(config, CORPUS, SCORE_FNS)
  # The two workdirs share their XE captions: one XE row.
  assert list(result["runs"]) == ["XE", "SCST-nouns", "SCST-length"]
  assert os.path.isfile(os.path.join(out_dir, "analysis.json"))

  assert analysis_config.get_config("captions=a.json,b.json,no_probes").captions == (
      "a.json", "b.json")
  assert not analysis_config.get_config("captions=a.json,no_probes").probes.enabled
  with pytest.raises(ValueError, match="neither key=value"):
    analysis_config.get_config("bogus")
  empty = analysis_config.get_config()
  with pytest.raises(ValueError, match="names no runs"):
    report.run_from_config(empty, CORPUS, SCORE_FNS)
