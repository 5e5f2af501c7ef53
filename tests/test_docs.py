"""What the words promise: every project file a comment, docstring or doc names exists, and every
documented `python launch.py ...` command builds its config with fields that exist."""

import glob
import importlib
import os
import re
import shlex

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT_FILES = sorted(
    p for pattern in ("*.py", "*.md", "configs/*.py", "vlprobe_jax/**/*.py", "scorers/*.py",
                      "analysis/*.py", "tests/*.py", "docs/**/*.md", ".ci/run")
    for p in glob.glob(os.path.join(ROOT, pattern), recursive=True))
# A project path: one of our folders, then a file name with an extension we ship.
_PATH = re.compile(r"\b((?:vlprobe_jax|scorers|analysis|configs|tests|docs)/[\w/.-]+"
                   r"\.(?:py|md|json|npz|pt|bin|pkl|txt|gz))\b")
# Outputs that live in a run's workdir, named relative to it.
_WORKDIR_OUTPUTS = re.compile(r"^(analysis/(report\.md|analysis\.json)|scorers/\w+/pretrain\.json)$")


def _read(path):
  with open(path, encoding="utf-8") as f:
    return f.read()


def test_every_named_project_file_exists():
  missing = []
  for path in TEXT_FILES:
    for name in set(_PATH.findall(_read(path))):
      if _WORKDIR_OUTPUTS.match(name) or os.path.exists(os.path.join(ROOT, name)):
        continue
      missing.append(f"{os.path.relpath(path, ROOT)} names {name}")
  assert not missing, "\n".join(missing)


def _documented_commands():
  """(file, command) for every `python launch.py --config=...` line, continuations joined."""
  out = []
  for path in TEXT_FILES:
    if path == os.path.abspath(__file__):
      continue
    text = _read(path).replace("\\\n", " ")
    for match in re.finditer(r"python launch\.py (--config=[^\n`|]*)", text):
      command = match.group(1).split("  #")[0].replace('"$@"', "").strip()
      if "<" not in command.split()[0]:  # "--config=<file>" is a template, not a command.
        out.append((os.path.relpath(path, ROOT), command))
  return out


COMMANDS = _documented_commands()


def test_commands_were_found():
  assert len(COMMANDS) > 20, COMMANDS


@pytest.mark.parametrize("where, command", COMMANDS, ids=[f"{w}:{c[:60]}" for w, c in COMMANDS])
def test_documented_command_builds(where, command):
  args = shlex.split(command.replace("...", ""))
  config_arg = args[0].split("=", 1)[1]
  file, _, arg = config_arg.partition(":")
  assert os.path.isfile(os.path.join(ROOT, file)), f"{where}: no config file {file}"
  module = importlib.import_module(file[:-3].replace("/", "."))
  config = module.get_config(arg.replace("<dir>", "d").replace("<file>", "f") or None)
  for override in args[1:]:
    if not override.startswith("--config."):
      continue
    field = override[len("--config."):].split("=", 1)[0]
    node = config
    for part in field.split("."):
      assert part in node, f"{where}: `{command}` sets {field!r}, which the config lacks"
      node = node[part]
