"""The XE step, its schedules, resume, checkpoint compatibility and multi-device equality."""

import json
import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests import helpers
from vlprobe_jax import captioner_stage
from vlprobe_jax import checkpoints
from vlprobe_jax import training
from vlprobe_jax import xe
from vlprobe_jax.data import pipeline


def test_shift_labels_covers_words_and_first_eos():
  labels = jnp.array([[5, 6, 7, 0, 0], [4, 0, 0, 0, 0], [1, 2, 3, 4, 5]])
  inputs, targets, mask = xe.shift_labels(labels)
  np.testing.assert_array_equal(inputs[0], [0, 5, 6, 7, 0, 0])
  np.testing.assert_array_equal(targets[0], [5, 6, 7, 0, 0, 0])
  np.testing.assert_array_equal(mask[0], [1, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(mask[1], [1, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(mask[2], [1, 1, 1, 1, 1, 1])


def test_paper_schedules():
  # Scheduled sampling: +0.05 every 5 epochs up to 0.25.
  probs = [xe.scheduled_sampling_prob(e, 0, 5, 0.05, 0.25) for e in (0, 4, 5, 12, 29, 40)]
  np.testing.assert_allclose(probs, [0.0, 0.0, 0.05, 0.10, 0.25, 0.25])
  assert xe.scheduled_sampling_prob(10, -1, 5, 0.05, 0.25) == 0.0
  # Learning rate x0.8 every 3 epochs (100 steps an epoch here), gradients clipped by value.
  opt = training.make_optimizer(5e-4, 0.1, decay_every_steps=300, decay_rate=0.8)
  params = {"w": jnp.zeros(3)}
  state = opt.init(params)
  grads = {"w": jnp.array([10.0, -10.0, 0.05])}
  updates, _ = opt.update(grads, state, params)
  # First Adam step is lr * sign(g) for clipped g; the clip keeps 0.05 as is.
  np.testing.assert_allclose(updates["w"], [-5e-4, 5e-4, -5e-4], rtol=1e-3)
  schedule = [optax.exponential_decay(5e-4, 300, 0.8, staircase=True)(s) for s in (0, 299, 300, 900)]
  np.testing.assert_allclose(schedule, [5e-4, 5e-4, 4e-4, 5e-4 * 0.8 ** 3], rtol=1e-6)


def _metrics_steps(stage_dir):
  with open(os.path.join(stage_dir, "metrics.jsonl")) as f:
    return [json.loads(line)["step"] for line in f]


def test_interrupted_run_resumes_where_it_stopped(tmp_path):
  dataset = helpers.tiny_dataset()
  config = helpers.tiny_config(str(tmp_path))
  stage_dir = str(tmp_path / "xe")
  first = xe.train(config, dataset, stage_dir, max_steps_this_run=4)  # "killed" at 4
  assert first.params is None and not first.finished
  cap_config = captioner_stage.captioner_config(config, dataset.vocab.size)
  ckpt = checkpoints.StageCheckpoints(f"{stage_dir}/checkpoints",
                                      captioner_stage.checkpoint_meta("xe", cap_config))
  assert ckpt.latest_step() == 4
  ckpt.close()
  result = xe.train(config, dataset, stage_dir)  # the same command again
  assert result.finished and result.params is not None and result.best_step in (4, 8)
  # Logs at 2, 4 (first run), then 6, 8 (second): one row per step, no restart at 2.
  assert _metrics_steps(stage_dir) == [2, 4, 6, 8]


def test_incompatible_checkpoint_is_reported(tmp_path):
  dataset = helpers.tiny_dataset()
  config = helpers.tiny_config(str(tmp_path))
  xe.train(config, dataset, str(tmp_path / "xe"), max_steps_this_run=2)
  config.captioner.rnn_size = 32
  with pytest.raises(checkpoints.IncompatibleCheckpoint, match="rnn_size"):
    xe.train(config, dataset, str(tmp_path / "xe"))


_MULTI_DEVICE_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from vlprobe_jax import captioner, devices as devices_lib, training, xe
    assert jax.local_device_count() == 8, jax.local_device_count()
    # Dropout and scheduled sampling off: their keys differ per device by design.
    config = captioner.CaptionerConfig(vocab_size=12, fc_dim=6, embed_size=8, rnn_size=8,
                                       dropout=0.0)
    rng = np.random.default_rng(0)
    batch = {"fc_feats": rng.normal(size=(16, 6)).astype(np.float32),
             "labels": rng.integers(1, 12, size=(16, 5, 7)).astype(np.int32)}
    batch["labels"][:, :, 4:] *= rng.integers(0, 2, size=(16, 5, 3))  # ragged lengths
    params = captioner.init_params(config, jax.random.key(0))
    results = []
    for devices in (jax.local_devices()[:1], jax.local_devices()):
      state = training.TrainState.create(apply_fn=None, params=params,
                                         tx=training.make_optimizer(1e-2, 0.1))
      step = jax.pmap(lambda s, b, r, p: xe.xe_train_step(s, b, r, p, config=config),
                      axis_name=training.AXIS, devices=devices)
      n = len(devices)
      replicated = devices_lib.replicate(state, devices)
      for i in range(3):
        replicated, m = step(replicated, devices_lib.shard(batch, n),
                             jax.random.split(jax.random.key(i), n), jnp.zeros((n,)))
      results.append((devices_lib.unreplicate(replicated).params, float(m["train/loss"][0])))
    (p1, l1), (p8, l8) = results
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
               zip(jax.tree.leaves(p1), jax.tree.leaves(p8)))
    print("MAXDIFF", diff, "LOSS", l1, l8)
    assert abs(l1 - l8) < 1e-5, (l1, l8)
    assert diff < 1e-5, diff
""")


def test_eight_devices_equal_one_device():
  env = helpers.forced_devices_env(8)
  result = subprocess.run([sys.executable, "-c", _MULTI_DEVICE_SCRIPT], env=env,
                          capture_output=True, text=True, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
  assert result.returncode == 0, result.stdout + result.stderr
  assert "MAXDIFF" in result.stdout


def test_hosts_split_the_global_batch():
  whole = pipeline.EpochRows(100, 8, seed=3, process_index=0, process_count=1).local_rows(17)[0]
  parts = [pipeline.EpochRows(100, 8, seed=3, process_index=p, process_count=4).local_rows(17)[0]
           for p in range(4)]
  np.testing.assert_array_equal(np.concatenate(parts), whole)
  # Every image once per epoch (12 whole batches of 8 out of 100 images).
  rows = pipeline.EpochRows(100, 8, seed=3, process_index=0, process_count=1)
  epoch = np.concatenate([rows.local_rows(s)[0] for s in range(12)])
  assert len(set(epoch.tolist())) == 96
