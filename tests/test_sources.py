"""The synthetic world's cache: npz + JSON that round-trips exactly and can never run code."""

import os
import pickle

import ml_collections
import numpy as np
import pytest

from vlprobe_jax.data import sources
from vlprobe_jax.data import synthetic

WORLD = dict(num_train=12, num_val=4, num_test=4)


def _data_config(cache_dir):
  world = synthetic.default_world_config()
  world.update(**WORLD)
  return ml_collections.ConfigDict(dict(name="synthetic", world=world, cache_dir=str(cache_dir)))


def _assert_same(a, b):
  assert a.vocab == b.vocab and a.description == b.description
  for name in ("train", "val", "test"):
    x, y = a[name], b[name]
    assert x.references == y.references
    for field in sources._SPLIT_ARRAYS:  # pylint: disable=protected-access
      np.testing.assert_array_equal(getattr(x, field), getattr(y, field))
      assert getattr(x, field).dtype == getattr(y, field).dtype
    np.testing.assert_array_equal(x.scenes.boxes, y.scenes.boxes)


def test_cache_round_trips_exactly(tmp_path):
  config = _data_config(tmp_path)
  made = sources.load(config, str(tmp_path))
  assert sorted(os.listdir(tmp_path))[0].endswith(".json")  # npz + json, no pickle
  assert not [f for f in os.listdir(tmp_path) if f.endswith(".pkl")]
  _assert_same(sources.load(config, str(tmp_path)), made)


class _Exploit:
  """Unpickling this runs a command that creates a marker file."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_a_malicious_file_where_the_cache_was_runs_nothing(tmp_path):
  config = _data_config(tmp_path)
  made = sources.load(config, str(tmp_path))
  prefix = os.path.join(tmp_path, f"synthetic_{sources._world_key(config.world)}")  # pylint: disable=protected-access
  marker = tmp_path / "pwned"
  # The old pickle cache's name, and a pickle under the npz's name: neither is unpickled.
  for path in (f"{prefix}.pkl", f"{prefix}.npz"):
    with open(path, "wb") as f:
      pickle.dump(_Exploit(marker), f)
  with pytest.raises(Exception):  # pylint: disable=broad-exception-caught
    np.load(f"{prefix}.npz", allow_pickle=False)  # What the loader calls: refuses pickles.
  reloaded = sources.load(config, str(tmp_path))  # Damaged: made again, deterministically.
  assert not marker.exists()
  _assert_same(reloaded, made)
  # An npz with an object array (pickled inside the zip) is refused the same way.
  np.savez(f"{prefix}.npz", **{"train/image_ids": np.array([_Exploit(marker)], dtype=object)})
  sources.load(config, str(tmp_path))
  assert not marker.exists()


def test_a_truncated_cache_is_made_again(tmp_path):
  config = _data_config(tmp_path)
  made = sources.load(config, str(tmp_path))
  (npz,) = [f for f in os.listdir(tmp_path) if f.endswith(".npz")]
  with open(tmp_path / npz, "r+b") as f:
    f.truncate(100)
  _assert_same(sources.load(config, str(tmp_path)), made)
