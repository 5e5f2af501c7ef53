"""Feature stores: built once from the released feature files, then read by image id, fast.

A store is a directory:

  manifest.json              kind, per-image field shapes and dtypes, the complete shards
  shard-00000.ids.npy        [n] int64 COCO image ids of the shard's rows
  shard-00000.<field>.npy    [n, ...] one array per field, row i belongs to ids[i]
  ...

Shards are plain `.npy` files opened as read-only memory maps, so a 36 GB region store costs
no RAM until rows are read. Kinds and their fields:

  fc       fc [D] float32                        self-critical's `<cocoid>.npy` folder
  clip     embedding [D] float32                 images through a caller's `embed_fn`
  regions  feats [R, D] float32 (or float16),    LXMERT obj36 TSV or ROSITA TSV
           boxes [R, 4] float32 x1/W, y1/H, x2/W, y2/H, mask [R] int32,
           image_wh [2] int32, objects_id [R] int32 (-1 pads), objects_conf [R] float32
  pixels   pixels [S, S, 3] uint8                a COCO image folder, resized for the pixel
                                                 scorers (SigLIP, BLIP: the whole image to
                                                 S x S; CLIP: shorter side, centre crop)

Builds are resumable: a shard is written under a temporary name, fsync-ed, renamed, and only
then listed in the manifest (itself replaced atomically), so a reader never sees a shard that
is still being written, and a rerun of the same command skips the images of listed shards.

Built by `builders.py`; the command line is `python -m vlprobe_jax.data.feature_store`
(`__main__.py`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time

import numpy as np

from vlprobe_jax.data import features

log = logging.getLogger(__name__)

FORMAT = "vlprobe-feature-store"
VERSION = 1
MANIFEST = "manifest.json"
KINDS = ("fc", "clip", "regions", "pixels")
# pixels: 1,024 images of 384 x 384 x 3 bytes are 450 MB a shard.
DEFAULT_SHARD_SIZE = {"fc": 16384, "clip": 16384, "regions": 4096, "pixels": 1024}
BUILD_COMMAND = ("python -m vlprobe_jax.data.feature_store build --kind {kind} --source ... "
                 "--out {out}")


def _fsync_dir(path: str) -> None:
  """Makes a rename inside `path` durable (a no-op where directories cannot be opened)."""
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def _write_npy(path: str, array: np.ndarray) -> None:
  """Writes `array` to `path` via a temporary name, fsync and rename."""
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _read_manifest(path: str) -> dict | None:
  manifest = os.path.join(path, MANIFEST)
  if not os.path.isfile(manifest):
    return None
  with open(manifest) as f:
    data = json.load(f)
  if data.get("format") != FORMAT or data.get("version") != VERSION:
    raise ValueError(f"{manifest}: not a {FORMAT} v{VERSION} manifest (format="
                     f"{data.get('format')!r}, version={data.get('version')!r}); use another "
                     "--out or rebuild the store.")
  return data


class StoreColumn:
  """One field of a store for a fixed list of image ids, read on access.

  Behaves like an [N, ...] array for indexing (`column[3]`, `column[2:5]`, `column[[4, 1]]`,
  boolean masks) and `np.asarray(column)`; only the rows asked for are read.
  """

  def __init__(self, store: "FeatureStore", field: str, shards: np.ndarray, rows: np.ndarray):
    self.store = store
    self.field = field
    self._shards = shards
    self._rows = rows
    shape, dtype = store.fields[field]
    self.dtype = np.dtype(dtype)
    self.shape = (len(rows),) + tuple(shape)

  @property
  def ndim(self) -> int:
    return len(self.shape)

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, index) -> np.ndarray:
    if isinstance(index, (int, np.integer)):
      return self[np.array([index])][0]
    selected = np.arange(len(self))[index]
    shards, rows = self._shards[selected], self._rows[selected]
    out = np.empty((len(selected),) + self.shape[1:], self.dtype)
    for shard in np.unique(shards):
      take = shards == shard
      out[take] = self.store.shard_array(int(shard), self.field)[rows[take]]
    return out

  def __array__(self, dtype=None, copy=None):
    del copy  # Always a fresh array.
    out = self[:]
    return out if dtype is None else out.astype(dtype)


class FeatureStore:
  """Read side of a store: features by COCO image id.

  Attributes:
    path: the store directory.
    kind: "fc", "clip", "regions" or "pixels".
    fields: field name -> (per-image shape, dtype name).
    ids: [M] int64 every image id in the complete shards, in storage order.
    finished: whether the build went through its whole source.
  """

  def __init__(self, path: str, kind: str | None = None):
    manifest = _read_manifest(path)
    if manifest is None:
      raise FileNotFoundError(
          f"{path}: no feature store here ({MANIFEST} missing). Build it with "
          + BUILD_COMMAND.format(kind=kind or "fc|regions|clip", out=path))
    if kind is not None and manifest["kind"] != kind:
      raise ValueError(f"{path}: a {manifest['kind']!r} store; expected a {kind!r} store. Check "
                       "which store the config field points to.")
    self.path = path
    self.kind = manifest["kind"]
    self.fields = {name: (tuple(spec["shape"]), spec["dtype"])
                   for name, spec in manifest["fields"].items()}
    self.finished = bool(manifest.get("finished"))
    self._shard_names = [shard["name"] for shard in manifest["shards"]]
    self._arrays = {}
    self._lock = threading.Lock()
    ids = [np.load(self._file(i, "ids")) for i in range(len(self._shard_names))]
    for i, (shard, shard_ids) in enumerate(zip(manifest["shards"], ids)):
      if len(shard_ids) != shard["count"]:
        raise ValueError(f"{self._file(i, 'ids')}: {len(shard_ids)} ids; the manifest says "
                         f"{shard['count']}. The store is damaged: rebuild it into a new folder.")
    self.ids = np.concatenate(ids) if ids else np.zeros((0,), np.int64)
    self._shard_of = np.concatenate(
        [np.full(len(x), i, np.int32) for i, x in enumerate(ids)]) if ids else np.zeros(0, int)
    self._row_of = np.concatenate([np.arange(len(x)) for x in ids]) if ids else np.zeros(0, int)
    self._order = np.argsort(self.ids, kind="stable")
    self._sorted_ids = self.ids[self._order]
    if len(self._sorted_ids) > 1 and np.any(np.diff(self._sorted_ids) == 0):
      raise ValueError(f"{path}: an image id appears in two shards; the store is damaged: "
                       "rebuild it into a new folder.")
    if not self.finished:
      log.warning("%s: incomplete store (%d images in %d complete shards): its build was "
                  "interrupted. Rerun the same build command to finish it.", path,
                  len(self.ids), len(self._shard_names))

  def __getstate__(self) -> dict:
    # Memory maps and the lock are per process; a pickled store (a cached Dataset, a worker
    # process) reopens its shards on first use.
    state = dict(self.__dict__)
    state["_arrays"], state["_lock"] = {}, None
    return state

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def _file(self, shard: int, field: str) -> str:
    return os.path.join(self.path, f"{self._shard_names[shard]}.{field}.npy")

  def __len__(self) -> int:
    return len(self.ids)

  def __contains__(self, image_id) -> bool:
    return bool(self._locate(np.asarray([image_id]))[0][0])

  def shard_array(self, shard: int, field: str) -> np.ndarray:
    """The memory map of one shard's field (opened on first use)."""
    key = (shard, field)
    if key not in self._arrays:
      with self._lock:
        if key not in self._arrays:
          self._arrays[key] = np.load(self._file(shard, field), mmap_mode="r")
    return self._arrays[key]

  def _locate(self, image_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image_ids = np.asarray(image_ids, np.int64).reshape(-1)
    where = np.searchsorted(self._sorted_ids, image_ids)
    where = np.minimum(where, max(len(self._sorted_ids) - 1, 0))
    found = (self._sorted_ids[where] == image_ids) if len(self._sorted_ids) else (
        np.zeros(len(image_ids), bool))
    return found, self._order[where] if len(self._sorted_ids) else where

  def missing(self, image_ids) -> np.ndarray:
    """The ids among `image_ids` that the store does not hold."""
    image_ids = np.asarray(image_ids, np.int64).reshape(-1)
    return image_ids[~self._locate(image_ids)[0]]

  def column(self, field: str, image_ids) -> StoreColumn:
    """A lazy [len(image_ids), ...] view of `field`, row i for image_ids[i].

    Raises:
      features.FeatureError: some ids have no features in the store (the first few are listed).
    """
    if field not in self.fields:
      raise KeyError(f"{self.path}: no field {field!r}; this {self.kind} store has "
                     f"{sorted(self.fields)}.")
    found, where = self._locate(image_ids)
    if not found.all():
      lost = np.asarray(image_ids, np.int64).reshape(-1)[~found]
      raise features.FeatureError(
          f"{self.path}: {len(lost)} of {len(found)} image ids have no features (first: "
          f"{lost[:10].tolist()}); expected every image of the split. Build the store from files "
          "that cover them, or set on_error='skip' to drop those images.")
    return StoreColumn(self, field, self._shard_of[where], self._row_of[where])

  def gather(self, field: str, image_ids) -> np.ndarray:
    """[len(image_ids), ...] array of `field`, read now."""
    return self.column(field, image_ids)[:]


class StoreWriter:
  """Write side: `add` images one by one, `finish` at the end; resumes an unfinished store."""

  def __init__(self, out: str, kind: str, shard_size: int, source: str = ""):
    if kind not in KINDS:
      raise ValueError(f"kind must be one of {KINDS}; found {kind!r}.")
    if shard_size < 1:
      raise ValueError(f"shard_size must be >= 1; found {shard_size}.")
    os.makedirs(out, exist_ok=True)
    self.out, self.kind, self.shard_size = out, kind, shard_size
    self.manifest = _read_manifest(out) or {
        "format": FORMAT, "version": VERSION, "kind": kind, "fields": None, "shards": [],
        "source": source, "finished": False}
    if self.manifest["kind"] != kind:
      raise ValueError(f"{out} holds a {self.manifest['kind']!r} store; cannot add {kind!r} "
                       "features to it. Choose another --out.")
    for name in os.listdir(out):
      if name.endswith(".tmp"):  # A shard or manifest whose writing was interrupted.
        os.remove(os.path.join(out, name))
    self.done_ids = set()
    for shard in self.manifest["shards"]:
      self.done_ids.update(np.load(os.path.join(out, f"{shard['name']}.ids.npy")).tolist())
    if self.done_ids:
      log.info("%s: resuming; %d images in %d complete shards are kept.", out,
               len(self.done_ids), len(self.manifest["shards"]))
    self.manifest["finished"] = False
    self.duplicates = 0
    self.written = 0
    self._buffers = None
    self._ids = []

  def _start_shard(self) -> None:
    name = f"shard-{len(self.manifest['shards']):05d}"
    self._buffers = {
        field: np.lib.format.open_memmap(
            os.path.join(self.out, f"{name}.{field}.npy.writing.tmp"), mode="w+",
            dtype=spec["dtype"],
            shape=(self.shard_size,) + tuple(spec["shape"]))
        for field, spec in self.manifest["fields"].items()}
    self._ids = []

  def add(self, image_id: int, source: str = "", **arrays: np.ndarray) -> None:
    """Adds one image; its arrays must match the fields fixed by the first image ever added.

    A second row of an id already stored is dropped and reported (logged now, counted at the
    end); `source` ("file:line") says where it came from.
    """
    image_id = int(image_id)
    if image_id in self.done_ids:
      self.duplicates += 1
      if self.duplicates <= 10:
        log.warning("%s: image %d appears again%s; the first copy is kept.", self.out, image_id,
                    f" at {source}" if source else "")
      return
    specs = {field: {"shape": list(np.shape(a)), "dtype": np.asarray(a).dtype.name}
             for field, a in arrays.items()}
    if self.manifest["fields"] is None:
      self.manifest["fields"] = specs
    elif specs != self.manifest["fields"]:
      raise ValueError(f"{self.out}: image {image_id} has fields {specs}; the store holds "
                       f"{self.manifest['fields']}. Resume with the same options as the first "
                       "build, or choose another --out.")
    if self._buffers is None:
      self._start_shard()
    row = len(self._ids)
    for field, array in arrays.items():
      self._buffers[field][row] = array
    self._ids.append(image_id)
    self.done_ids.add(image_id)
    self.written += 1
    if len(self._ids) == self.shard_size:
      self._close_shard()

  def _close_shard(self) -> None:
    name = f"shard-{len(self.manifest['shards']):05d}"
    count = len(self._ids)
    for field, buffer in self._buffers.items():
      path = os.path.join(self.out, f"{name}.{field}.npy")
      writing = path + ".writing.tmp"
      if count == self.shard_size:
        buffer.flush()
        with open(writing, "rb+") as f:
          os.fsync(f.fileno())
        os.replace(writing, path)
      else:  # The last, short shard: copy its filled rows into a right-sized file.
        _write_npy(path, buffer[:count])
        os.remove(writing)
    _write_npy(os.path.join(self.out, f"{name}.ids.npy"), np.asarray(self._ids, np.int64))
    self.manifest["shards"].append({"name": name, "count": count})
    self._write_manifest()
    self._buffers, self._ids = None, []

  def _write_manifest(self) -> None:
    path = os.path.join(self.out, MANIFEST)
    with open(path + ".tmp", "w") as f:
      json.dump(self.manifest, f, indent=1)
      f.flush()
      os.fsync(f.fileno())
    os.replace(path + ".tmp", path)
    _fsync_dir(self.out)

  def finish(self) -> None:
    """Writes the last, possibly short shard and marks the store finished."""
    if self._ids:
      self._close_shard()
    if self.duplicates:
      log.warning("%s: %d duplicate image ids in the sources were dropped (the first copy of "
                  "each was kept).", self.out, self.duplicates)
    self.manifest["finished"] = True
    self._write_manifest()


class Progress:
  """Logs done/total, rate and ETA every `every_s` seconds."""

  def __init__(self, label: str, total: float, unit: str, every_s: float = 10.0):
    self.label, self.total, self.unit, self.every_s = label, total, unit, every_s
    self.start = self.last = time.monotonic()

  def update(self, done: float, images: int, force: bool = False) -> None:
    now = time.monotonic()
    if not force and now - self.last < self.every_s:
      return
    self.last = now
    rate = done / max(now - self.start, 1e-9)
    eta = (self.total - done) / rate if rate > 0 else float("inf")
    eta_text = "?" if eta == float("inf") else time.strftime("%H:%M:%S", time.gmtime(eta))
    percent = 100.0 * done / self.total if self.total else 100.0
    log.info("%s: %s/%s %s (%.1f%%), %d images written, %.1f %s/s, ETA %s", self.label,
             f"{done:,.0f}", f"{self.total:,.0f}", self.unit, percent, images, rate, self.unit,
             eta_text)
