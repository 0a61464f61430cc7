"""pyproject.toml's dependencies cover every third-party import, and requirements.txt agrees with it."""
import ast
import importlib.metadata
import os
import re
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("train.py", "convert_torch_weights.py")
# Modules that only work with an optional extra installed; the rest of the package imports them lazily.
EXTRA_MODULES = {"detr_jax.data.tfds_source": "tfds", "detr_jax.onnx_runtime": "onnx"}


def _normalise(distribution: str) -> str:
  return re.sub(r"[-_.]+", "-", distribution).lower()


def _requirements(lines) -> dict[str, str]:
  """{normalised distribution: version specifier} of requirement lines (comments and blanks skipped)."""
  out = {}
  for line in lines:
    line = line.split("#")[0].strip()
    if line:
      name, spec = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*)", line).groups()
      out[_normalise(name)] = spec.replace(" ", "")
  return out


def _project():
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)["project"]


def _modules() -> dict[str, str]:
  """{module name: path} of the detr_jax package and the scripts."""
  out = {os.path.splitext(s)[0]: os.path.join(ROOT, s) for s in SCRIPTS}
  for folder, _, files in os.walk(os.path.join(ROOT, "detr_jax")):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        out[module.removesuffix(".__init__")] = path
  return out


def _imports(path: str) -> list[tuple[str, bool]]:
  """(imported module, whether the import runs only inside a function) for each absolute import."""
  found = []

  def visit(node, in_function):
    for child in ast.iter_child_nodes(node):
      if isinstance(child, ast.Import):
        found.extend((alias.name, in_function) for alias in child.names)
      elif isinstance(child, ast.ImportFrom) and child.level == 0:
        found.append((child.module, in_function))
        found.extend((f"{child.module}.{alias.name}", in_function) for alias in child.names)
      visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

  with open(path) as f:
    visit(ast.parse(f.read(), path), False)
  return found


def test_every_third_party_import_is_a_declared_dependency():
  project = _project()
  core = set(_requirements(project["dependencies"]))
  extras = {name: set(_requirements(reqs)) for name, reqs in project["optional-dependencies"].items()}
  providers = importlib.metadata.packages_distributions()
  modules = _modules()
  problems, third_party = [], set()
  for module, path in modules.items():
    allowed = core | extras.get(EXTRA_MODULES.get(module), set())
    for name, _ in _imports(path):
      top = name.split(".")[0]
      if top in sys.stdlib_module_names or top == "detr_jax" or top in modules:
        continue
      third_party.add(top)
      distributions = {_normalise(d) for d in providers.get(top, [])}
      if not distributions:
        problems.append(f"{module} imports {top}, which no installed distribution provides")
      elif not distributions & allowed:
        problems.append(f"{module} imports {top} ({', '.join(sorted(distributions))}), not in pyproject's "
                        f"dependencies{' or the ' + EXTRA_MODULES[module] + ' extra' if module in EXTRA_MODULES else ''}")
  assert problems == []
  assert {"jax", "flax", "grain", "orbax", "PIL", "tensorflow_datasets"} <= third_party  # the walk sees imports


def test_extra_only_modules_are_imported_lazily():
  """Without the tfds extra, `import detr_jax...` must still work: tfds_source is only imported on use."""
  eager = [f"{module} imports {name} at import time" for module, path in _modules().items()
           for name, in_function in _imports(path)
           if not in_function and module not in EXTRA_MODULES and name in EXTRA_MODULES]
  assert eager == []


def test_requirements_txt_agrees_with_pyproject():
  project = _project()
  declared = _requirements(project["dependencies"])
  for reqs in project["optional-dependencies"].values():
    declared.update(_requirements(reqs))
  with open(os.path.join(ROOT, "requirements.txt")) as f:
    assert _requirements(f) == declared
  assert [name for name, spec in declared.items() if not spec.startswith(">=")] == []  # each has a lower bound
  assert "grain" in _requirements(project["dependencies"])
