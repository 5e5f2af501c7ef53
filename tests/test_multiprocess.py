"""Several processes: the fixes the multi-process run needed, each checked in one process."""

import json
import logging
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np

from tests import helpers
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


# --- Two JAX processes through launch.py (issue: several processes for real) -------------------

_LAUNCH_ARGS = ("--config=configs/scst_lxmert.py:runlocal",)
_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(record, workdir, devices_per_process, extra=(), process_id=None, port=None):
  """Starts launch.py under tests/multiprocess_harness.py; returns the Popen (stdout in a file)."""
  env = helpers.forced_devices_env(devices_per_process)
  args = [sys.executable, str(_ROOT / "tests" / "multiprocess_harness.py"), str(record),
          str(workdir), "--", *_LAUNCH_ARGS, f"--workdir={workdir}", *extra]
  if process_id is not None:
    args += ["--multihost", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
             f"--process_id={process_id}", "--cpu_collectives=gloo"]
  with open(f"{record}.log", "w", encoding="utf-8") as log:  # the child keeps its own copy
    return subprocess.Popen(args, cwd=_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _wait(procs, timeout=400):
  for p in procs:
    p.wait(timeout=timeout)


def _records(path):
  return [json.loads(line) for line in open(path, encoding="utf-8")]


def _params(workdir, stage, step):
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  path = workdir / stage / "checkpoints" / "latest" / str(step) / "default"
  return ocp.StandardCheckpointer().restore(str(path))["params"]


def _two_processes(tmp_path, workdir, tag, port):
  return [_launch(tmp_path / f"{tag}{i}.jsonl", workdir, 2, ("--config.stages=xe,scst",), i, port)
          for i in range(2)]


def test_two_processes_train_as_one_resume_after_a_kill_and_only_process_0_writes(tmp_path):
  # One process with 4 devices: the reference (and the synthetic world and tiny scorer); the
  # stages after SCST are not what this test compares.
  single = tmp_path / "single"
  ref = _launch(tmp_path / "single.jsonl", single, 4, ("--config.stages=data,scorers,xe,scst",))
  _wait([ref])
  assert ref.returncode == 0, (tmp_path / "single.jsonl.log").read_text()[-3000:]

  # Two processes x 2 devices on the same world and scorer: killed after XE's first checkpoint.
  multi = tmp_path / "multi"
  multi.mkdir()
  for part in ("data", "scorers"):
    shutil.copytree(single / part, multi / part)
  procs = _two_processes(tmp_path, multi, "killed", _free_port())
  first_checkpoint = multi / "xe" / "checkpoints" / "latest" / "3"
  deadline = time.monotonic() + 400
  while not first_checkpoint.exists() and time.monotonic() < deadline:
    assert all(p.poll() is None for p in procs), (tmp_path / "killed0.jsonl.log").read_text()
    time.sleep(0.05)
  for p in procs:
    p.kill()
  _wait(procs)
  assert [p.returncode for p in procs] == [-signal.SIGKILL] * 2
  assert not (multi / "summary.json").exists()

  procs = _two_processes(tmp_path, multi, "resumed", _free_port())
  _wait(procs)
  logs = [(tmp_path / f"resumed{i}.jsonl.log").read_text() for i in range(2)]
  assert [p.returncode for p in procs] == [0, 0], logs
  assert "resum" in logs[0]

  # The same parameters as one process over the same global batches (float32 sums in another
  # order: measured 1.2e-6 at most).
  for stage, step in (("xe", 6), ("scst", 4)):
    want, got = _params(single, stage, step), _params(multi, stage, step)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), want, got)

  # Each process asked for its own half of every global batch, and together for all of it.
  def rows(path):
    return {(r["num_images"], r["step"]): r["rows"] for r in _records(path) if "rows" in r}
  reference = rows(tmp_path / "single.jsonl")
  for tag in ("killed", "resumed"):
    halves = [rows(tmp_path / f"{tag}{i}.jsonl") for i in range(2)]
    assert halves[0].keys() == halves[1].keys() and halves[0]
    for key in halves[0]:
      assert not set(halves[0][key]) & set(halves[1][key])
      assert sorted(halves[0][key] + halves[1][key]) == sorted(reference[key])

  # Only process 0 writes files (process 1 may create a folder both need); process 1 prints its
  # launch line and nothing of the training's progress.
  for tag in ("killed", "resumed"):
    writes = [r for r in _records(tmp_path / f"{tag}1.jsonl") if "write" in r]
    assert all(r["event"] == "os.mkdir" for r in writes), writes
    assert any("metrics.jsonl" in r["write"] for r in _records(tmp_path / f"{tag}0.jsonl")
               if "write" in r)
  assert "[xe" not in logs[1] and "[scst" not in logs[1] and "process 1 of 2" in logs[1]
  assert (multi / "summary.json").exists()
  assert sorted(os.listdir(multi / "scst" / "checkpoints" / "latest")) == sorted(
      os.listdir(single / "scst" / "checkpoints" / "latest"))
