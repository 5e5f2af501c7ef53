"""Measured child processes for the rehearsal: wall time, peak resident memory, output lines.

Every measured part of the rehearsal (a store build, a checkpoint load, a training run) runs as
its own process, the command a user would type, so that its peak memory is its own
(`ru_maxrss` from `wait4`, what `/usr/bin/time -v` reports as "Maximum resident set size") and
nothing of an earlier part (page cache aside) is warm in it.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

# The repository root: launch.py and configs/ live there (the rehearsal runs them as a user does).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass
class Measured:
  """What one child process did."""
  command: list[str]
  returncode: int
  seconds: float
  peak_rss_bytes: int
  lines: list[str]  # stdout and stderr, interleaved, in order
  killed: bool = False  # `on_line` asked for a SIGKILL and it was sent

  @property
  def peak_rss_gib(self) -> float:
    return self.peak_rss_bytes / 2**30

  def tail(self, count: int = 30) -> str:
    return "\n".join(self.lines[-count:])

  def check(self, what: str) -> "Measured":
    """Raises with the output's tail when the process failed (and was not killed on purpose)."""
    if self.returncode != 0 and not self.killed:
      raise RuntimeError(f"{what} failed (exit {self.returncode}) after {self.seconds:.0f} s: "
                         f"{' '.join(self.command)}\n{self.tail()}")
    return self


def python_command(*args: str) -> list[str]:
  return [sys.executable, *args]


def child_env(**extra: str) -> dict[str, str]:
  """The environment of a measured child: CPU JAX unless told otherwise, quiet libraries, the
  repository first on the import path (the rehearsal measures this checkout)."""
  env = dict(os.environ)
  env.setdefault("JAX_PLATFORMS", "cpu")
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT] + [p for p in env.get("PYTHONPATH", "").split(
      os.pathsep) if p])
  env["PYTHONUNBUFFERED"] = "1"
  env.update(extra)
  return env


def run_measured(command: Sequence[str], *, env: dict[str, str] | None = None,
                 on_line: Callable[[str, float], bool] | None = None, echo: bool = True,
                 timeout_s: float | None = None) -> Measured:
  """Runs `command` from the repository root, streaming its output.

  Args:
    command: argv.
    env: the child's environment (default `child_env()`).
    on_line: called with each output line and the seconds since the start; returning True
      kills the child at once (SIGKILL: a preemption, not a clean exit).
    echo: print the child's lines as they come, prefixed with two spaces.
    timeout_s: kill the child after this long (reported as a failure).
  """
  start = time.perf_counter()
  process = subprocess.Popen(list(command), cwd=REPO_ROOT, env=env or child_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             bufsize=1)
  lines, killed = [], False
  try:
    for line in process.stdout:
      line = line.rstrip("\n")
      lines.append(line)
      if echo:
        print(f"  {line}", flush=True)
      elapsed = time.perf_counter() - start
      if not killed and on_line is not None and on_line(line, elapsed):
        os.kill(process.pid, signal.SIGKILL)
        killed = True
      if timeout_s is not None and elapsed > timeout_s and not killed:
        os.kill(process.pid, signal.SIGKILL)
        lines.append(f"[rehearsal] killed after the {timeout_s:.0f} s timeout")
        break
  finally:
    process.stdout.close()
  _, status, usage = os.wait4(process.pid, 0)
  process.returncode = os.waitstatus_to_exitcode(status)
  return Measured(command=list(command), returncode=process.returncode,
                  seconds=time.perf_counter() - start,
                  peak_rss_bytes=int(usage.ru_maxrss) * 1024, lines=lines, killed=killed)
