"""Tests of analysis/java.py: the Java tools cannot hang, misalign or fail silently.

The METEOR timeout and protocol tests drive `MeteorProcess` with small Python stand-ins for the
Java process, so they take a second, not METEOR's 10-40 s start.
"""

import shutil
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from analysis import java

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="needs Java")


@needs_java
def test_ptb_keeps_one_line_per_caption():
  captions = ["A dog.\nOn a bed", "", "two\r\ncats", "a\u2028b", " . ", "The END"]
  assert java.tokenize_ptb(captions) == ["a dog on a bed", "", "two cats", "a b", "",
                                         "the end"]
  assert java.tokenize_ptb([]) == []


@needs_java
def test_ptb_timeout_names_the_tool():
  with pytest.raises(java.JavaToolError, match="PTB tokenizer did not finish within "
                                               "java_timeout_s=0.01 s"):
    java.tokenize_ptb(["a dog"] * 10, timeout_s=0.01)


def test_missing_java_is_explained(monkeypatch):
  monkeypatch.setattr(java.shutil, "which", lambda name: None)
  with pytest.raises(java.JavaToolError, match="no `java` on PATH. Install a JRE"):
    java.tokenize_ptb(["a dog"])


def _stand_in(script: str) -> java.MeteorProcess:
  """A MeteorProcess talking to `python -c script` instead of METEOR's jar."""
  meteor = java.MeteorProcess.__new__(java.MeteorProcess)
  meteor._stderr = tempfile.TemporaryFile()  # pylint: disable=protected-access
  meteor._proc = subprocess.Popen(  # pylint: disable=protected-access
      [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
      stderr=meteor._stderr)  # pylint: disable=protected-access
  meteor._lock = threading.Lock()  # pylint: disable=protected-access
  return meteor


GTS = {1: ["a dog on a bed"], 2: ["a cat"]}
RES = {1: ["a dog"], 2: ["a cat"]}


def test_meteor_that_never_answers_is_killed_at_the_timeout():
  meteor = _stand_in("import time; time.sleep(60)")
  start = time.perf_counter()
  with pytest.raises(java.JavaToolError, match="METEOR did not answer within "
                                               "java_timeout_s=0.5 s"):
    meteor.compute_score(GTS, RES, timeout_s=0.5)
  assert time.perf_counter() - start < 15
  assert not meteor.alive()


def test_meteor_protocol_error_fails_fast_instead_of_hanging():
  # Answers every line with statistics, as METEOR does for SCORE lines: the EVAL answers then
  # cannot be read as scores, the error pycocoevalcap raises before hanging at exit.
  script = ("import sys\nfor line in sys.stdin:\n"
            "  sys.stdout.write('11.0 9.0 1.0\\n'); sys.stdout.flush()")
  meteor = _stand_in(script)
  with pytest.raises(java.JavaToolError, match="METEOR failed: could not convert string to "
                                               "float"):
    meteor.compute_score(GTS, RES, timeout_s=20)
  assert not meteor.alive()


def test_meteor_receives_one_line_per_caption(tmp_path):
  # Speaks METEOR's protocol (statistics per SCORE line, then one score per image and the mean)
  # and logs every line it reads, so we see exactly what METEOR would read.
  log = tmp_path / "lines.txt"
  script = (f"import sys\nlog = open({str(log)!r}, 'w')\nfor line in sys.stdin:\n"
            "  log.write(line); log.flush()\n"
            "  if line.startswith('EVAL'):\n"
            "    n = line.count('|||')\n"
            "    sys.stdout.write(''.join(f'0.{i}\\n' for i in range(1, n + 1)) + '0.5\\n')\n"
            "  else:\n    sys.stdout.write('1.0 2.0\\n')\n  sys.stdout.flush()")
  meteor = _stand_in(script)
  gts = {1: ["a dog\non a bed", "a ||| dog"], 2: ["a cat"]}
  res = {1: ["a dog\r\nlying"], 2: ["a  cat"]}
  assert meteor.compute_score(gts, res, timeout_s=20) == (0.5, [0.1, 0.2])
  meteor.close()
  assert log.read_text().splitlines() == [
      "SCORE ||| a dog on a bed ||| a dog ||| a dog lying", "SCORE ||| a cat ||| a cat",
      "EVAL ||| 1.0 2.0 ||| 1.0 2.0"]
