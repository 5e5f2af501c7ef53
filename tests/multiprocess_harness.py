"""Runs `launch.py` in this process, recording what the multi-process test checks.

  python tests/multiprocess_harness.py RECORD.jsonl WATCHED_DIR -- <launch.py flags>

Appends one JSON object per event to RECORD.jsonl (outside WATCHED_DIR, opened before anything
runs, so the record itself is not an event), as it happens, so a killed process keeps its record:
  {"write": path}                    this process created, wrote, renamed or removed `path` under
                                     WATCHED_DIR (Python audit events: open for writing, mkdir,
                                     rename/replace, remove, rmdir, rmtree). Writes made inside
                                     C++ (tensorstore, orbax's array files) are not seen here;
                                     the test checks their folders separately.
  {"rows": [...], "step": s, "num_images": n}
                                     the rows of a training split this process asked the input
                                     pipeline for at global step s (`EpochRows.local_rows`)
  {"read": [image ids], "store": path}
                                     image ids whose region features this process read
Nothing here changes what launch.py computes.
"""

import json
import os
import runpy
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout, not an installed copy: launch.py's own directory
RECORD_PATH, WATCHED = sys.argv[1], os.path.abspath(sys.argv[2])
LAUNCH_ARGS = sys.argv[sys.argv.index("--") + 1:]
_record = open(RECORD_PATH, "a", encoding="utf-8")  # pylint: disable=consider-using-with
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _emit(entry: dict) -> None:
  _record.write(json.dumps(entry) + "\n")
  _record.flush()


def _watched(path) -> str | None:
  if isinstance(path, bytes):
    path = os.fsdecode(path)
  if not isinstance(path, str):
    return None
  path = os.path.abspath(path)
  return path if path == WATCHED or path.startswith(WATCHED + os.sep) else None


def _audit(event: str, args) -> None:
  paths = ()
  if event == "open":
    path, mode, flags = args
    writing = (mode is not None and any(c in str(mode) for c in "wax+")) or (
        mode is None and isinstance(flags, int) and flags & _WRITE_FLAGS)
    paths = (path,) if writing else ()
  elif event in ("os.rename", "shutil.move", "shutil.copyfile"):
    paths = args[:2]
  elif event == "os.mkdir":
    paths = () if os.path.isdir(args[0]) else args[:1]  # makedirs(exist_ok=True) of a folder
  elif event in ("os.remove", "os.rmdir", "shutil.rmtree", "os.truncate",
                 "os.symlink", "os.link", "os.chmod"):
    paths = args[:1]
  for path in paths:
    watched = _watched(path)
    if watched is not None:
      _emit({"write": watched, "event": event})


def _patch_pipeline() -> None:
  from vlprobe_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  from vlprobe_jax.data.feature_store import store  # pylint: disable=import-outside-toplevel
  local_rows = pipeline.EpochRows.local_rows

  def recorded_local_rows(self, step):
    rows, valid = local_rows(self, step)
    _emit({"rows": [int(r) for r in rows], "step": int(step), "num_images": self.num_images})
    return rows, valid

  pipeline.EpochRows.local_rows = recorded_local_rows
  getitem = store.StoreColumn.__getitem__

  def recorded_getitem(self, index):
    out = getitem(self, index)
    if self.field == "feats" and not isinstance(index, (int,)):
      selected = __import__("numpy").arange(len(self))[index]
      ids = [int(self.store.shard_array(int(s), "ids")[r])
             for s, r in zip(self._shards[selected], self._rows[selected])]
      _emit({"read": ids, "store": self.store.path})
    return out

  store.StoreColumn.__getitem__ = recorded_getitem


if __name__ == "__main__":
  _patch_pipeline()
  sys.addaudithook(_audit)
  sys.argv = [os.path.join(ROOT, "launch.py")] + LAUNCH_ARGS
  runpy.run_path(sys.argv[0], run_name="__main__")
