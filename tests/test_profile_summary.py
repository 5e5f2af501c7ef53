"""profile_summary on a hand-made trace: device window, busy time, phases, top kernels."""

import gzip
import json
import os

import pytest

from vlprobe_jax.bench import profile as profile_summary


def _write_trace(directory, events):
  run = os.path.join(directory, "plugins", "profile", "2026_01_01")
  os.makedirs(run)
  meta = [{"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/host:CPU"}},
          {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/device:GPU:0"}}]
  with gzip.open(os.path.join(run, "vm.trace.json.gz"), "wt") as f:
    json.dump({"traceEvents": meta + events}, f)


def _kernel(ts, dur, name, op, tid=1):
  return {"ph": "X", "pid": 2, "tid": tid, "ts": ts, "dur": dur, "name": name,
          "args": {"tf_op": op}}


def test_summary_of_two_steps(tmp_path):
  events = [
      _kernel(0, 100, "gemm_a", "pmap(step)/jit(main)/decode/while/body/dot_general"),
      _kernel(50, 100, "gemm_b", "pmap(step)/jit(main)/reward/switch/branch_2_fun/dot_general",
              tid=2),  # overlaps the first on another stream
      _kernel(400, 300, "adam", "pmap(step)/jit(main)/update/mul"),
      _kernel(1000, 100, "gemm_a", "pmap(step)/jit(main)/decode/while/body/dot_general"),
      {"ph": "X", "pid": 1, "tid": 1, "ts": 0, "dur": 5000, "name": "host work"},  # not device
  ]
  _write_trace(str(tmp_path), events)
  summary = profile_summary.summarize(str(tmp_path), steps=2)
  assert summary["window_ms"] == pytest.approx(1.1 / 2)  # 0 .. 1100 us over two steps
  assert summary["busy_ms"] == pytest.approx((150 + 300 + 100) / 1e3 / 2)
  assert summary["kernel_ms"] == pytest.approx(600 / 1e3 / 2)
  assert summary["phase_ms"] == pytest.approx({"decode": 0.1, "update": 0.15, "reward": 0.05})
  top = summary["top_kernels"][0]
  assert (top["name"], top["phase"], top["calls"]) == ("adam", "update", 0.5)
  assert top["ms"] == pytest.approx(0.15)
  assert "decode 0.10" in profile_summary.format_summary(summary)


def test_phase_needs_a_whole_scope_name():
  assert profile_summary.phase_of({"name": "k", "args": {"op": "x/policy_gradient/dot"}}) == (
      "policy_gradient")
  assert profile_summary.phase_of({"name": "k", "args": {"op": "x/dynamic_update_slice"}}) == (
      "other")


def test_scopes_inside_a_gradient_and_every_backward_op():
  """The names JAX gives ops in a differentiated function (from the step's optimized HLO)."""
  phase = lambda op: profile_summary.phase_of({"name": "k", "args": {"op": op}})
  assert phase("jit(_fun)/jvp(decode)/while") == "decode"  # the sampling pass, differentiated
  assert phase("jit(_fun)/jvp(reward)/mul") == "reward"
  assert phase("jit(_fun)/jvp(policy_gradient)/while") == "policy_gradient"  # the replay
  assert phase("jit(_fun)/transpose(jvp(decode))/while") == "policy_gradient"  # its backward
  assert phase("jit(_fun)/transpose(jvp(policy_gradient))/dot") == "policy_gradient"


def test_missing_or_hostonly_trace_is_reported(tmp_path):
  assert "no *.trace.json.gz" in profile_summary.summarize(str(tmp_path), 1)["note"]
  _write_trace(str(tmp_path), [{"ph": "X", "pid": 1, "tid": 1, "ts": 0, "dur": 5, "name": "h"}])
  assert "no device events" in profile_summary.summarize(str(tmp_path), 1)["note"]


def test_phases_from_the_optimized_hlo(tmp_path):
  hlo = ('HloModule pmap_step\n'
         '  %fusion.18 = f32[8]{0} fusion(f32[8]{0} %p), kind=kLoop, calls=%fc.18, '
         'metadata={op_name="pmap(step)/policy_gradient/transpose(jvp(mul))" '
         'source_file="x.py" source_line=3}\n'
         '  ROOT %custom-call.2 = bf16[8]{0} custom-call(), custom_call_target="__cublas$gemm", '
         'metadata={op_name="pmap(step)/reward/switch/branch_1_fun/dot_general"}\n')
  assert profile_summary.hlo_op_names(hlo)["fusion_18"].endswith("transpose(jvp(mul))")
  _write_trace(str(tmp_path), [
      {"ph": "X", "pid": 2, "tid": 1, "ts": 0, "dur": 10, "name": "loop_fusion_18",
       "args": {"hlo_op": "fusion.18"}},
      {"ph": "X", "pid": 2, "tid": 1, "ts": 10, "dur": 30, "name": "nvjet_sm90_gemm",
       "args": {"hlo_op": "custom-call.2"}}])
  with open(tmp_path / profile_summary.HLO_FILE, "w") as f:
    f.write(hlo)
  summary = profile_summary.summarize(str(tmp_path), steps=1)
  assert summary["phase_ms"] == pytest.approx({"reward": 0.03, "policy_gradient": 0.01})


def test_library_kernels_in_a_command_buffer_take_its_main_phase(tmp_path):
  def event(ts, dur, name, op=None):
    args = {"hlo_op": "command_buffer_7"}
    if op:
      args["tf_op"] = op
    return {"ph": "X", "pid": 2, "tid": 1, "ts": ts, "dur": dur, "name": name, "args": args}
  _write_trace(str(tmp_path), [event(0, 30, "fusion_a", "s/reward/mul"),
                               event(30, 10, "fusion_b", "s/decode/add"),
                               event(40, 50, "nvjet_gemm")])  # no name stack of its own
  summary = profile_summary.summarize(str(tmp_path), steps=1)
  assert summary["phase_ms"] == pytest.approx({"reward": 0.08, "decode": 0.01})
  assert summary["phase_inferred_ms"] == pytest.approx({"reward": 0.05})
  assert summary["top_kernels"][0]["phase"] == "~reward"
  assert "reward 0.08 (~0.05)" in profile_summary.format_summary(summary)
