"""What hours of a real run bring, reproduced small: NaN, a changed config, a damaged or unwritable
checkpoint, hostile and broken files, bad feature rows, a malformed Karpathy json."""

import json
import logging
import os
import pickle
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scorers import checkpoint_files
from scorers import common
from scorers import lxmert
from tests import fake_scorer
from tests import helpers
from vlprobe_jax import captioner
from vlprobe_jax import captioner_stage
from vlprobe_jax import checkpoints
from vlprobe_jax import run_record
from vlprobe_jax import scoring
from vlprobe_jax import scst
from vlprobe_jax import training
from vlprobe_jax import xe
from vlprobe_jax.data import coco
from vlprobe_jax.data import feature_store
from vlprobe_jax.data import features
from vlprobe_jax.data import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ------------------------------------------------------------------------------------------
# Non-finite values stop the run; nothing non-finite is saved.


def _latest_steps(stage_dir):
  return sorted(int(n) for n in os.listdir(os.path.join(stage_dir, "checkpoints", "latest"))
                if n.isdigit())


def test_nan_features_stop_xe_at_the_step_naming_the_last_good_checkpoint(tmp_path):
  dataset = helpers.tiny_dataset()
  config = helpers.tiny_config(str(tmp_path))
  config.xe.update(log_every_steps=8, checkpoint_every_steps=1, eval_every_steps=8)
  third = pipeline.EpochRows(len(dataset["train"]), 4, seed=config.seed).local_rows(2)[0]
  dataset["train"].fc_feats[third[0], 0] = np.nan  # The batch of step 3 holds one NaN.
  stage_dir = str(tmp_path / "xe")
  with pytest.raises(training.NonFiniteError) as error:
    xe.train(config, dataset, stage_dir)
  message = str(error.value)
  assert "[xe] stopped: a non-finite value at step 3" in message
  assert "train/loss = nan" in message
  assert "the last good checkpoint is step 2" in message
  assert _latest_steps(stage_dir) == [1, 2]  # Step 3's state was never saved...
  assert not os.path.exists(os.path.join(stage_dir, "checkpoints", "best_score.json"))  # nor best


def test_nan_rewards_stop_scst(tmp_path, monkeypatch):
  dataset = helpers.with_regions(helpers.tiny_dataset())
  spec = fake_scorer.SCORER
  nan_score = lambda *args: jnp.full(args[2].shape[:1], jnp.nan)
  monkeypatch.setattr(fake_scorer, "SCORER", type(spec)(**{**spec.__dict__, "score": nan_score}))
  scorer = scoring.LoadedScorer("fake", fake_scorer.SCORER, fake_scorer.Config(),
                                {"unused": jnp.zeros(())}, dataset.vocab.words, 6)
  config = helpers.tiny_scst_config(str(tmp_path), log_every_steps=2, eval_every_steps=4,
                                    checkpoint_every_steps=4)
  init = captioner.init_params(captioner_stage.captioner_config(config, dataset.vocab.size),
                               jax.random.key(0))
  with pytest.raises(training.NonFiniteError, match=r"\[scst\] stopped: a non-finite value at "
                                                    r"step 1 .*reward/.* = nan.*no checkpoint"):
    scst.train(config, dataset, str(tmp_path / "scst"), init, scorer)


# ------------------------------------------------------------------------------------------
# A workdir remembers its config.


def test_a_changed_config_is_refused_then_recorded_as_history(tmp_path):
  config = helpers.tiny_config(str(tmp_path))
  run_record.check_and_record(config, str(tmp_path))
  config.xe.log_every_steps = 7  # Cadence: free.
  config.eval.batch_size = 3
  run_record.check_and_record(config, str(tmp_path))
  config.xe.lr, config.seed = 1.0, 7
  with pytest.raises(run_record.ConfigChanged) as error:
    run_record.check_and_record(config, str(tmp_path))
  assert "seed: 0 -> 7" in str(error.value) and "xe.lr: 0.01 -> 1.0" in str(error.value)
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["xe"]["lr"] == 0.01  # Not rewritten to claim the new values.
  config.accept_config_change = True
  run_record.check_and_record(config, str(tmp_path))
  with open(tmp_path / "config_history.jsonl") as f:
    (entry,) = [json.loads(line) for line in f]
  assert entry["changes"]["xe.lr"] == {"old": 0.01, "new": 1.0}
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["xe"]["lr"] == 1.0


# ------------------------------------------------------------------------------------------
# Checkpoints: the last 2 kept, a damaged one skipped, a failed save stops the run.


def test_two_latest_are_kept_and_a_damaged_latest_falls_back(tmp_path, capsys):
  dataset = helpers.tiny_dataset()
  config = helpers.tiny_config(str(tmp_path))
  config.xe.update(total_steps=6, checkpoint_every_steps=1)
  stage_dir = str(tmp_path / "xe")
  xe.train(config, dataset, stage_dir, max_steps_this_run=4)
  assert _latest_steps(stage_dir) == [3, 4]
  # Delete one file of the newest checkpoint, as a disk error or a careless rm would.
  newest = os.path.join(stage_dir, "checkpoints", "latest", "4")
  victim = max((os.path.join(d, f) for d, _, fs in os.walk(newest) for f in fs
                if "ocdbt.process" in d and os.sep + "d" + os.sep in os.path.join(d, f)),
               key=os.path.getsize)
  os.remove(victim)
  capsys.readouterr()
  result = xe.train(config, dataset, stage_dir)
  out = capsys.readouterr().out
  (line,) = [l for l in out.splitlines() if "is damaged" in l]
  assert f"{newest} is damaged" in line and "trying the one before it" in line
  assert "[xe] resuming at step 3/6" in out
  assert result.finished and os.path.isdir(newest + ".damaged")


_FULL_DISK = textwrap.dedent("""
    import os, resource, signal, sys
    import numpy as np
    from vlprobe_jax import checkpoints
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    ckpt = checkpoints.StageCheckpoints(sys.argv[1], {"what": "test"})
    state = {"w": np.random.default_rng(0).normal(size=(300, 300))}
    ckpt.save_latest(1, state)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20000, resource.RLIM_INFINITY))
    try:
      ckpt.save_latest(2, state)
    except checkpoints.CheckpointSaveError as error:
      print("REFUSED", error)
""")


def test_a_failed_save_stops_at_once_naming_path_and_cause(tmp_path):
  result = subprocess.run([sys.executable, "-c", _FULL_DISK, str(tmp_path / "ckpt")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
  (line,) = [l for l in result.stdout.splitlines() if l.startswith("REFUSED")]
  assert str(tmp_path / "ckpt" / "latest" / "2") in line
  assert "File too large" in line and "GiB free" in line and "resumes" in line


# ------------------------------------------------------------------------------------------
# Loader errors say what is wrong.


class _Exploit:
  def __reduce__(self):
    return (os.system, ("true",))


def test_checkpoint_file_errors_say_what_is_wrong(tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  read = lambda p: checkpoint_files.load_torch_file(str(p))
  with pytest.raises(checkpoint_files.CheckpointFileError, match="not found"):
    read(tmp_path / "missing.pt")
  with pytest.raises(checkpoint_files.CheckpointFileError, match="is a directory"):
    read(tmp_path)
  (tmp_path / "empty.pt").write_bytes(b"")
  with pytest.raises(checkpoint_files.CheckpointFileError, match="is empty"):
    read(tmp_path / "empty.pt")
  torch.save({"w": torch.zeros(100)}, tmp_path / "whole.pt")
  data = (tmp_path / "whole.pt").read_bytes()
  (tmp_path / "cut.pt").write_bytes(data[:len(data) // 2])
  with pytest.raises(checkpoint_files.CheckpointFileError, match="truncated or not a file"):
    read(tmp_path / "cut.pt")
  (tmp_path / "text.pt").write_text("hello")
  with pytest.raises(checkpoint_files.CheckpointFileError) as error:
    read(tmp_path / "text.pt")
  assert "trust_pickle" not in str(error.value)  # Only for a refused global.
  torch.save({"w": torch.zeros(2), "note": _Exploit()}, tmp_path / "code.pt")
  with pytest.raises(checkpoint_files.CheckpointFileError) as error:
    read(tmp_path / "code.pt")
  assert "os.system" in str(error.value) or "posix.system" in str(error.value)
  assert "trust_pickle" in str(error.value)


def test_broken_config_and_safetensors_name_the_file(tmp_path):
  (tmp_path / "config.json").write_text('{"model_type": "lxmert", ')
  with pytest.raises(checkpoint_files.CheckpointFileError,
                     match=r"config.json is not valid JSON: .* line 1"):
    lxmert.load(str(tmp_path))
  (tmp_path / "config.json").write_text("{}")
  (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\"")
  with pytest.raises(checkpoint_files.CheckpointFileError, match="model.safetensors is not a valid"):
    lxmert.load(str(tmp_path))


def test_a_nan_weight_is_refused_naming_the_tensor():
  config = lxmert.tiny_config()
  template = jax.eval_shape(lambda: lxmert.init_params(config, jax.random.key(0)))
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(template)[0]:
    names = [p.key for p in path]
    key = ".".join(n.rsplit("_", 1)[0] + "." + n.rsplit("_", 1)[1] if n.rsplit("_", 1)[-1]
                   .isdigit() else n for n in names[:-1])
    leaf_name = {"kernel": "weight", "embedding": "weight", "scale": "weight"}.get(names[-1],
                                                                                  names[-1])
    value = np.zeros(leaf.shape, np.float32)
    flat[f"{key}.{leaf_name}"] = value.T if names[-1] == "kernel" else value
  flat["cls.seq_relationship.bias"][1] = np.inf
  with pytest.raises(common.NonFiniteWeights, match="cls.seq_relationship.bias"):
    common.torch_to_flax(flat, template, source="test")


# ------------------------------------------------------------------------------------------
# Data: bad rows under the stop/skip policy, duplicates reported, counts exact.


def _region_row(image_id, boxes, feats, w=100, h=40):
  record = features.RegionRecord(image_id, h, w, np.asarray(boxes, np.float32),
                                 np.asarray(feats, np.float32), np.arange(len(boxes), dtype=np.int32),
                                 np.ones(len(boxes), np.float32))
  return features.encode_region_row(record, "obj36")


@pytest.mark.parametrize("boxes, feats, expected", [
    ([[0, 0, 10, 10]], [[np.nan, 0, 0, 0]], "features hold 1 NaN or Inf"),
    ([[0, 0, 10, 10]], [[np.inf, 0, 0, 0]], "features hold 1 NaN or Inf"),
    ([[10, 0, 5, 10]], [[0, 0, 0, 0]], "inverted"),
    ([[0, 0, 150, 10]], [[0, 0, 0, 0]], "outside the 100x40 image"),
    (np.zeros((0, 4)), np.zeros((0, 4)), "num_boxes=0"),
])
def test_bad_region_rows_name_file_line_and_image(tmp_path, boxes, feats, expected):
  path = tmp_path / "obj36.tsv"
  path.write_text(_region_row(1, [[0, 0, 5, 5]], [[1, 2, 3, 4]]) + "\n"
                  + _region_row(2, boxes, feats) + "\n")
  with pytest.raises(features.FeatureError) as error:
    list(features.RegionTsvReader(str(path), feature_dim=4))
  assert f"{path}:2 (image 2)" in str(error.value) and expected in str(error.value)
  reader = features.RegionTsvReader(str(path), feature_dim=4, on_error="skip")
  assert [r.image_id for r in reader] == [1] and reader.policy.skipped == 1


def test_nan_fc_file_is_a_bad_row(tmp_path):
  np.save(tmp_path / "1.npy", np.ones(4, np.float32))
  np.save(tmp_path / "2.npy", np.array([0, np.nan, 0, 0], np.float32))
  with pytest.raises(features.FeatureError, match=r"2.npy: fc features hold 1 NaN"):
    list(features.FcFolderReader(str(tmp_path), feature_dim=4))


def test_duplicate_image_ids_are_reported(tmp_path, caplog):
  path = tmp_path / "obj36.tsv"
  rows = [_region_row(i, [[0, 0, 5, 5]], [[i, 0, 0, 0]]) for i in (1, 2, 1)]
  path.write_text("\n".join(rows) + "\n")
  with caplog.at_level(logging.WARNING):
    store = feature_store.build_region_store([str(path)], str(tmp_path / "store"), max_regions=2,
                                             feature_dim=4)
  assert sorted(store.ids.tolist()) == [1, 2]
  assert f"image 1 appears again at {path}:3" in caplog.text
  assert "1 duplicate image ids" in caplog.text


def _karpathy(tmp_path, images):
  path = tmp_path / "dataset_coco.json"
  path.write_text(json.dumps({"images": images}))
  return str(path)


def _image(cocoid, split="train", tokens=("a", "dog")):
  return {"cocoid": cocoid, "split": split, "filepath": "train2014", "filename": f"{cocoid}.jpg",
          "sentences": [{"tokens": list(tokens) if not isinstance(tokens, str) else tokens}]}


@pytest.mark.parametrize("images, expected", [
    ([_image(1), _image("abc")], "images[1]: field 'cocoid': expected an integer image id; "
                                 "found 'abc'"),
    ([_image(1, tokens="a dog")], "images[0]: field 'sentences[0].tokens': expected a list of "
                                  "word strings; found 'a dog'"),
    ([_image(1), _image(1, split="test")], "images[1] has cocoid 1 (split 'test'), which "
                                           "images[0] already has (split 'train')"),
    ([_image(1, split="holdout")], "images[0]: field 'split'"),
    ([{"cocoid": 1, "split": "train"}], "images[0]: lacks field 'filename'"),
])
def test_malformed_karpathy_rows_are_named(tmp_path, images, expected):
  path = _karpathy(tmp_path, images)
  with pytest.raises(features.FeatureError) as error:
    coco.read_karpathy_json(path)
  assert str(error.value).startswith(path) and expected in str(error.value)


def test_skip_counts_equal_what_was_dropped(tmp_path):
  policy = features.ErrorPolicy("skip", "images")
  images = [coco.CocoImage(i, "train", [["a"]]) for i in range(6)]
  kept = coco._check_available(images, "train", np.array([1, 0, 1, 0, 0, 0], bool),  # pylint: disable=protected-access
                               "fc features", policy)
  assert len(kept) == 2 and policy.skipped == 4
