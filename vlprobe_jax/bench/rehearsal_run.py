"""The rehearsal's training run: `data=coco` XE then SCST with the LXMERT reward at real sizes,
through `launch.py` as a user types it, killed mid-SCST (SIGKILL, a preemption) and resumed.

The run uses the world's Karpathy json, fc store and region store (`data.on_error=skip`: images
without regions, when the regions cover only part of the world, are left out and counted), the
world's vocabulary, the paper's 512-unit FC-LSTM and an LXMERT-base checkpoint in its original
format. Every progress line is time-stamped as it arrives; seconds per step are the gaps
between consecutive step lines (log_every_steps=1), the first step of each launch (compilation)
and the steps that saved a checkpoint or evaluated reported apart. Peak memory is each launch's
own maximum resident set (`wait4`).
"""

from __future__ import annotations

import os
import re
import statistics

from vlprobe_jax import checkpoints
from vlprobe_jax.bench import rehearsal_proc

_STEP = re.compile(r"^\[(?P<label>[\w:]+)\] step (?P<step>\d+)/(?P<total>\d+) \|")


def launch_flags(config, paths: dict[str, str], workdir: str) -> list[str]:
  """launch.py's flags for the rehearsal run (`config.run`, the world's files in `paths`)."""
  run = config.run
  steps = dict(xe=run.xe_steps, scst=run.scst_steps)
  flags = [f"--config=configs/scst.py:scorer={run.scorer},data=coco", f"--workdir={workdir}",
           f"--config.data.karpathy_json={paths['karpathy_json']}",
           f"--config.data.fc_store={paths['fc_store']}",
           f"--config.data.region_store={paths['region_store']}",
           "--config.data.on_error=skip",
           f"--config.scorer_checkpoints.{run.scorer}={paths['checkpoint']}",
           f"--config.stages={','.join(run.stages)}", "--config.eval.meteor=False",
           f"--config.eval.batch_size={run.eval_batch_size}",
           f"--config.captioner.rnn_size={run.rnn_size}",
           f"--config.captioner.embed_size={run.rnn_size}"]
  for stage in ("xe", "scst"):
    flags += [f"--config.{stage}.total_steps={steps[stage]}",
              f"--config.{stage}.images_per_batch={run.images_per_batch}",
              f"--config.{stage}.log_every_steps=1",
              f"--config.{stage}.eval_every_steps={steps[stage]}",
              f"--config.{stage}.checkpoint_every_steps={run.checkpoint_every_steps}"]
  return flags


def step_times(lines: list[tuple[float, str]], label: str) -> list[tuple[int, float]]:
  """(step, seconds since the previous step line of `label`) for consecutive step lines."""
  out, previous = [], None
  for seconds, line in lines:
    match = _STEP.match(line)
    if not match or match.group("label") != label:
      continue
    step = int(match.group("step"))
    if previous is not None and step == previous[0] + 1:
      out.append((step, seconds - previous[1]))
    previous = (step, seconds)
  return out


def first_step_seconds(lines: list[tuple[float, str]], label: str, start_pattern: str) -> float | None:
  """Seconds from the line matching `start_pattern` to the first step line of `label`
  (the stage's first step: its compilation and the first batch)."""
  start = next((s for s, line in lines if re.search(start_pattern, line)), None)
  first = next((s for s, line in lines
                if _STEP.match(line) and _STEP.match(line).group("label") == label), None)
  return None if start is None or first is None else first - start


def summarize_steps(times: list[tuple[int, float]], every: int) -> dict:
  """Median seconds per step, without steps that followed a checkpoint save (step % every == 1
  after a save at step - 1), which are reported apart."""
  plain = [s for step, s in times if (step - 1) % every]
  after_save = [s for step, s in times if not (step - 1) % every]
  return {"median_s_per_step": statistics.median(plain) if plain else None,
          "steps_timed": len(plain), "all": [round(s, 2) for _, s in times],
          "median_s_with_checkpoint_save": statistics.median(after_save) if after_save else None}


def run(config, paths: dict[str, str]) -> dict:
  """Launches the run, kills it after SCST step `config.run.kill_after_step`, resumes it."""
  run_config = config.run
  workdir = os.path.join(config.data_dir, "run", f"scst_{run_config.scorer}")
  flags = launch_flags(config, paths, workdir)
  command = rehearsal_proc.python_command("launch.py", *flags)
  label = f"scst:{run_config.scorer}"
  kill_line = f"[{label}] step {run_config.kill_after_step}/"
  launches = []
  for attempt, kill in (("first", True), ("resumed", False)):
    stamped: list[tuple[float, str]] = []

    def on_line(line, seconds, kill=kill, stamped=stamped):
      stamped.append((seconds, line))
      return kill and line.startswith(kill_line)

    print(f"[rehearsal] run ({attempt}): {' '.join(command)}", flush=True)
    measured = rehearsal_proc.run_measured(command, on_line=on_line,
                                           timeout_s=run_config.timeout_s)
    measured.check(f"the rehearsal run ({attempt})")
    if kill and not measured.killed:
      raise RuntimeError(f"the run finished before SCST step {run_config.kill_after_step}; "
                         "raise config.run.scst_steps or lower kill_after_step.")
    launches.append({
        "attempt": attempt, "killed": measured.killed, "seconds": measured.seconds,
        "peak_rss_gib": measured.peak_rss_gib,
        "xe": summarize_steps(step_times(stamped, "xe"), run_config.checkpoint_every_steps),
        "scst": summarize_steps(step_times(stamped, label), run_config.checkpoint_every_steps),
        "xe_first_step_s": first_step_seconds(stamped, "xe", r"^\[launch\] devices"),
        "scst_first_step_s": first_step_seconds(stamped, label, r"^\[scst\] reward"),
        "resumed_at": next((line for _, line in stamped if "resuming at step" in line), None),
        "eval_lines": [line for _, line in stamped if line.startswith("[eval]")
                       or "val CIDEr" in line or "score" in line and "step" in line
                       and "val" in line]})
  meta = os.path.join(workdir, "xe", "checkpoints", "meta.json")
  captioner = checkpoints.read_json(meta)["captioner"] if os.path.exists(meta) else {}
  return {"command": " ".join(command), "workdir": workdir, "launches": launches,
          "vocab_size": captioner.get("vocab_size"), "rnn_size": captioner.get("rnn_size")}
