"""The one input pipeline: EpochRows (order per seed, coverage per epoch, process shards) and
BatchIterator (device layout, prefetch thread, errors, wait time, function sources)."""

import os
import subprocess
import sys
import textwrap
import threading
import time

import jax
import numpy as np
import pytest

from vlprobe_jax.data import feature_store
from vlprobe_jax.data.pipeline import BatchIterator, EpochRows
from tests import helpers


def _iterate(arrays, batch_size, *, seed, num_epochs=None, start_step=0, devices=None,
             sharding=None, prefetch=2, **rows_args):
  """A BatchIterator over `arrays` in shuffled epochs, as the training stages build it."""
  rows = EpochRows(len(next(iter(arrays.values()))), batch_size, seed=seed, **rows_args)
  stop = None if num_epochs is None else num_epochs * rows.steps_per_epoch
  return BatchIterator(rows.source(arrays), start_step=start_step, stop_step=stop,
                       devices=devices, sharding=sharding, prefetch=prefetch)


def _arrays(n=23):
  return {"image_index": np.arange(n), "feats": np.arange(n * 3, dtype=np.float32).reshape(n, 3)}


def _take(iterator, count):
  batches = []
  for batch in iterator:
    batches.append(batch)
    if len(batches) == count:
      break
  return batches


def test_order_is_deterministic_per_seed_and_changes_per_epoch():
  a = [b["image_index"] for b in _take(_iterate(_arrays(), 5, seed=1, num_epochs=2), 8)]
  b = [b["image_index"] for b in _take(_iterate(_arrays(), 5, seed=1, num_epochs=2), 8)]
  c = [b["image_index"] for b in _take(_iterate(_arrays(), 5, seed=2, num_epochs=2), 8)]
  np.testing.assert_array_equal(np.stack(a), np.stack(b))
  assert not np.array_equal(np.stack(a), np.stack(c))
  assert not np.array_equal(np.concatenate(a[:4]), np.concatenate(a[4:]))  # New epoch, new order.
  plain = [b["image_index"] for b in _iterate(_arrays(), 5, seed=1, shuffle=False,
                                                   num_epochs=1)]
  np.testing.assert_array_equal(np.concatenate(plain), np.arange(20))


def test_every_image_once_per_epoch():
  iterator = _iterate(_arrays(), 5, seed=3, num_epochs=3)
  batches = list(iterator)
  assert len(batches) == 12 and iterator.step == 11
  for epoch in range(3):
    rows = np.concatenate([b["image_index"] for b in batches[epoch * 4:(epoch + 1) * 4]])
    assert len(set(rows.tolist())) == 20  # 23 images, 3 dropped with the short batch.
  for batch in batches:
    np.testing.assert_array_equal(batch["feats"][:, 0], batch["image_index"] * 3)


def test_without_drop_remainder_the_padding_is_marked():
  batches = list(_iterate(_arrays(), 5, seed=4, drop_remainder=False, num_epochs=1))
  assert len(batches) == 5 and all(len(b["image_index"]) == 5 for b in batches)
  real = np.concatenate([b["image_index"][b["valid"]] for b in batches])
  assert sorted(real.tolist()) == list(range(23))
  assert batches[-1]["valid"].tolist() == [True, True, True, False, False]


def test_process_shards_are_disjoint_and_cover_each_global_batch():
  count = 3
  shards = [list(_iterate(_arrays(), 6, seed=5, process_index=p, process_count=count,
                               num_epochs=1)) for p in range(count)]
  whole = list(_iterate(_arrays(), 6, seed=5, process_index=0, process_count=1,
                             num_epochs=1))
  assert all(len(s) == len(whole) == 3 for s in shards)
  for step, global_batch in enumerate(whole):
    parts = [shards[p][step]["image_index"] for p in range(count)]
    assert all(len(part) == 2 for part in parts)
    assert len(set(np.concatenate(parts).tolist())) == 6
    np.testing.assert_array_equal(np.concatenate(parts), global_batch["image_index"])
  with pytest.raises(ValueError, match="multiple of the process count"):
    EpochRows(23, 5, seed=0, process_index=0, process_count=3)
  with pytest.raises(ValueError, match="make no batch"):
    EpochRows(3, 5, seed=0)


def test_start_step_resumes_the_uninterrupted_order():
  whole = [b["image_index"] for b in _iterate(_arrays(), 5, seed=6, num_epochs=2)]
  resumed = [b["image_index"] for b in _iterate(_arrays(), 5, seed=6, num_epochs=2,
                                                     start_step=5)]
  np.testing.assert_array_equal(np.stack(resumed), np.stack(whole[5:]))


def test_pmap_layout_and_global_sharding_on_local_devices():
  devices = jax.local_devices()
  n = len(devices)
  (batch,) = _take(_iterate(_arrays(8 * n), 4 * n, seed=7, devices=devices), 1)
  assert batch["feats"].shape == (n, 4, 3) and isinstance(batch["feats"], jax.Array)
  np.testing.assert_array_equal(np.asarray(batch["feats"])[..., 0],
                                np.asarray(batch["image_index"]) * 3)
  mesh = jax.sharding.Mesh(np.array(devices), ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  (batch,) = _take(_iterate(_arrays(8 * n), 4 * n, seed=7, sharding=sharding), 1)
  assert batch["feats"].shape == (4 * n, 3) and batch["feats"].sharding == sharding


def test_four_forced_cpu_devices_feed_pmap():
  code = textwrap.dedent("""
      import jax, numpy as np
      from vlprobe_jax.data.pipeline import BatchIterator, EpochRows
      assert jax.local_device_count() == 4
      arrays = {"x": np.arange(32, dtype=np.float32)}
      it = BatchIterator(EpochRows(32, 8, seed=0).source(arrays), stop_step=4,
                         devices=jax.local_devices())
      sums = [jax.pmap(lambda x: x.sum())(b["x"]) for b in it]
      assert sums[0].shape == (4,), sums[0].shape
      assert float(sum(s.sum() for s in sums)) == float(np.arange(32).sum())
      print("ok")
  """)
  env = helpers.forced_devices_env(4)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


def test_prefetch_thread_stops_cleanly():
  iterator = _iterate(_arrays(), 5, seed=8, prefetch=3)  # Endless.
  before = threading.active_count()
  _take(iterator, 2)
  # Leaving the loop closes the generator, which stops and joins the thread.
  assert iterator._thread is None and threading.active_count() == before
  with _iterate(_arrays(), 5, seed=8) as iterator:
    stream = iter(iterator)
    next(stream)
    thread = iterator._thread
    assert thread.is_alive()
  assert not thread.is_alive()


class _Slow:
  """An array whose rows take `delay` seconds per batch to read; fails at `fail_at` reads."""

  def __init__(self, n, delay, fail_at=None):
    self.n, self.delay, self.fail_at, self.reads = n, delay, fail_at, 0

  def __len__(self):
    return self.n

  def __getitem__(self, rows):
    self.reads += 1
    if self.reads == self.fail_at:
      raise OSError("disk gone")
    time.sleep(self.delay)
    return np.asarray(rows)


def test_errors_in_the_thread_reach_the_consumer():
  iterator = _iterate({"x": _Slow(20, 0.0, fail_at=3)}, 5, seed=9)
  with pytest.raises(OSError, match="disk gone"):
    list(iterator)
  assert iterator._thread is None


def test_wait_time_is_recorded():
  slow = _iterate({"x": _Slow(40, 0.05)}, 5, seed=10, num_epochs=1)
  list(slow)
  assert slow.wait_seconds >= 0.2  # 8 batches of 0.05 s each, the consumer doing nothing.
  fast = _iterate({"x": _Slow(40, 0.0)}, 5, seed=10, num_epochs=1, prefetch=8)
  for _ in fast:
    time.sleep(0.02)  # A consumer slower than the data: it should barely wait.
  assert fast.wait_seconds < slow.wait_seconds / 2


def test_lazy_store_columns_are_batched(tmp_path):
  os.makedirs(tmp_path / "fc")
  want = {i: np.full(4, i, np.float32) for i in range(30, 42)}
  for i, x in want.items():
    np.save(tmp_path / "fc" / f"{i}.npy", x)
  store = feature_store.build_fc_store(str(tmp_path / "fc"), str(tmp_path / "store"),
                                       feature_dim=4, shard_size=5)
  ids = np.array(sorted(want))[::-1].copy()
  iterator = _iterate({"id": ids, "fc": store.column("fc", ids)}, 4, seed=11, num_epochs=1)
  for batch in iterator:
    np.testing.assert_array_equal(batch["fc"][:, 0], batch["id"])


def test_a_function_source_gets_its_steps_in_order_from_the_start_step():
  seen = []

  def source(step):
    seen.append(step)
    return {"step": np.full((2,), step)}

  batches = list(BatchIterator(source, start_step=3, stop_step=7, prefetch=1))
  assert [int(b["step"][0]) for b in batches] == [3, 4, 5, 6] and seen == [3, 4, 5, 6]


def test_nested_arrays_are_gathered_by_row():
  arrays = {"fc": np.arange(12.0).reshape(6, 2), "images": {"mask": np.arange(6)[:, None]}}
  (batch,) = list(_iterate(arrays, 3, seed=0, num_epochs=1, shuffle=False))[:1]
  np.testing.assert_array_equal(batch["images"]["mask"][:, 0], [0, 1, 2])
  np.testing.assert_array_equal(batch["fc"][:, 0], [0.0, 2.0, 4.0])
