"""The package layout the README describes: no import cycles, small modules,
training never imports the test tools, and the README's diagram is the tree."""

from __future__ import annotations

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hcl_jax"
MAX_LINES = 420  # "about 400"


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def import_graph() -> dict[str, set[str]]:
  """Module -> the hcl_jax modules it imports, at any depth of the file (a
  function-level import is still a dependency)."""
  modules = _modules()
  graph: dict[str, set[str]] = {}
  for name, path in modules.items():
    deps: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        # `from pkg import mod` imports pkg.mod when that is a module.
        targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules
                   else node.module for alias in node.names]
      else:
        continue
      deps.update(t for t in targets if t in modules and t != name)
    graph[name] = deps
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(node: str) -> list[str] | None:
    state[node] = 1
    stack.append(node)
    for dep in sorted(graph[node]):
      if state.get(dep) == 1:
        return stack[stack.index(dep):] + [dep]
      if dep not in state and (cycle := visit(dep)):
        return cycle
    stack.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state and (cycle := visit(node)):
      return cycle
  return None


def test_cycle_finder_finds_a_cycle():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle():
  cycle = find_cycle(import_graph())
  assert cycle is None, " -> ".join(cycle)


def test_no_import_cycle_between_packages():
  """Packages import one way (losses <- models <- train <- run <- main, ...):
  a package-level cycle is a layer that leaks."""
  def package(module: str) -> str:
    return ".".join(module.split(".")[:2])
  graph: dict[str, set[str]] = {}
  for module, deps in import_graph().items():
    graph.setdefault(package(module), set()).update(
        package(d) for d in deps if package(d) != package(module))
  cycle = find_cycle(graph)
  assert cycle is None, " -> ".join(cycle)


def test_modules_are_small():
  sources = [*PACKAGE.rglob("*.py"), *(ROOT / "launch").rglob("*.py")]
  big = {str(p.relative_to(ROOT)): n for p in sources
         if (n := len(p.read_text().splitlines())) > MAX_LINES}
  assert not big, big


def test_training_never_imports_the_test_tools():
  graph = import_graph()
  for entry in ("hcl_jax.main", "hcl_jax.evaluate", "hcl_jax.graph.main", "hcl_jax.reproduce.cli"):
    seen, todo = set(), [entry]
    while todo:
      module = todo.pop()
      if module not in seen:
        seen.add(module)
        todo.extend(graph[module])
    assert not [m for m in seen if m.startswith("hcl_jax.testing")], entry


def test_readme_layout_diagram_is_the_tree():
  readme = (ROOT / "README.md").read_text()
  section = readme[readme.index("## Layout"):]
  diagram = re.search(r"```text\n(.*?)```", section, re.S).group(1)
  named = set(re.findall(r"^\s*[│├└─ ]*(\w+)/", diagram, re.M))
  packages = {p.parent.name for p in PACKAGE.rglob("__init__.py")} - {"hcl_jax"}
  assert packages <= named, f"packages missing from the README's diagram: {packages - named}"
  for name in named - {"hcl_jax", "configs", "launch", "tests", "benchmarks", "docs"}:
    assert (PACKAGE / name / "__init__.py").exists(), f"README names {name}/, not in hcl_jax/"
