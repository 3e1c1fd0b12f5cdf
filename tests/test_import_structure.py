"""The package's import graph: no cycles between modules, and the engine never reaches for a plugin.

How an import statement becomes an edge of the graph (read from the source with ``ast``, so every
import counts: module level, inside functions (lazy imports) and under ``if TYPE_CHECKING:``, as
a type-only import still ties two modules together: neither can be read or moved without the other):

* ``import a.b.c`` -> module ``a.b.c``. The parent packages ``a`` and ``a.b`` run first too, but
  their ``__init__`` is not counted as a dependency: otherwise every module of a package whose
  ``__init__`` re-exports one of its submodules would sit on a cycle without anything being wrong.
* ``from a.b import name`` -> ``a.b.name`` when that is a module of the package, else the package
  ``a.b`` itself (its ``__init__``, where ``name`` must be defined). So a package ``__init__``
  importing its own submodules is fine, but a submodule importing a name from the ``__init__``
  that imports it is a cycle: that name is only there if the ``__init__`` got past the import.
* Relative imports are resolved against the importing module's package first.
* Only modules of ``mistralrs`` are nodes; imports of other packages are ignored.

Rules checked:

1. No cycle between modules (a module importing itself is ignored). A failure names a shortest
   cycle path per group of modules that import each other, e.g. ``a -> b -> a``, and the group's
   other members.
2. Nothing under ``mistralrs.engine`` or ``mistralrs.registry`` imports ``mistralrs.plugins``: the
   plugins build on the engine and reach it through the registry's entry points only.
"""

from __future__ import annotations

import ast
from collections import deque
from functools import lru_cache
from pathlib import Path

import mistralrs

ROOT = Path(mistralrs.__file__).parent
PACKAGE = "mistralrs"
CORE_PREFIXES = ("mistralrs.engine", "mistralrs.registry")
PLUGINS = "mistralrs.plugins"


def _module_files(root: Path, package: str) -> dict[str, Path]:
    """Every module of the package by dotted name; only folders with an ``__init__.py`` are packages."""
    modules: dict[str, Path] = {}
    packages = deque([(root, package)])
    while packages:
        folder, name = packages.popleft()
        for path in sorted(folder.iterdir()):
            if path.is_dir() and (path / "__init__.py").is_file():
                packages.append((path, f"{name}.{path.name}"))
            elif path.suffix == ".py":
                modules[name if path.name == "__init__.py" else f"{name}.{path.stem}"] = path
    return modules


def _module_level(tree: ast.Module) -> list[ast.stmt]:
    """The statements that run when the module is imported: its body, with top-level if/try blocks
    opened (function bodies are left out: their imports are lazy)."""
    stack, out = list(tree.body), []
    while stack:
        node = stack.pop()
        out.append(node)
        if isinstance(node, (ast.If, ast.Try)):
            stack.extend([*node.body, *node.orelse, *getattr(node, "finalbody", []),
                          *(stmt for handler in getattr(node, "handlers", []) for stmt in handler.body)])
    return out


def _imported_names(module: str, path: Path, modules: dict[str, Path], module_level_only: bool = False) -> set[str]:
    """The modules that ``module`` imports, those of the package by the rules in this file's docstring,
    others by their dotted name (``module_level_only``: those it imports when it is itself imported)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in _module_level(tree) if module_level_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in modules else base)
    return found


def _imported(module: str, path: Path, modules: dict[str, Path], module_level_only: bool = False) -> set[str]:
    """The package modules that ``module`` imports."""
    return {name for name in _imported_names(module, path, modules, module_level_only)
            if name in modules and name != module}


def build_graph(root: Path, package: str) -> dict[str, frozenset[str]]:
    modules = _module_files(root, package)
    return {name: frozenset(_imported(name, path, modules)) for name, path in modules.items()}


@lru_cache(maxsize=1)
def import_graph() -> dict[str, frozenset[str]]:
    return build_graph(ROOT, PACKAGE)


def _strongly_connected(graph: dict[str, frozenset[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (the graph is deep enough to worry about recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, targets = work[-1]
            target = next(targets, None)
            if target is not None:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                groups.append(sorted(group))
    return groups


def _shortest_cycle(graph: dict[str, frozenset[str]], group: list[str]) -> list[str]:
    """A shortest path from the group's first module back to itself, inside the group."""
    start, members = group[0], set(group)
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for target in sorted(graph[node] & members):
            if target == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if target not in came_from:
                came_from[target] = node
                queue.append(target)
    raise AssertionError(f"{group} is not a cycle")


def describe_cycles(graph: dict[str, frozenset[str]]) -> list[str]:
    """One line per group of modules that import each other: a cycle path, and the group's other
    members when it has more than that cycle."""
    lines = []
    for group in _strongly_connected(graph):
        if len(group) < 2:
            continue
        cycle = _shortest_cycle(graph, group)
        others = sorted(set(group) - set(cycle))
        lines.append(" -> ".join(cycle) + (f"  (same group: {', '.join(others)})" if others else ""))
    return lines


def test_the_package_is_found():
    graph = import_graph()
    assert "mistralrs.engine.api" in graph and "mistralrs.plugins" in graph
    assert "mistralrs.engine.core.sampler" in graph["mistralrs.engine.core.llm_engine"]


def test_the_rules_on_a_small_package(tmp_path):
    files = {
        "__init__.py": "from pkg import sub\n",  # an __init__ importing its submodule: no cycle by itself
        "sub.py": "def f():\n    from .lazy import g\n",  # a lazy relative import still counts
        "lazy.py": "from pkg import sub\n",  # ... and closes sub -> lazy -> sub
        "names.py": "from pkg import VERSION\n",  # a name from the __init__: an edge to the package
        "inner/__init__.py": "from ..names import x\n",
    }
    for name, text in files.items():
        (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / name).write_text(text)
    graph = build_graph(tmp_path / "pkg", "pkg")
    assert graph == {"pkg": {"pkg.sub"}, "pkg.sub": {"pkg.lazy"}, "pkg.lazy": {"pkg.sub"},
                     "pkg.names": {"pkg"}, "pkg.inner": {"pkg.names"}}
    assert describe_cycles(graph) == ["pkg.lazy -> pkg.sub -> pkg.lazy"]


def test_no_import_cycles():
    cycles = describe_cycles(import_graph())
    assert not cycles, "import cycles (a path per group of modules that import each other):\n" + "\n".join(
        "  " + line for line in cycles)


def test_engine_and_registry_do_not_import_plugins():
    offenders = [f"  {module} -> {target}" for module, targets in sorted(import_graph().items())
                 if module.startswith(CORE_PREFIXES) for target in sorted(targets)
                 if target == PLUGINS or target.startswith(PLUGINS + ".")]
    assert not offenders, "the engine and registry must not import plugins:\n" + "\n".join(offenders)


def test_every_package_is_listed_for_installation():
    """pyproject's explicit package list: an editable install imports an unlisted subpackage, a wheel
    would leave it out."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {PACKAGE + "".join("." + p for p in init.parent.relative_to(ROOT).parts)
             for top in ("engine", "registry", "plugins", "conf") for init in (ROOT / top).rglob("__init__.py")}
    assert found - listed == set()


# -- Ray stays optional: only the Ray backend's package imports it, and nothing else imports that
# package's Ray modules but lazily (serve.backend=ray) ------------------------------------------------
SCALEOUT = "mistralrs.engine.scaleout"


def _ray_importers(module_level_only: bool) -> set[str]:
    modules = _module_files(ROOT, PACKAGE)
    return {name for name, path in modules.items()
            if any(n == "ray" or n.startswith("ray.") for n in _imported_names(name, path, modules, module_level_only))}


def test_only_the_ray_backend_imports_ray():
    outside = sorted(m for m in _ray_importers(module_level_only=False) if not m.startswith(SCALEOUT))
    assert not outside, f"modules importing ray outside {SCALEOUT}: {outside}"


def _module_level_graph() -> dict[str, set[str]]:
    modules = _module_files(ROOT, PACKAGE)
    return {name: _imported(name, path, modules, module_level_only=True) for name, path in modules.items()}


def test_only_the_ray_backend_modules_load_ray_on_import():
    """No module outside the Ray backend's Ray modules reaches one of them through module-level
    imports: importing the package, the server or the CLI loads no Ray."""
    graph, ray_modules = _module_level_graph(), _ray_importers(module_level_only=True)
    assert {f"{SCALEOUT}.cluster", f"{SCALEOUT}.engine_client", f"{SCALEOUT}.replica_set"} <= ray_modules
    offenders = []
    for start in sorted(set(graph) - ray_modules):
        seen, queue = {start}, deque([start])
        while queue:
            for target in graph[queue.popleft()] - seen:
                if target in ray_modules:
                    offenders.append(f"{start} -> ... -> {target}")
                seen.add(target)
                queue.append(target)
    assert not offenders, "module-level imports that load Ray:\n" + "\n".join(offenders)


def test_the_server_and_cli_load_no_ray():
    import subprocess
    import sys

    entry_points = ["mistralrs", "mistralrs.engine.api", "mistralrs.engine.server", "mistralrs.engine.cli.main",
                    "mistralrs.engine.cli.tasks.serve", "mistralrs.engine.cli.tasks.bench",
                    f"{SCALEOUT}.ingress", f"{SCALEOUT}.replica"]
    code = ("import importlib, sys\n"
            f"for name in {entry_points!r}:\n    importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"importing the server loaded Ray: {out.stdout[:500]}"
