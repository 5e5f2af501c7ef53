"""coco-caption's Java tools (PTB tokenizer, METEOR 1.5, SPICE 1.0), each bounded by a timeout.

The jars and command lines are pycocoevalcap's, and METEOR is spoken to in the same line
protocol, so every number equals pycocoevalcap's to the last digit. What differs is how the
processes are driven:

* pycocoevalcap's METEOR wrapper writes captions into a line protocol as they are; a caption with
  a newline desynchronises it (`ValueError: could not convert string to float: b'11.0 9.0 ...'`)
  and, as the error leaves its lock held, the interpreter then hangs at exit in `Meteor.__del__`.
  Here every text has its whitespace folded to single spaces (and "|||", the protocol's
  separator, removed) before it is written, every exchange runs under a timeout, and on a timeout
  or a protocol error the Java process is killed and the error names the tool, the timeout and
  what to do.
* METEOR's stderr goes to a temporary file, not a pipe nobody reads (a full pipe would block it).
* The PTB tokenizer and SPICE read and write temporary files in the system temp folder, not inside
  the installed package (which may be read-only); SPICE downloads nothing.

METEOR takes ~10-40 s to start (it loads its paraphrase table), so its process is started once
per Python process and reused; that start counts against the first call's timeout.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence

import numpy as np

# Long enough for METEOR's start plus 5,000 captions, or the PTB tokenizer on 600k captions.
DEFAULT_TIMEOUT_S = 300.0
# coco-caption removes these tokens after PTB tokenization (pycocoevalcap's PUNCTUATIONS).
PTB_PUNCTUATION = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?",
                             "!", ",", ":", "-", "--", "...", ";"])


class JavaToolError(RuntimeError):
  """A Java tool failed, timed out or is missing; the message says which and what to do."""


def fold(text: str) -> str:
  """One line: every run of whitespace (newlines, tabs, Unicode line separators) -> one space."""
  return " ".join(text.split())


def package_dir(sub: str) -> str:
  """A folder of pycocoevalcap (a namespace package: no __file__), where its jars are."""
  import pycocoevalcap  # pylint: disable=g-import-not-at-top
  return os.path.join(list(pycocoevalcap.__path__)[0], sub)


def have_java() -> bool:
  return shutil.which("java") is not None


def _require_java(tool: str) -> None:
  if not have_java():
    raise JavaToolError(f"{tool} needs Java: no `java` on PATH. Install a JRE (e.g. openjdk-17) "
                        "or choose the tool's Java-free alternative (see the config docstring).")


def _run(cmd: list[str], tool: str, timeout_s: float, cwd: str | None = None) -> bytes:
  _require_java(tool)
  try:
    done = subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, timeout=timeout_s)
  except subprocess.TimeoutExpired as error:
    raise JavaToolError(f"{tool} did not finish within java_timeout_s={timeout_s:g} s and was "
                        "killed; raise java_timeout_s for very large inputs, or check that Java "
                        "runs (`java -version`).") from error
  except subprocess.CalledProcessError as error:
    tail = (error.stderr or b"").decode(errors="replace")[-400:]
    raise JavaToolError(f"{tool} failed with exit code {error.returncode}: {tail}") from error
  return done.stdout


def tokenize_ptb(texts: Sequence[str], timeout_s: float = DEFAULT_TIMEOUT_S) -> list[str]:
  """coco-caption's tokenization: Stanford PTBTokenizer (lower-cased), punctuation removed.

  Args:
    texts: captions; whitespace (newlines included) is folded first, as one caption is one line.
    timeout_s: the longest the Java call may take.

  Returns:
    One string per text: its tokens joined by single spaces ("" when only punctuation was left).
  """
  if not texts:
    return []
  jar = os.path.join(package_dir("tokenizer"), "stanford-corenlp-3.4.1.jar")
  with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
    f.write("\n".join(fold(t) for t in texts))
    path = f.name
  try:
    out = _run(["java", "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines",
                "-lowerCase", path], "the PTB tokenizer", timeout_s).decode("utf-8")
  finally:
    os.remove(path)
  lines = out.split("\n")
  if len(lines) < len(texts) or any(lines[len(texts):]):
    raise JavaToolError(f"the PTB tokenizer returned {len(lines)} lines for {len(texts)} "
                        "captions; a caption must have been split. Report this caption set.")
  return [" ".join(w for w in line.rstrip().split(" ") if w and w not in PTB_PUNCTUATION)
          for line in lines[:len(texts)]]


def _meteor_text(text: str) -> str:
  return fold(text.replace("|||", " "))


class MeteorProcess:
  """One running METEOR 1.5 (`-stdio -l en -norm`, as pycocoevalcap) with a timeout per call."""

  def __init__(self):
    _require_java("METEOR")
    self._stderr = tempfile.TemporaryFile()
    self._proc = subprocess.Popen(
        ["java", "-jar", "-Xmx2G", "meteor-1.5.jar", "-", "-", "-stdio", "-l", "en", "-norm"],
        cwd=package_dir("meteor"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=self._stderr)
    self._lock = threading.Lock()

  def alive(self) -> bool:
    return self._proc.poll() is None

  def _readline(self) -> str:
    line = self._proc.stdout.readline()
    if not line:
      raise JavaToolError("METEOR closed its output (it exited or was killed)")
    return line.decode().strip()

  def _write(self, line: str) -> None:
    self._proc.stdin.write((line + "\n").encode())
    self._proc.stdin.flush()

  def _exchange(self, gts: Mapping, res: Mapping) -> tuple[float, list[float]]:
    # pycocoevalcap's protocol: one SCORE line per image (answered by its statistics), then one
    # EVAL line with all of them (answered by one score per image and the corpus score).
    stats = []
    for i in gts:
      hypothesis = _meteor_text(res[i][0])
      references = " ||| ".join(_meteor_text(r) for r in gts[i])
      self._write(f"SCORE ||| {references} ||| {hypothesis}")
      stats.append(self._readline())
    self._write("EVAL ||| " + " ||| ".join(stats))
    scores = [float(self._readline()) for _ in gts]
    return float(self._readline()), scores

  def compute_score(self, gts: Mapping, res: Mapping,
                    timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[float, list[float]]:
    """(corpus METEOR, [per-image METEOR]) as pycocoevalcap's `Meteor.compute_score`."""
    if gts.keys() != res.keys():
      raise ValueError("analysis/java.py: METEOR needs the same image ids in gts and res.")
    box = {}

    def work():
      try:
        box["value"] = self._exchange(gts, res)
      except Exception as error:  # pylint: disable=broad-except  (re-raised below)
        box["error"] = error

    with self._lock:
      worker = threading.Thread(target=work, daemon=True)
      worker.start()
      worker.join(timeout_s)
      if worker.is_alive():
        self.close()
        worker.join(10)
        raise JavaToolError(f"METEOR did not answer within java_timeout_s={timeout_s:g} s (its "
                            "start takes 10-40 s) and was killed; raise java_timeout_s, or "
                            "skip METEOR (no_meteor).")
      if "error" in box:
        tail = self.stderr_tail()
        self.close()
        raise JavaToolError(f"METEOR failed: {box['error']}. {tail}".strip()) from box["error"]
    return box["value"]

  def stderr_tail(self, chars: int = 300) -> str:
    try:
      self._stderr.seek(0)
      return self._stderr.read().decode(errors="replace")[-chars:]
    except (OSError, ValueError):
      return ""

  def close(self) -> None:
    if self._proc.poll() is None:
      self._proc.kill()
    try:
      self._proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      pass
    for stream in (self._proc.stdin, self._proc.stdout, self._stderr):
      try:
        stream.close()
      except OSError:
        pass


_METEOR: list[MeteorProcess] = []  # at most one, started on first use


def meteor(gts: Mapping, res: Mapping,
           timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[float, list[float]]:
  """METEOR through the process-wide METEOR (started on first use, restarted after a failure)."""
  if _METEOR and not _METEOR[0].alive():
    _METEOR.pop().close()
  if not _METEOR:
    _METEOR.append(MeteorProcess())
  try:
    return _METEOR[0].compute_score(gts, res, timeout_s)
  except JavaToolError:
    _METEOR.pop().close()
    raise


@atexit.register
def _close_meteor() -> None:
  while _METEOR:
    _METEOR.pop().close()


def spice(gts: Mapping[int, list[str]], res: Mapping[int, list[str]], corenlp_jars: list[str],
          timeout_s: float = DEFAULT_TIMEOUT_S) -> float:
  """Mean SPICE F-score through pycocoevalcap's spice-1.0.jar (needs ~8 GB of memory)."""
  spice_dir = package_dir("spice")
  classpath = os.pathsep.join([os.path.join(spice_dir, "spice-1.0.jar"),
                               os.path.join(spice_dir, "lib", "*")] + list(corenlp_jars))
  with tempfile.TemporaryDirectory() as tmp:
    in_file, out_file = os.path.join(tmp, "in.json"), os.path.join(tmp, "out.json")
    with open(in_file, "w") as f:
      json.dump([{"image_id": i, "test": fold(res[i][0]), "refs": [fold(r) for r in gts[i]]}
                 for i in sorted(res)], f)
    # No -cache: its LMDB store needs native libraries and only speeds up repeated runs.
    _run(["java", "-Xmx8G", "-cp", classpath, "edu.anu.spice.SpiceScorer", in_file, "-out",
          out_file, "-subset", "-silent"], "SPICE", timeout_s)
    with open(out_file) as f:
      results = json.load(f)
  return float(np.nanmean([float(r["scores"]["All"]["f"]) for r in results]))
