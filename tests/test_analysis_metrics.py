"""Tests of analysis/metrics.py: coco-caption metrics, fast CIDEr, SPICE fallback, Table 2."""

import shutil

import pytest

from analysis import metrics

REFERENCES = {
    1: ["a dog lying on a bed", "a brown dog on a bed", "a dog sleeping on the bed"],
    2: ["a cat sitting on a mat", "a small cat on a mat", "a cat resting on a rug"],
    3: ["a man riding a horse", "a person on a horse", "a man on a brown horse"],
}
GOOD = {1: "a dog lying on a bed", 2: "a cat sitting on a mat", 3: "a man riding a horse"}
BAD = {1: "a table table of the bed", 2: "a image image of cat near a", 3: "horse horse horse"}


def test_metrics_without_java():
  good = metrics.caption_metrics(GOOD, REFERENCES, include_meteor=False)
  bad = metrics.caption_metrics(BAD, REFERENCES, include_meteor=False)
  # Each good caption is one of its references: every n-gram matches, no brevity penalty.
  for n in (1, 2, 3, 4):
    assert good[f"BLEU-{n}"] == pytest.approx(1.0, abs=1e-6)
  assert good["ROUGE-L"] == pytest.approx(1.0)
  for name in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"):
    assert bad[name] < good[name], name
  assert good["METEOR"] is None and good["SPICE"] is None
  assert "METEOR skipped: include_meteor=False" in good["notes"]
  assert any(n.startswith("SPICE unavailable: no spice_dir given") for n in good["notes"])


def test_spice_needs_the_corenlp_jars(tmp_path):
  out = metrics.caption_metrics(GOOD, REFERENCES, spice_dir=str(tmp_path),
                                include_meteor=False)
  assert out["SPICE"] is None
  (note,) = [n for n in out["notes"] if n.startswith("SPICE")]
  assert "stanford-corenlp-3.6.0.jar" in note and str(tmp_path) in note
  assert "\n" not in note
  jars, why = metrics.find_corenlp(str(tmp_path))
  assert jars is None and "not found" in why
  for name in metrics.CORENLP_JARS:
    (tmp_path / "lib").mkdir(exist_ok=True)
    (tmp_path / "lib" / name).write_bytes(b"")
  jars, _ = metrics.find_corenlp(str(tmp_path))
  assert [p.split("/")[-1] for p in jars] == list(metrics.CORENLP_JARS)


def test_fast_cider_equals_the_full_metric_and_orders_captions():
  full = metrics.caption_metrics(GOOD, REFERENCES, include_meteor=False)["CIDEr"]
  fast = metrics.cider(GOOD, REFERENCES)
  assert fast == pytest.approx(full, rel=1e-12)
  mean, per_image = metrics.cider(BAD, REFERENCES, per_image=True)
  assert per_image.shape == (3,) and mean == pytest.approx(per_image.mean())
  assert mean < fast


def test_missing_references_are_explained():
  with pytest.raises(ValueError, match="no references.*first: \\[7\\]"):
    metrics.cider({7: "a dog"}, REFERENCES)
  with pytest.raises(ValueError, match="no candidate"):
    metrics.caption_metrics({}, REFERENCES, include_meteor=False)


@pytest.mark.skipif(shutil.which("java") is None, reason="the PTB tokenizer needs Java")
def test_ptb_tokenizer_and_whitespace():
  """METEOR itself is tested once, in test_analysis_fixture.py (its Java start takes 10-40 s)."""
  assert metrics.tokenize_ptb(["A Dog, on a bed.", "it's red"]) == ["a dog on a bed", "it 's red"]
  folded = metrics.caption_metrics({i: c.replace(" ", "\n ", 1) for i, c in GOOD.items()},
                                   REFERENCES, include_meteor=False, ptb_tokenize=True)
  assert folded == metrics.caption_metrics(GOOD, REFERENCES, include_meteor=False)


def test_cross_scoring_table_arrows():
  runs = {  # the paper's Table 2 rows for CE, LXMERT and UNITER, scores only
      "XE": {"scores": {"uniter": 71.6, "clip": 27.8, "lxmert": 80.1},
             "metrics": {"BLEU-1": 0.722, "CIDEr": 0.92, "SPICE": None}},
      "SCST-lxmert": {"scores": {"uniter": 73.9, "clip": 27.2, "lxmert": 93.6},
                      "metrics": {"BLEU-1": 0.30, "CIDEr": 0.093}},
      "SCST-uniter": {"scores": {"uniter": 90.4, "clip": 27.8, "lxmert": 88.2}, "metrics": {}},
  }
  table, arrows = metrics.cross_scoring_table(runs, scorers=["uniter", "clip", "lxmert"])
  assert arrows["SCST-lxmert"] == {"uniter": "↑", "clip": "↓", "lxmert": "↑"}
  assert arrows["SCST-uniter"] == {"uniter": "↑", "clip": "", "lxmert": "↑"}
  assert arrows["XE"] == {"uniter": "", "clip": "", "lxmert": ""}
  lines = table.splitlines()
  assert lines[0] == ("| run | uniter | clip | lxmert | BLEU-1 | BLEU-4 | METEOR | ROUGE-L | "
                      "CIDEr | SPICE |")
  assert lines[2] == "| XE | 71.6 | 27.8 | 80.1 | 72.2 | – | – | – | 92.0 | – |"
  assert lines[3] == "| SCST-lxmert | 73.9↑ | 27.2↓ | 93.6↑ | 30.0 | – | – | – | 9.3 | – |"
  with pytest.raises(ValueError, match="reference run 'CE'"):
    metrics.cross_scoring_table(runs, reference="CE")
