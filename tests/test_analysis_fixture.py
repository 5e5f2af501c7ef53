"""The whole analysis on real captions nobody here wrote, as a user would run it.

Fixture (tests/assets/LICENSES.md): 126 COCO val2017 images with their human references (CC BY
4.0) and coco-caption's example machine captions for them (BSD-2-Clause), plus 300 other images
whose human captions train the language model. The references and the LM text are read from a
Karpathy-format json written here, the way `configs/analysis.py:references=...,lm_corpus=...`
reads them; no synthetic world is involved. The scorers are fakes with known preferences.
"""

import json
import os
import re
import shutil
import types

import filelock
import numpy as np
import pytest

from analysis import corpus as corpus_lib
from analysis import plots
from analysis import pos
from analysis import probes as probes_lib
from analysis import report
from analysis import runs as runs_lib
from analysis import text
from configs import analysis as analysis_config
from tests.test_analysis_corpus import COCO, FAKECAP, image_split, write_karpathy

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="PTB and METEOR are Java")
STOPWORDS = frozenset("a an the of on in with and is are at to his her its by for".split())
OUTPUTS = {"report.md", "analysis.json", "unigrams.png", "probe_replacement.png",
           "probe_visual_words.png"}


def _system_captions():
  with open(FAKECAP, encoding="utf-8") as f:
    return json.load(f)


def _messy(caption: str, n: int) -> str:
  """The same caption as a careless file would have it: case, newlines, spaces, a period."""
  words = caption.split()
  words[0] = words[0].capitalize()
  joiner = ("\n", "  ", "\r\n", "\t")[n % 4]
  return joiner.join(words[:2]) + " " + " ".join(words[2:]) + ".\n"


def _write(path, value):
  with open(path, "w", encoding="utf-8") as f:
    json.dump(value, f)
  return str(path)


def make_scorers(references):
  """"lxmert": 10 points per distinct content word shared with the image's references (a fake
  with the paper's LXMERT template); "length": the number of words."""
  content = {i: {w for r in refs for w in r.split()} - STOPWORDS
             for i, refs in references.items()}

  def overlap(captions, image_ids):
    return np.array([10.0 * len(set(c.split()) & content[i]) for c, i in zip(captions, image_ids)])

  def length(captions, image_ids):
    del image_ids
    return np.array([float(len(c.split())) for c in captions])

  return {"lxmert": overlap, "length": length}


INPUTS = {"dataset_coco.json", "fakecap.json", "fakecap_messy.json", "extra.json"}


def _build(root):
  """Writes the input files into `root` and runs the analysis into `root/out`."""
  root.mkdir()
  karpathy = write_karpathy(root / "dataset_coco.json")
  system = _system_captions()
  _, lm_ids = image_split()
  files = [
      _write(root / "fakecap.json", system),
      _write(root / "fakecap_messy.json", [
          {"image_id": c["image_id"], "caption": _messy(c["caption"], n)}
          for n, c in enumerate(system)]),
      _write(root / "extra.json", system + [
          {"image_id": i, "caption": "a dog on a bed"} for i in lm_ids[:3]] + [
              {"image_id": lm_ids[3], "caption": None}, {"image_id": lm_ids[4], "caption": ""}]),
  ]
  config = analysis_config.get_config(
      f"captions={','.join(files)},references={karpathy},lm_corpus={karpathy},"
      f"out_dir={root / 'out'},bad_captions=skip,no_meteor")
  config.probes.k_values = (3, 4, 5)
  corpus = corpus_lib.corpus_from_config(config)
  return report.run_from_config(config, corpus, make_scorers(corpus.references))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """The inputs and the analysis of them, built once per test session: pytest-xdist workers
  share one copy (the base temp folder's parent is common to them) under a file lock."""
  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    base = base.parent
  root, summary_path = base / "coco_world", base / "coco_world_summary.json"
  with filelock.FileLock(str(base / "coco_world.lock")):
    if not summary_path.exists():
      _write(summary_path, _build(root))
  with open(summary_path, encoding="utf-8") as f:
    summary = json.load(f)
  out_dir = str(root / "out")
  with open(os.path.join(out_dir, "analysis.json"), encoding="utf-8") as f:
    result = json.load(f)
  with open(os.path.join(out_dir, "report.md"), encoding="utf-8") as f:
    markdown = f.read()
  test_ids, lm_ids = image_split()
  return {"root": root, "out_dir": out_dir, "summary": summary, "result": result,
          "report": markdown, "karpathy": str(root / "dataset_coco.json"),
          "files": {n: str(root / f"{n}.json") for n in ("fakecap", "fakecap_messy", "extra")},
          "test_ids": test_ids, "lm_ids": lm_ids}


def test_summary_is_short_and_everything_stays_in_out_dir(world):
  summary = world["summary"]
  assert summary["report"] == os.path.join(world["out_dir"], "report.md")
  assert len(json.dumps(summary)) < 1000
  line = report.summary_line(summary)
  assert "\n" not in line and line.startswith(f"report {summary['report']};")
  assert "fakecap: 126 captions (126 with references), CIDEr" in line
  assert set(os.listdir(world["root"])) == INPUTS | {"out"}
  assert set(os.listdir(world["out_dir"])) == OUTPUTS


def test_a_messy_copy_of_the_captions_gives_the_same_analysis(world):
  runs = world["result"]["runs"]
  clean, messy = runs["fakecap"], runs["fakecap_messy"]
  for key in ("scores", "metrics", "sentence", "tokens", "unigrams", "patterns", "examples",
              "coverage"):
    if key == "coverage":
      assert {k: v for k, v in clean[key].items()} == messy[key]
    else:
      assert clean[key] == messy[key], key
  # Lower-cased once: no "A" next to "a" among the top words.
  words = [u["word"] for u in messy["unigrams"]]
  assert "a" in words and "A" not in words


def test_captions_without_references_and_bad_captions_are_counted_and_listed(world):
  extra = world["result"]["runs"]["extra"]
  cov = extra["coverage"]
  assert (cov["read"], cov["analysed"], cov["with_references"]) == (131, 129, 126)
  assert cov["without_references"] == world["lm_ids"][:3]
  assert [(s["key"], s["reason"]) for s in cov["skipped"]] == [
      (str(world["lm_ids"][3]), "not a string (null)"), (str(world["lm_ids"][4]), "empty")]
  assert extra["metrics"]["num_captions"] == 126 and extra["scores_over"] == 126
  assert extra["num_captions"] == extra["tokens"]["num_captions"] == 129
  warnings = " ".join(world["result"]["warnings"])
  assert "extra: 3 of its 129 captions have no references" in warnings
  assert "extra: 2 of its 131 captions were skipped" in warnings
  assert "`extra` 126 of 129 captions" in world["report"]
  with pytest.raises(text.CaptionError, match=f"{world['lm_ids'][3]}: not a string"):
    runs_lib.load_captions(world["files"]["extra"], policy="refuse", tokenizer="lower")


def test_perplexity_comes_with_its_oov_share(world):
  result = world["result"]
  with open(world["karpathy"], encoding="utf-8") as f:
    train = sum(len(im["sentences"]) for im in json.load(f)["images"] if im["split"] != "test")
  assert result["lm"]["train_captions"] == train == 1501
  s = result["runs"]["fakecap"]["sentence"]
  assert 0.0 <= s["oov_share"] < 0.05 and 5.0 < s["perplexity"] < 100.0
  table4 = world["report"][world["report"].index("(Table 4)"):]
  row = next(l for l in table4.splitlines() if l.startswith("| fakecap |"))
  assert f"{s['perplexity']:.1f} ({100 * s['oov_share']:.1f}%)" in row


@needs_java
def test_metrics_equal_plain_pycocoevalcap_on_the_raw_files(world):
  from pycocoevalcap.bleu.bleu import Bleu  # pylint: disable=g-import-not-at-top
  from pycocoevalcap.cider.cider import Cider  # pylint: disable=g-import-not-at-top
  from pycocoevalcap.rouge.rouge import Rouge  # pylint: disable=g-import-not-at-top
  from pycocoevalcap.tokenizer import ptbtokenizer  # pylint: disable=g-import-not-at-top
  if not os.access(os.path.dirname(ptbtokenizer.__file__), os.W_OK):
    pytest.skip("pycocoevalcap's tokenizer writes into its read-only package folder")
  with open(world["karpathy"], encoding="utf-8") as f:
    images = [im for im in json.load(f)["images"] if im["split"] == "test"]
  gts = {im["cocoid"]: [{"caption": s["raw"]} for s in im["sentences"]] for im in images}
  res = {c["image_id"]: [{"caption": c["caption"]}] for c in _system_captions()}
  tokenizer = ptbtokenizer.PTBTokenizer()
  gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
  ours = world["result"]["runs"]["fakecap_messy"]["metrics"]
  bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
  assert [ours[f"BLEU-{n}"] for n in (1, 2, 3, 4)] == bleu
  assert ours["ROUGE-L"] == Rouge().compute_score(gts, res)[0]
  assert ours["CIDEr"] == Cider().compute_score(gts, res)[0]


def test_report_defines_every_label_it_uses(world):
  md = world["report"]
  assert "| CE |" not in md and "| fakecap | fakecap captions |" not in md
  table5 = md[md.index("## Prefixes and sentence patterns"):md.index("## Top unigrams")]
  rows, legend = table5.split("Legend.", 1)
  per_run = md[md.index("## Per run"):]
  used = {s for value in re.findall(r"`([^`]+)`", rows + per_run)
          for s in re.findall(r"[A-Z][A-Z.]+", value)}
  assert {"NOUN.P", "REL"} <= used
  for symbol in used | {"Prefix"}:
    assert f"`{symbol}`:" in legend, symbol
  assert "Its prefix is its leading noun phrases plus the run of other tokens" in legend
  table7 = md[md.index("### Template reconstructions"):md.index("### Score vs number")]
  assert "Row `default`: the template `a+NOUN+(and+a+NOUN)*`" in table7
  figure3 = md[md.index("### Score vs number"):]
  vis = world["result"]["probes"]["visual_words"]
  assert "Scores generated captions, not real ones" in figure3
  assert f"n = {vis['num_images']} captions for every k" in figure3
  assert " ± " in figure3 and "first reference" in figure3
  assert vis["counts"]["lxmert"] == [vis["num_images"]] * 3 and vis["num_images"] > 20


def test_position_words_are_nouns_for_the_count_but_not_visual_words():
  (tagged,) = pos.tag_captions(["a cat on top of a table in front of a tv"])
  assert tagged.nouns() == ["cat", "top", "table", "front", "tv"]  # spaCy, as in the paper
  assert tagged.position_nouns() == ["top", "front"]
  assert probes_lib.visual_words(tagged) == ["cat", "table", "tv"]
  stats = pos.token_stats([tagged])
  assert (stats["nouns"], stats["position_nouns"]) == (5, 2)
  top = pos.top_unigrams([tagged] * 3, k=12)
  flagged = {u["word"] for u in top if u["position"]}
  assert flagged == {"top", "front"}


def test_figures_share_scales_and_start_at_zero(world):
  result = world["result"]
  names = list(result["runs"])
  fig = plots.unigram_figure({n: result["runs"][n]["unigrams"] for n in names})
  limits = {ax.get_xlim() for ax in fig.axes[:len(names)]}
  assert len(limits) == 1 and limits.pop()[0] == 0.0
  fig = plots.visual_words_figure(result["probes"]["visual_words"])
  ax = fig.axes[0]
  assert ax.get_ylim()[0] == 0.0
  assert [t.get_text() for t in ax.get_xticklabels()] == [
      f"{k}\n(n={result['probes']['visual_words']['num_images']})" for k in (3, 4, 5)]
  assert ax.containers  # error bars
  fig = plots.replacement_figure(result["probes"]["replacement"])
  assert fig.axes[0].get_ylim()[0] == 0.0


def test_captions_alone_skip_perplexity_and_metrics_with_notes(world, tmp_path):
  config = analysis_config.get_config(f"captions={world['files']['fakecap']},"
                                      f"out_dir={tmp_path / 'out'},tokenizer=lower")
  corpus = corpus_lib.corpus_from_config(config)
  summary = report.run_from_config(config, corpus, {})
  with open(summary["analysis_json"], encoding="utf-8") as f:
    result = json.load(f)
  run = result["runs"]["fakecap"]
  assert run["sentence"] is None and result["lm"] is None
  assert summary["runs"]["fakecap"]["PPL"] is None
  assert any(n.startswith("perplexity skipped: no language-model text") for n in result["notes"])
  assert any("probes skipped" in n for n in result["notes"])
  assert any("none of its 126 captions has references" in w for w in result["warnings"])
  assert "| fakecap | 126 | – |" in open(summary["report"], encoding="utf-8").read()


def test_a_language_model_of_another_kind_is_flagged(world, tmp_path):
  shapes = [f"a {s} {c} circle above a blue square on the grass".split()
            for s in ("small", "big") for c in ("red", "green")] * 50
  references, _, _ = corpus_lib.read_references(world["karpathy"], tokenizer="lower")
  corpus = runs_lib.Corpus(train_captions=shapes, references=references)
  run = runs_lib.load_captions(world["files"]["fakecap"], tokenizer="lower")
  result = report.analyze([run], corpus, {}, str(tmp_path), probes=False, include_meteor=False)
  s = result["runs"]["fakecap"]["sentence"]
  assert s["oov_share"] > 0.5
  assert any("outside the language model's vocabulary" in w for w in result["warnings"])


@pytest.mark.slow
@needs_java
def test_meteor_on_real_captions_with_newlines():
  """The one test that starts METEOR (10-40 s): a caption with a newline scores as without it,
  and our process gives what pycocoevalcap's own protocol code gives on the same process."""
  from pycocoevalcap.meteor import meteor as coco_meteor  # pylint: disable=g-import-not-at-top
  from analysis import java  # pylint: disable=g-import-not-at-top
  from analysis import metrics  # pylint: disable=g-import-not-at-top
  refs, _, _ = corpus_lib.read_references(COCO)
  system = _system_captions()[:40]
  clean = {c["image_id"]: text.tokenize([c["caption"]])[0] for c in system}
  raw_newlines = {c["image_id"]: _messy(c["caption"], n) for n, c in enumerate(system)}
  ours = metrics.caption_metrics(clean, refs)
  again = metrics.caption_metrics(raw_newlines, refs, ptb_tokenize=True)
  assert 0.1 < ours["METEOR"] < 0.5 and again == ours
  assert not any(n.startswith("METEOR") for n in ours["notes"])
  # A caption that is one of the references scores near 1; a wrong one far lower.
  exact = {i: refs[i][0] for i in sorted(clean)}
  wrong = {i: refs[j][0] for i, j in zip(sorted(clean), sorted(clean)[1:] + sorted(clean)[:1])}
  assert metrics.caption_metrics(exact, refs)["METEOR"] > 0.9
  assert metrics.caption_metrics(wrong, refs)["METEOR"] < 0.5 * ours["METEOR"]
  # pycocoevalcap's compute_score, driven through the same METEOR process and command line.
  started = []
  original = coco_meteor.subprocess.Popen
  coco_meteor.subprocess.Popen = lambda cmd, **kwargs: started.append(cmd)
  try:
    theirs = coco_meteor.Meteor()
  finally:
    coco_meteor.subprocess.Popen = original
  assert started[0][:2] == ["java", "-jar"] and started[0][3:] == [
      "meteor-1.5.jar", "-", "-", "-stdio", "-l", "en", "-norm"]
  theirs.meteor_p = java._METEOR[0]._proc  # pylint: disable=protected-access
  gts = {i: refs[i] for i in sorted(clean)}
  res = {i: [clean[i]] for i in sorted(clean)}
  assert theirs.compute_score(gts, res)[0] == ours["METEOR"]
  # Its __del__ would close our process: give it a stand-in.
  theirs.meteor_p = types.SimpleNamespace(stdin=types.SimpleNamespace(close=lambda: None),
                                          kill=lambda: None, wait=lambda: None)


def test_standalone_captions_run_prints_its_report_and_builds_no_world(world, tmp_path,
                                                                         monkeypatch, capsys):
  """The "analysis" entry point (vlprobe_jax/reporting.py): captions files alone never generate
  the synthetic world, everything lands in out_dir, the return value is short."""
  from vlprobe_jax import reporting  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(tmp_path)
  out_dir = tmp_path / "analysis_out"
  config = analysis_config.get_config(
      f"captions={world['files']['fakecap']},references={world['karpathy']},"
      f"lm_corpus={world['karpathy']},out_dir={out_dir},tokenizer=lower,no_meteor")
  summary = reporting.run_standalone(config)
  assert os.listdir(tmp_path) == ["analysis_out"]  # no workdir/, no synthetic world
  assert set(os.listdir(out_dir)) == {"report.md", "analysis.json", "unigrams.png",
                                      "summary.json"}
  printed = capsys.readouterr().out.splitlines()
  assert f"[analysis] report: {out_dir / 'report.md'}" in printed
  assert summary["headline"] == report.summary_line(summary)  # launch.py's last line
  assert len(json.dumps(summary)) < 1000 and summary["runs"]["fakecap"]["PPL"] > 0
