"""The rehearsal's numbers as a markdown table (the one docs/coco.md carries) and a headline."""

from __future__ import annotations


def _gb(value) -> str:
  return "" if value is None else f"{value / 1e9:,.2f} GB"


def _s(value) -> str:
  return "" if value is None else f"{value:,.1f} s"


def _gib(value) -> str:
  return "" if value is None else f"{value:,.2f} GiB"


def markdown(summary: dict) -> str:
  """Every measured part of `summary` (rehearsal.json) as markdown sections."""
  machine = summary.get("machine", {})
  out = [f"Machine: {machine.get('cpus')} CPUs, {machine.get('memory_gib')} GiB RAM "
         f"(1-minute load average {machine.get('load_average_1m')} at the last part)", ""]
  world = summary.get("world")
  if world:
    j, counts = world["karpathy_json"], world["split_counts"]
    vocab = world.get("vocab_by_project_rule", {})
    out += ["| world | value |", "|---|---|",
            f"| images (train / restval / val / test) | {counts['train']:,} / "
            f"{counts['restval']:,} / {counts['val']:,} / {counts['test']:,} |",
            f"| captions, words (mean words per caption) | {j['captions']:,}, {j['words']:,} "
            f"({j['mean_caption_words']:.1f}) |",
            f"| vocabulary, count > 5 (project rule, UNK incl.) | "
            f"{vocab.get('words_incl_unk', j['vocab_with_unk']):,} (Zipf exponent "
            f"{j['zipf_exponent']:.3f}; {j['word_types_seen']:,} word types seen) |",
            f"| dataset_coco.json | {_gb(j['bytes'])}, written in {_s(j['seconds'])} |",
            f"| cocotalk_fc/*.npy | {world['fc_npy']['files']:,} files, "
            f"{_gb(world['fc_npy']['bytes'])}, {_s(world['fc_npy']['seconds'])} |",
            f"| obj36 TSVs ({world['obj36_tsv']['fraction']:.0%} of the images) | "
            f"{world['obj36_tsv']['rows']:,} rows, {_gb(world['obj36_tsv']['bytes'])} "
            f"(full size: {_gb(world['obj36_tsv']['full_size_bytes_projected'])}), "
            f"{_s(world['obj36_tsv']['seconds'])} |", ""]
  stores = summary.get("stores")
  if stores:
    out += ["| store | images | disk | build time | images/s | peak memory |",
            "|---|---|---|---|---|---|"]
    for name, s in stores.items():
      out.append(f"| {name} | {s['images']:,} | {_gb(s['bytes'])} | {_s(s['seconds'])} | "
                   f"{s['images_per_s']:,.0f} | {_gib(s['peak_rss_gib'])} |")
    out.append("")
  ckpts = summary.get("checkpoints")
  if ckpts:
    out += ["| checkpoint | size on disk | write | load (`load` call) | load process peak "
            "memory | params | 2-caption forward (incl. compile) |",
            "|---|---|---|---|---|---|---|"]
    for fmt, c in ckpts.items():
      write = c.get("write", {})
      out.append(f"| {fmt} | {_gb(c['bytes'])} | {_s(write.get('seconds'))} | "
                 f"{_s(c['load']['load_seconds'])} | {_gib(c['load']['peak_rss_gib'])} | "
                 f"{c['load']['params']:,} | {_s(c['load']['forward_seconds'])} |")
    out.append("")
    for fmt, c in ckpts.items():
      if "parity" in c:
        diffs = ", ".join(f"{k} {v:.1e}" for k, v in c["parity"]["max_abs_diff"].items())
        out.append(f"- {fmt} vs transformers ({c['parity']['batch']}), max |diff|: {diffs}")
    out.append("")
  pipe = summary.get("pipeline")
  if pipe:
    need = pipe["gpu_need"]["images_per_s"]
    out += [f"Host input pipeline ({pipe.get('train_images', 0):,} training images; the H200 "
            f"step needs {need:,.0f} images/s):", "",
            "| store | feed | threads | page cache | images/s | MB/s | of the GPU's need |",
            "|---|---|---|---|---|---|---|"]
    for r in pipe["results"]:
      out.append(f"| {r['store']} | {r['feed']} | {r['threads']} | {r['page_cache']} | "
                 f"{r['images_per_s']:,.0f} | {r['MB_per_s']:,.0f} | "
                 f"{r['images_per_s'] / need:.1%} |")
    out.append("")
  run = summary.get("run")
  if run:
    out += [f"Run: vocabulary {run.get('vocab_size')} logits, LSTM {run.get('rnn_size')}; "
            f"`{run['command']}`", "",
            "| launch | XE s/step | SCST s/step | SCST step after a save | first SCST step "
            "(compile) | wall | peak memory |", "|---|---|---|---|---|---|---|"]
    for launch in run["launches"]:
      out.append(f"| {launch['attempt']}{' (killed)' if launch['killed'] else ''} | "
                 f"{_s(launch['xe']['median_s_per_step'])} | "
                 f"{_s(launch['scst']['median_s_per_step'])} | "
                 f"{_s(launch['scst']['median_s_with_checkpoint_save'])} | "
                 f"{_s(launch['scst_first_step_s'])} | {_s(launch['seconds'])} | "
                 f"{_gib(launch['peak_rss_gib'])} |")
    out.append("")
  return "\n".join(out) + "\n"


def headline(summary: dict) -> str:
  parts = []
  if "stores" in summary:
    parts.append("stores " + ", ".join(f"{k} {_gb(v['bytes'])}"
                                       for k, v in summary["stores"].items()))
  if "pipeline" in summary:
    best = summary["pipeline"]["best"]
    parts.append(f"host pipeline {best['images_per_s']:,.0f} images/s")
  if "run" in summary:
    last = summary["run"]["launches"][-1]["scst"]["median_s_per_step"]
    parts.append(f"SCST {_s(last)}/step on this CPU")
  return "; ".join(parts)
