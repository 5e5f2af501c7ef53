"""Several processes: the fixes the multi-process run needed, each checked in one process."""

import json
import logging

import jax
import numpy as np

from vlprobe_jax import devices


def test_a_step_on_its_own_output_state_compiles_once():
  step = jax.pmap(lambda s, b: (s + jax.lax.psum(b.sum(), devices.PMAP_AXIS), b.mean()),
                  axis_name=devices.PMAP_AXIS, donate_argnums=(0,))
  local = jax.local_devices()
  state = devices.replicate(np.zeros(3, np.float32), local)
  compiles = []
  handler = logging.Handler()
  handler.emit = lambda record: compiles.append(record.getMessage())
  logger = logging.getLogger("jax._src.interpreters.pxla")
  logger.addHandler(handler)
  try:
    with jax.log_compiles():
      for _ in range(3):
        batch = jax.device_put(np.ones((len(local), 2), np.float32),
                               devices.device_sharding(local))
        state, _ = step(state, batch)
  finally:
    logger.removeHandler(handler)
  assert len([m for m in compiles if m.startswith("Compiling")]) == 1, compiles
  np.testing.assert_allclose(devices.unreplicate(state), np.full(3, 6.0 * len(local)))


def test_step_keys_are_raw_key_data_with_the_same_bits():
  from vlprobe_jax import captioner_stage  # pylint: disable=import-outside-toplevel
  task = captioner_stage.CaptionerTask.__new__(captioner_stage.CaptionerTask)
  task.devices = jax.local_devices()
  keys = task.step_keys(jax.random.key(3), 5)
  assert keys.dtype == np.uint32 and keys.shape == (len(task.devices), 2)
  typed = devices.device_keys(jax.random.key(3), 5, len(task.devices))
  np.testing.assert_array_equal(keys, jax.random.key_data(typed))


def test_unreplicate_reads_the_first_local_copy():
  tree = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "step": np.int32(7)}
  host = devices.unreplicate(devices.replicate(tree))
  np.testing.assert_array_equal(host["w"], tree["w"])
  assert isinstance(host["step"], np.ndarray) and host["step"].shape == () and host["step"] == 7
  assert devices.unreplicate({"x": np.array([[1, 2], [1, 2]])})["x"].tolist() == [1, 2]


def test_the_best_checkpoint_decision_does_not_read_back_the_file(tmp_path):
  from vlprobe_jax import checkpoints  # pylint: disable=import-outside-toplevel
  ckpt = checkpoints.StageCheckpoints(str(tmp_path), {"stage": "t"})
  state = {"w": np.zeros(2, np.float32)}
  assert ckpt.maybe_save_best(1, state, 0.5)
  # Another process's view of best_score.json can lag; the decision uses what this one saved.
  (tmp_path / "best_score.json").write_text(json.dumps({"score": 9.0, "step": 1}))
  assert ckpt.maybe_save_best(2, state, 0.7)
  assert not ckpt.maybe_save_best(3, state, 0.6)
  assert (ckpt.best_score(), ckpt.best_step()) == (0.7, 2)
  ckpt.close()
  assert json.loads((tmp_path / "best_score.json").read_text()) == {"score": 0.7, "step": 2}
