"""Builds the Dataset a config names: the synthetic world (cached) or COCO."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import time

from vlprobe_jax.data.dataset import Dataset

CACHE_VERSION = 1


def _world_key(world_config) -> str:
  from vlprobe_jax.data import synthetic  # pylint: disable=g-import-not-at-top

  # The generator's version is part of the key, so a changed generator never reuses an old cache.
  text = json.dumps({"v": CACHE_VERSION, "generator": synthetic.GENERATOR_VERSION,
                     **world_config.to_dict()}, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def load(data_config, workdir: str) -> Dataset:
  """The dataset of `data_config` (`config.data`).

  The synthetic world is generated once per world config and cached as
  `<cache_dir or workdir/data>/synthetic_<hash>.pkl` (written atomically), so later stages and
  resumed runs reuse it.
  """
  if data_config.name == "synthetic":
    from vlprobe_jax.data import synthetic  # pylint: disable=g-import-not-at-top

    cache_dir = data_config.get("cache_dir") or os.path.join(workdir, "data")
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, f"synthetic_{_world_key(data_config.world)}.pkl")
    if os.path.exists(path):
      with open(path, "rb") as f:
        return pickle.load(f)
    start = time.time()
    print("[data] generating the synthetic world ...", flush=True)
    dataset = synthetic.make_world(data_config.world)
    sizes = ", ".join(f"{name} {len(split)}" for name, split in dataset.splits.items())
    print(f"[data] synthetic world: {sizes} images, {dataset.vocab.size - 1} words "
          f"({time.time() - start:.1f} s); cached at {path}", flush=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
      pickle.dump(dataset, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)
    return dataset
  if data_config.name == "coco":
    from vlprobe_jax.data import coco  # pylint: disable=g-import-not-at-top

    return coco.load_coco(data_config)
  raise ValueError(f"config.data.name must be 'synthetic' or 'coco'; found {data_config.name!r}.")
