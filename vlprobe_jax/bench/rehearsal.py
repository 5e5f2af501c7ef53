"""The real run, rehearsed offline (configs/rehearsal.py): COCO scale, full-size checkpoints in
their original formats, the host input pipeline, and SCST with a kill and a resume.

Parts (`config.parts`), each runnable alone; results are merged into `<data_dir>/rehearsal.json`
and the table `<data_dir>/rehearsal.md` is rewritten from everything measured so far:
  world        dataset_coco.json, cocotalk_fc/*.npy, mscoco_imgfeat/*_obj36.tsv
               (`rehearsal_world`); its vocabulary counted by the project's own rule
  stores       the fc store and the region store (float16, and float32 for comparison) built
               by `python -m vlprobe_jax.data.feature_store build`, each in its own process:
               seconds, peak memory, disk size
  checkpoints  every released format at full size (`rehearsal_checkpoints`), each loaded by its
               scorer's `load` in its own process (seconds, peak memory, a 2-caption forward);
               LXMERT and CLIP compared with `transformers` on a small batch
  pipeline     images/s from the stores to device-ready batches (`rehearsal_pipeline`)
  run          XE + SCST with the LXMERT reward through launch.py, killed and resumed
               (`rehearsal_run`)
"""

from __future__ import annotations

import json
import os
import resource
import time
from typing import Any

from vlprobe_jax import checkpoints
from vlprobe_jax.bench import rehearsal_checkpoints as ckpt_lib
from vlprobe_jax.bench import rehearsal_pipeline
from vlprobe_jax.bench import rehearsal_proc
from vlprobe_jax.bench import rehearsal_run
from vlprobe_jax.bench import rehearsal_world

PARTS = ("world", "stores", "checkpoints", "pipeline", "run")


def paths(config) -> dict[str, str]:
  root = os.path.abspath(os.path.expanduser(config.data_dir))
  stores = os.path.join(root, "stores")
  return {"root": root, "karpathy_json": os.path.join(root, "dataset_coco.json"),
          "fc_npy": os.path.join(root, "cocotalk_fc"),
          "tsv": os.path.join(root, "mscoco_imgfeat"), "fc_store": os.path.join(stores, "fc"),
          "region_store": os.path.join(stores, f"obj36_{config.run.region_dtype}"),
          "stores": stores, "checkpoints": os.path.join(root, "checkpoints"),
          "checkpoint": ckpt_lib.checkpoint_path(os.path.join(root, "checkpoints"),
                                                 config.run.checkpoint_format)}


def _peak_rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_world(config, where: dict[str, str]) -> dict:
  world = config.world
  os.makedirs(where["root"], exist_ok=True)
  images = rehearsal_world.world_images(world.scale, config.seed)
  print(f"[rehearsal] world: {len(images):,} images "
        f"{rehearsal_world.split_counts(world.scale)} in {where['root']}", flush=True)
  out: dict[str, Any] = {"scale": world.scale, "split_counts":
                         rehearsal_world.split_counts(world.scale)}
  out["karpathy_json"] = rehearsal_world.write_karpathy_json(
      where["karpathy_json"], images, captions_per_image=world.captions_per_image,
      num_word_types=world.num_word_types, target_vocab=world.target_vocab,
      count_threshold=world.count_threshold, multi_piece_fraction=world.multi_piece_fraction,
      seed=config.seed)
  print(f"[rehearsal] dataset_coco.json: {out['karpathy_json']}", flush=True)
  out["vocab_by_project_rule"] = _project_vocab(where["karpathy_json"], world.count_threshold)
  out["fc_npy"] = rehearsal_world.write_fc_folder(where["fc_npy"], images, config.seed)
  print(f"[rehearsal] cocotalk_fc: {out['fc_npy']}", flush=True)
  regions = rehearsal_world.region_images(images, world.regions_fraction)
  out["obj36_tsv"] = rehearsal_world.write_obj36_tsvs(where["tsv"], regions, config.seed)
  out["obj36_tsv"]["fraction"] = world.regions_fraction
  out["obj36_tsv"]["full_size_bytes_projected"] = (
      out["obj36_tsv"]["bytes_per_image"] * sum(rehearsal_world.COCO_SPLITS.values()))
  print(f"[rehearsal] obj36 TSVs: {out['obj36_tsv']}", flush=True)
  out["peak_rss_gib_so_far"] = _peak_rss_gib()
  return out


def _project_vocab(path: str, threshold: int) -> dict:
  """The vocabulary `data=coco` builds from the file (coco.py: every split, count > threshold)."""
  from vlprobe_jax.data import coco  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  images = coco.read_karpathy_json(path)
  vocab = coco.build_coco_vocab(images, threshold)
  return {"words_incl_unk": vocab.size - 1, "logits": vocab.size,
          "seconds": time.perf_counter() - start}


def run_stores(config, where: dict[str, str]) -> dict:
  """Each store built by the real command line in its own process."""
  builds = {"fc": ["--kind", "fc", "--source", where["fc_npy"], "--out", where["fc_store"]]}
  tsvs = sorted(os.path.join(where["tsv"], n) for n in os.listdir(where["tsv"])
                if n.endswith(".tsv"))
  for dtype in config.stores.region_dtypes:
    builds[f"obj36_{dtype}"] = ["--kind", "regions", "--source", *tsvs, "--dtype", dtype,
                                "--out", os.path.join(where["stores"], f"obj36_{dtype}")]
  out = {}
  for name, args in builds.items():
    command = rehearsal_proc.python_command("-m", "vlprobe_jax.data.feature_store", "build",
                                            *args, "--progress-every", "30")
    print(f"[rehearsal] store {name}: {' '.join(command)}", flush=True)
    measured = rehearsal_proc.run_measured(command).check(f"building the {name} store")
    store_dir = args[args.index("--out") + 1]
    from vlprobe_jax.data import feature_store  # pylint: disable=g-import-not-at-top
    store = feature_store.FeatureStore(store_dir)
    out[name] = {"seconds": measured.seconds, "peak_rss_gib": measured.peak_rss_gib,
                 "bytes": rehearsal_world.folder_bytes(store_dir), "images": len(store),
                 "images_per_s": len(store) / measured.seconds,
                 "fields": {k: [list(s), d] for k, (s, d) in store.fields.items()}}
    print(f"[rehearsal] store {name}: {out[name]}", flush=True)
  return out


def run_checkpoints(config, where: dict[str, str]) -> dict:
  """Writes, loads (and for LXMERT / CLIP compares) each format, each step in its own process."""
  out = {}
  module = "vlprobe_jax.bench.rehearsal_checkpoints"
  for fmt in config.checkpoints.formats:
    scorer = ckpt_lib.FORMATS[fmt][0]
    path = ckpt_lib.checkpoint_path(where["checkpoints"], fmt)
    entry: dict[str, Any] = {"scorer": scorer, "path": path}
    if not os.path.exists(path) or config.checkpoints.rewrite:
      write = rehearsal_proc.run_measured(rehearsal_proc.python_command(
          "-m", module, "write", "--format", fmt, "--out", where["checkpoints"], "--size",
          config.checkpoints.size, "--seed", str(config.seed))).check(f"writing {fmt}")
      entry["write"] = dict(_result(write)[fmt], seconds=write.seconds,
                            peak_rss_gib=write.peak_rss_gib)
    entry["bytes"] = (rehearsal_world.folder_bytes(path) if os.path.isdir(path)
                      else os.path.getsize(path))
    load = rehearsal_proc.run_measured(rehearsal_proc.python_command(
        "-m", module, "load", "--scorer", scorer, "--path", path)).check(f"loading {fmt}")
    entry["load"] = dict(_result(load), process_seconds=load.seconds,
                         peak_rss_gib=load.peak_rss_gib)
    if config.checkpoints.parity and fmt in ("lxmert_hf", "clip_hf"):
      parity = rehearsal_proc.run_measured(rehearsal_proc.python_command(
          "-m", module, "parity", "--scorer", scorer, "--path", path)).check(f"{fmt} parity")
      entry["parity"] = dict(_result(parity), peak_rss_gib=parity.peak_rss_gib,
                             process_seconds=parity.seconds)
    out[fmt] = entry
    print(f"[rehearsal] checkpoint {fmt}: {json.dumps(entry)}", flush=True)
  return out


def _result(measured: rehearsal_proc.Measured) -> dict:
  line = next((l for l in reversed(measured.lines) if l.startswith(ckpt_lib.RESULT_PREFIX)), None)
  if line is None:
    raise RuntimeError(f"no result line from {' '.join(measured.command)}:\n{measured.tail()}")
  return json.loads(line[len(ckpt_lib.RESULT_PREFIX):])


def run_pipeline(config, where: dict[str, str]) -> dict:
  """Host pipeline images/s for each store dtype, thread count and page-cache state."""
  from vlprobe_jax.data import coco  # pylint: disable=g-import-not-at-top
  p = config.pipeline
  out = {"gpu_need": rehearsal_pipeline.gpu_need(), "results": []}
  for dtype in config.stores.region_dtypes:
    store = os.path.join(where["stores"], f"obj36_{dtype}")
    start = time.perf_counter()
    dataset = coco.load_coco({"karpathy_json": where["karpathy_json"],
                              "fc_store": where["fc_store"], "region_store": store,
                              "on_error": "skip"})
    train = dataset["train"]
    out.setdefault("load_seconds", {})[dtype] = time.perf_counter() - start
    out["train_images"] = len(train)
    # The project's path; on a float16 store also the float32 host cast it replaced. The cold
    # case runs first: the page cache can only drop pages that no process maps, and this
    # process maps every page it has read (the store is a memory map), so a drop after the warm
    # cases would leave them in memory. The warm cases read the same rows (same seed) again.
    feeds = ["project"] + (["float32_feed"] if dtype == "float16" else [])
    cases = [("project", 1, True)] if p.cold else []
    cases += [(feed, 1, False) for feed in feeds]
    cases += [("project", threads, False) for threads in p.threads if threads > 1]
    for feed, threads, cold in cases:
      dropped = rehearsal_pipeline.drop_page_cache(store) if cold else None
      result = rehearsal_pipeline.measure(train, batch_size=p.batch_size, steps=p.steps,
                                          prefetch=p.prefetch, threads=threads, feed=feed,
                                          seed=config.seed)
      result.update(store=f"obj36_{dtype}", page_cache="dropped" if cold else "warm",
                    dropped=dropped)
      out["results"].append(result)
      print(f"[rehearsal] pipeline: {result}", flush=True)
  best = max(out["results"], key=lambda r: r["images_per_s"])
  out["best"] = best
  out["best_vs_gpu_need"] = best["images_per_s"] / out["gpu_need"]["images_per_s"]
  return out


def run(config) -> dict:
  """The entry point of configs/rehearsal.py (see the module docstring)."""
  where = paths(config)
  os.makedirs(where["root"], exist_ok=True)
  out_json = os.path.join(where["root"], config.out_json)
  summary = checkpoints.read_json(out_json) if os.path.exists(out_json) else {}
  summary.update({"data_dir": where["root"], "machine": _machine()})
  steps = {"world": run_world, "stores": run_stores, "checkpoints": run_checkpoints,
           "pipeline": run_pipeline,
           "run": lambda c, w: rehearsal_run.run(c, w)}
  for part in config.parts:
    start = time.perf_counter()
    print(f"[rehearsal] part {part} ...", flush=True)
    summary[part] = steps[part](config, where)
    summary.setdefault("part_seconds", {})[part] = time.perf_counter() - start
    checkpoints.write_json_atomic(out_json, summary)  # after every part: a stop keeps the rest
  from vlprobe_jax.bench import rehearsal_table  # pylint: disable=g-import-not-at-top
  table = rehearsal_table.markdown(summary)
  with open(os.path.join(where["root"], "rehearsal.md"), "w", encoding="utf-8") as f:
    f.write(table)
  print(table, flush=True)
  summary["summary_path"] = out_json
  summary["headline"] = rehearsal_table.headline(summary)
  return summary


def _machine() -> dict:
  return {"cpus": os.cpu_count(), "memory_gib": round(
      os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
          "load_average_1m": round(os.getloadavg()[0], 1)}
