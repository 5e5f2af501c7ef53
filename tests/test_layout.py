"""The layout the README promises, read from the code's own imports: floors that import only
downwards (`launch.py` -> `configs/` -> `vlprobe_jax/` -> `scorers/`, `analysis/`), no import
cycle between the project's files, and no file over 500 lines. Every import counts, those inside
functions too."""

import ast
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("configs", "vlprobe_jax", "scorers", "analysis")
# What each floor may import from the project (besides itself).
ALLOWED = {
    "launch": {"configs", "vlprobe_jax", "scorers", "analysis"},
    "configs": {"vlprobe_jax", "scorers", "analysis"},
    "vlprobe_jax": {"scorers", "analysis"},
    "scorers": set(),
    "analysis": set(),
}
MAX_LINES = 500


def _read(path: str) -> str:
  with open(path, encoding="utf-8") as f:
    return f.read()


def _module_name(path: str) -> str:
  rel = os.path.relpath(path, ROOT)[:-len(".py")].replace(os.sep, ".")
  return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def _project_files() -> dict[str, str]:
  """Module name -> path, for launch.py and every .py file of the packages."""
  files = {"launch": os.path.join(ROOT, "launch.py")}
  for package in PACKAGES:
    for folder, _, names in os.walk(os.path.join(ROOT, package)):
      for name in names:
        if name.endswith(".py"):
          path = os.path.join(folder, name)
          files[_module_name(path)] = path
  return files


def _imports(path: str, module: str, known: set[str]) -> set[str]:
  """The project modules `path` imports anywhere in it (function-level imports included)."""
  tree = ast.parse(_read(path), path)
  package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      candidates = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")
        base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
      candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
    else:
      continue
    for name in candidates:
      # `from scorers import common` names the module scorers.common; `import a.b.c` a.b.c.
      while name and name not in known:
        name = name.rpartition(".")[0]
      if name and name != module:
        found.add(name)
  return found


def _graph() -> dict[str, set[str]]:
  files = _project_files()
  known = set(files)
  return {module: _imports(path, module, known) for module, path in files.items()}


def test_the_graph_sees_the_imports_it_checks():
  graph = _graph()
  assert "configs.common" in graph["configs.scst"]  # from configs import common
  assert "scorers.registry" in graph["scorers"]  # from scorers.registry import ... (package)
  assert "vlprobe_jax.validation" in graph["launch"]  # imported inside a function


def test_imports_point_down():
  wrong = []
  for module, deps in _graph().items():
    floor = module.split(".")[0]
    for dep in deps:
      target = dep.split(".")[0]
      if target != floor and target not in ALLOWED[floor]:
        wrong.append(f"{module} imports {dep}")
  assert not wrong, "imports that point up or sideways:\n" + "\n".join(sorted(wrong))


def test_no_library_file_imports_configs():
  # launch.py reads the config file it is given by path (ml_collections' config flag); the
  # library below it takes the ConfigDict as an argument.
  importers = sorted(m for m, deps in _graph().items()
                     if not m.startswith("configs") and any(d.startswith("configs") for d in deps))
  assert not importers, importers


def test_no_import_cycles():
  graph = _graph()
  cycles, state = [], {}

  def visit(node, stack):
    state[node] = "open"
    stack.append(node)
    for dep in sorted(graph.get(node, ())):
      if state.get(dep) == "open":
        cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
      elif dep not in state:
        visit(dep, stack)
    stack.pop()
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node, [])
  assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_file_over_500_lines():
  long = {os.path.relpath(p, ROOT): n for p in _project_files().values()
          if (n := len(_read(p).splitlines())) > MAX_LINES}
  assert not long, f"files over {MAX_LINES} lines (split them by job): {long}"


def test_the_checks_catch_what_they_check(tmp_path, monkeypatch):
  """An upward import and a cycle, written into a scratch copy of the floors, are both found."""
  for package in ("scorers", "vlprobe_jax"):
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
  (tmp_path / "launch.py").write_text("import vlprobe_jax.a\n")
  (tmp_path / "vlprobe_jax" / "a.py").write_text("from scorers import b\n")
  (tmp_path / "scorers" / "b.py").write_text("def f():\n  from vlprobe_jax import a\n")
  this = sys.modules[__name__]
  monkeypatch.setattr(this, "ROOT", str(tmp_path))
  monkeypatch.setattr(this, "PACKAGES", ("scorers", "vlprobe_jax"))
  graph = _graph()
  assert graph["scorers.b"] == {"vlprobe_jax", "vlprobe_jax.a"}
  assert graph["vlprobe_jax.a"] == {"scorers", "scorers.b"}
  try:
    test_imports_point_down()
  except AssertionError as error:
    assert "scorers.b imports vlprobe_jax.a" in str(error)
  else:
    raise AssertionError("the upward import was not reported")
  try:
    test_no_import_cycles()
  except AssertionError as error:
    assert "vlprobe_jax.a -> scorers.b -> vlprobe_jax.a" in str(error), error
  else:
    raise AssertionError("the cycle was not reported")
