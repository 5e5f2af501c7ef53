"""Builds the Dataset a config names: the synthetic world (cached) or COCO.

The synthetic world is generated once per world config and cached as two files that cannot run
code when read: `synthetic_<hash>.npz` (every array, loaded with `allow_pickle=False`) and
`synthetic_<hash>.json` (vocabulary, references, description, and the npz's size), the JSON
written last so that its presence means the pair is complete. The project writes no pickles.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import zipfile

import numpy as np

from vlprobe_jax.data.dataset import Dataset
from vlprobe_jax.data.vocab import Vocab

CACHE_VERSION = 2  # 2: npz + JSON (1 was a pickle, never read again)
_SPLIT_ARRAYS = ("image_ids", "fc_feats", "labels", "pixels", "region_feats", "region_boxes",
                 "region_mask", "image_wh")


def _world_key(world_config) -> str:
  from vlprobe_jax.data import synthetic  # pylint: disable=g-import-not-at-top

  # The generator's version is part of the key, so a changed generator never reuses an old cache.
  text = json.dumps({"v": CACHE_VERSION, "generator": synthetic.GENERATOR_VERSION,
                     **world_config.to_dict()}, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def save_world(dataset: Dataset, prefix: str) -> None:
  """Writes `dataset` (a synthetic world) to `<prefix>.npz` and `<prefix>.json`, atomically."""
  arrays, splits = {}, {}
  for name, split in dataset.splits.items():
    for field in _SPLIT_ARRAYS:
      value = getattr(split, field)
      if value is not None:
        arrays[f"{name}/{field}"] = np.asarray(value)
    scenes = getattr(split, "scenes", None)
    if scenes is not None:
      for field in dataclasses.fields(scenes):
        arrays[f"{name}/scenes/{field.name}"] = np.asarray(getattr(scenes, field.name))
    splits[name] = {"references": split.references}
  npz, meta = f"{prefix}.npz", f"{prefix}.json"
  tmp = f"{npz}.tmp-{os.getpid()}.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, npz)
  payload = {"version": CACHE_VERSION, "words": list(dataset.vocab.words),
             "description": dataset.description, "splits": splits,
             "npz_bytes": os.path.getsize(npz)}
  tmp = f"{meta}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(payload, f)
  os.replace(tmp, meta)


def load_world(prefix: str) -> Dataset | None:
  """The world saved at `prefix`, or None when the pair is missing, incomplete or damaged."""
  from vlprobe_jax.data import synthetic  # pylint: disable=g-import-not-at-top

  npz, meta = f"{prefix}.npz", f"{prefix}.json"
  if not (os.path.exists(npz) and os.path.exists(meta)):
    return None
  try:
    with open(meta, encoding="utf-8") as f:
      payload = json.load(f)
    if payload.get("version") != CACHE_VERSION or payload.get("npz_bytes") != os.path.getsize(npz):
      return None
    with np.load(npz, allow_pickle=False) as data:
      arrays = {key: data[key] for key in data.files}
  except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
    print(f"[data] the cached world {prefix}.* cannot be read ({error}); making it again",
          flush=True)
    return None
  splits = {}
  for name, info in payload["splits"].items():
    fields = {f: arrays.get(f"{name}/{f}") for f in _SPLIT_ARRAYS}
    scene_fields = {f.name: arrays[f"{name}/scenes/{f.name}"]
                    for f in dataclasses.fields(synthetic.Scenes)
                    if f"{name}/scenes/{f.name}" in arrays}
    scenes = synthetic.Scenes(**scene_fields) if scene_fields else None
    splits[name] = synthetic.WorldSplit(name=name, references=info["references"], scenes=scenes,
                                        **fields)
  return Dataset(vocab=Vocab(tuple(payload["words"])), splits=splits,
                 description=payload["description"])


def load(data_config, workdir: str) -> Dataset:
  """The dataset of `data_config` (`config.data`).

  The synthetic world is cached under `<cache_dir or workdir/data>/synthetic_<hash>.*`, so later
  stages and resumed runs reuse it.
  """
  if data_config.name == "synthetic":
    from vlprobe_jax.data import synthetic  # pylint: disable=g-import-not-at-top

    cache_dir = data_config.get("cache_dir") or os.path.join(workdir, "data")
    os.makedirs(cache_dir, exist_ok=True)
    prefix = os.path.join(cache_dir, f"synthetic_{_world_key(data_config.world)}")
    dataset = load_world(prefix)
    if dataset is not None:
      return dataset
    start = time.time()
    print("[data] generating the synthetic world ...", flush=True)
    dataset = synthetic.make_world(data_config.world)
    sizes = ", ".join(f"{name} {len(split)}" for name, split in dataset.splits.items())
    print(f"[data] synthetic world: {sizes} images, {dataset.vocab.size - 1} words "
          f"({time.time() - start:.1f} s); cached at {prefix}.npz", flush=True)
    import jax  # pylint: disable=g-import-not-at-top
    if jax.process_index() == 0:
      save_world(dataset, prefix)
    return dataset
  if data_config.name == "coco":
    from vlprobe_jax.data import coco  # pylint: disable=g-import-not-at-top

    return coco.load_coco(data_config)
  raise ValueError(f"config.data.name must be 'synthetic' or 'coco'; found {data_config.name!r}.")
