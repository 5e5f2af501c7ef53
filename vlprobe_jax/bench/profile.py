"""What a JAX profiler trace says about where a step's device time goes.

`summarize(trace_dir, steps)` reads the trace that `jax.profiler.trace(trace_dir)` wrote (the
Chrome-trace `*.trace.json.gz` of the newest run in it) and returns, per step:
  * the device window (first kernel start to last kernel end) and how much of it some kernel was
    running ("busy"); the rest is the device waiting on the host, launches or syncs;
  * kernel time by phase of the SCST step, from the `jax.named_scope` labels in
    `scst.scst_train_step` ("decode", "reward", "policy_gradient", "update", "image_inputs";
    every backward op, "transpose(jvp(...))", counts as "policy_gradient") that XLA keeps in
    the ops' metadata (read from the step's optimized HLO, `HLO_FILE`, when
    it lies beside the trace, and from the events' own arguments);
  * the kernels that take the most time, with their phase.
Only device events count ("/device:GPU:..." or "/device:TPU:..." processes); a CPU trace has
none and the summary says so. `format_summary` prints it as lines for the benchmark's log.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
from typing import Any

PHASES = ("image_inputs", "decode", "reward", "policy_gradient", "update")
HLO_FILE = "step.hlo.txt"  # the step's optimized HLO (`compiled.as_text()`), beside the trace
_HLO_OP = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+) = .*?metadata=\{[^}]*?op_name="([^"]*)"',
                     re.MULTILINE)


def hlo_op_names(hlo_text: str) -> dict[str, str]:
  """Instruction name -> its metadata op_name (the JAX name stack), from optimized HLO text.

  Keys are given with '.' and with '_' (kernel names write "fusion.18" as "fusion_18").
  """
  names = {}
  for instruction, op_name in _HLO_OP.findall(hlo_text):
    names[instruction] = op_name
    names.setdefault(instruction.replace(".", "_"), op_name)
  return names


def newest_trace(trace_dir: str) -> str | None:
  """The newest `*.trace.json.gz` under `trace_dir` (jax writes one folder per run)."""
  found = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
  return max(found, key=os.path.getmtime) if found else None


def _device_events(trace: dict) -> list[dict]:
  names = {event["pid"]: event.get("args", {}).get("name", "")
           for event in trace.get("traceEvents", [])
           if event.get("ph") == "M" and event.get("name") == "process_name"}
  devices = {pid for pid, name in names.items() if name.startswith("/device:")}
  return [event for event in trace.get("traceEvents", [])
          if event.get("ph") == "X" and event.get("pid") in devices and "dur" in event]


def phase_of(event: dict, op_names: dict[str, str] | None = None) -> str:
  """The SCST phase a kernel belongs to, from the scope names in its name or arguments.

  `op_names` (from `hlo_op_names`) adds the name stack of the event's HLO op.
  """
  args = event.get("args", {})
  text = " ".join([event.get("name", "")] + [str(v) for v in args.values()])
  if op_names:
    text += " " + " ".join(op_names.get(str(key), "") for key in
                           (args.get("hlo_op"), event.get("name")) if key)
  # Every backward pass of the step is the policy gradient's, whichever scope its forward had
  # ("transpose(jvp(decode))" when the log-probs come from the sampling pass).
  if "transpose(jvp(" in text:
    return "policy_gradient"
  for phase in PHASES:  # A scope inside a differentiated function reads "jvp(decode)".
    if re.search(rf"(^|[/\s(]){phase}(/|$|\s|\))", text):
      return phase
  return "other"


def _fill_from_command_buffers(events: list[dict], phases: list[str]) -> list[str]:
  """Phases for kernels known only by their command buffer (a CUDA graph XLA launches whole).

  Inside a command buffer an event's "hlo_op" names the buffer, not the op, so library kernels
  (cuBLAS gemms) have no name stack. They get the phase that takes most of the identified kernel
  time of the same buffer, marked "~" (inferred); buffers with no identified kernel stay "other".
  """
  weight: dict[str, dict[str, float]] = collections.defaultdict(
      lambda: collections.defaultdict(float))
  for event, phase in zip(events, phases):
    buffer = str(event.get("args", {}).get("hlo_op", ""))
    if phase != "other" and buffer.startswith("command_buffer"):
      weight[buffer][phase] += event["dur"]
  filled = []
  for event, phase in zip(events, phases):
    buffer = str(event.get("args", {}).get("hlo_op", ""))
    if phase == "other" and weight.get(buffer):
      phase = "~" + max(weight[buffer].items(), key=lambda item: item[1])[0]
    filled.append(phase)
  return filled


def _busy(intervals: list[tuple[float, float]]) -> float:
  """Total length of the union of [start, end) intervals."""
  total, current_start, current_end = 0.0, None, None
  for start, end in sorted(intervals):
    if current_end is None or start > current_end:
      if current_end is not None:
        total += current_end - current_start
      current_start, current_end = start, end
    else:
      current_end = max(current_end, end)
  if current_end is not None:
    total += current_end - current_start
  return total


def summarize(trace_dir: str, steps: int, top: int = 12) -> dict[str, Any]:
  """Device-time summary of the `steps` steps traced under `trace_dir` (times in ms per step)."""
  path = newest_trace(trace_dir)
  if path is None:
    return {"trace": None, "note": f"no *.trace.json.gz under {trace_dir}"}
  with gzip.open(path, "rt") as f:
    events = _device_events(json.load(f))
  if not events:
    return {"trace": path, "note": "the trace holds no device events (a CPU run has none)"}
  op_names = {}
  hlo_path = os.path.join(trace_dir, HLO_FILE)
  if os.path.exists(hlo_path):
    with open(hlo_path) as f:
      op_names = hlo_op_names(f.read())
  steps = max(steps, 1)
  start = min(e["ts"] for e in events)
  end = max(e["ts"] + e["dur"] for e in events)
  kernel_total = sum(e["dur"] for e in events)
  busy = _busy([(e["ts"], e["ts"] + e["dur"]) for e in events])
  phases = [phase_of(event, op_names) for event in events]
  phases = _fill_from_command_buffers(events, phases)
  by_phase: dict[str, float] = collections.defaultdict(float)
  by_kernel: dict[tuple[str, str], list[float]] = collections.defaultdict(lambda: [0.0, 0])
  for event, phase in zip(events, phases):
    by_phase[phase] += event["dur"]
    entry = by_kernel[(event.get("name", "?"), phase)]
    entry[0] += event["dur"]
    entry[1] += 1
  per_step = lambda us: us / 1e3 / steps
  kernels = sorted(by_kernel.items(), key=lambda item: -item[1][0])[:top]
  sample_args = sorted({key for e in events[:200] for key in e.get("args", {})})
  return {
      "trace": path, "steps": steps, "window_ms": per_step(end - start),
      "busy_ms": per_step(busy), "busy_fraction": busy / max(end - start, 1e-9),
      "kernel_ms": per_step(kernel_total), "kernel_launches": len(events) / steps,
      # Inferred ("~") kernel time counted in its phase; the inferred part also on its own.
      "phase_ms": _merged(by_phase, per_step),
      "phase_inferred_ms": {phase[1:]: per_step(us) for phase, us in by_phase.items()
                            if phase.startswith("~")},
      "top_kernels": [{"name": name, "phase": phase, "ms": per_step(us), "calls": count / steps}
                      for (name, phase), (us, count) in kernels],
      "event_arg_keys": sample_args,
  }


def _merged(by_phase: dict[str, float], per_step) -> dict[str, float]:
  merged: dict[str, float] = collections.defaultdict(float)
  for phase, us in by_phase.items():
    merged[phase.lstrip("~")] += us
  return {phase: per_step(us) for phase, us in sorted(merged.items(), key=lambda item: -item[1])}


def format_summary(summary: dict[str, Any]) -> str:
  if "note" in summary:
    return f"profile: {summary['note']}"
  lines = [f"profile ({summary['steps']} steps, {summary['trace']}): device window "
           f"{summary['window_ms']:.2f} ms/step, kernels running {summary['busy_ms']:.2f} ms "
           f"({100 * summary['busy_fraction']:.0f}% busy), {summary['kernel_launches']:.0f} "
           "kernels/step",
           "  kernel time by phase (ms/step; '~' part inferred from the command buffer): " +
           ", ".join(f"{phase} {ms:.2f}" + (f" (~{summary['phase_inferred_ms'][phase]:.2f})"
                                            if phase in summary["phase_inferred_ms"] else "")
                     for phase, ms in summary["phase_ms"].items())]
  for kernel in summary["top_kernels"]:
    lines.append(f"  {kernel['ms']:8.3f} ms/step  x{kernel['calls']:<6.0f} [{kernel['phase']}] "
                 f"{kernel['name'][:110]}")
  lines.append(f"  (event argument keys: {', '.join(summary['event_arg_keys'])})")
  return "\n".join(lines)
