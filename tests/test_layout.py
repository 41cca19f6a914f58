"""The layout docs/design.md describes: dependencies point one way (flows -> tasks -> models,
tasks -> infra; models imports nothing of the project), and no module of the project
imports itself back through others, deferred imports inside functions included."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("flows", "tasks", "models", "infra")
# What each top-level package may import of the project.
ALLOWED = {
    "flows": {"flows", "tasks", "models", "infra"},
    "tasks": {"tasks", "models", "infra"},
    "models": {"models"},
    "infra": {"infra"},
}


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(root: Path) -> dict[str, Path]:
    return {_module_name(p, root): p for pkg in PACKAGES for p in (root / pkg).rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules that `name` imports, at module level or inside functions."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            # `from pkg import mod` names a module when pkg.mod is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def _graph(root: Path = REPO) -> dict[str, set[str]]:
    mods = _modules(root)
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def test_dependencies_point_one_way():
    wrong = sorted(
        f"{mod} imports {dep}"
        for mod, deps in _graph().items()
        for dep in deps
        if dep.split(".")[0] not in ALLOWED[mod.split(".")[0]]
    )
    assert wrong == []


def test_no_import_cycles():
    graph = _graph()
    # A package's __init__ re-exporting its own modules is not a cycle of the road.
    edges = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert cycles == []


def _empty_packages(root: Path) -> None:
    for pkg in PACKAGES:
        (root / pkg).mkdir()
        (root / pkg / "__init__.py").write_text("")


def test_the_checker_sees_a_cycle(tmp_path):
    """The graph itself: two modules importing each other (one inside a function) are both seen."""
    _empty_packages(tmp_path)
    (tmp_path / "tasks" / "a.py").write_text("def f():\n    from tasks import b\n")
    (tmp_path / "tasks" / "b.py").write_text("from tasks.a import f\n")
    (tmp_path / "models" / "m.py").write_text("import infra.x\n")
    graph = _graph(tmp_path)
    assert graph["tasks.a"] == {"tasks.b"} and graph["tasks.b"] == {"tasks.a"}
    assert graph["models.m"] == {"infra"}


def test_no_script_folder_hides_a_package_of_the_project():
    """A script's own folder leads sys.path: bench/models.py once made `import models.backbones`
    fail in every bench script that reached the model code ("'models' is not a package"). No file
    or folder beside a script may take the name of one of the project's packages."""
    script_dirs = [REPO / "bench", REPO / "infra" / "docker", REPO / ".ci"]
    clashes = sorted(str(p.relative_to(REPO)) for d in script_dirs if d.is_dir() for p in d.iterdir()
                     if (p.stem if p.suffix == ".py" else p.name) in PACKAGES)
    assert not clashes, f"these shadow a project package when a script beside them runs: {clashes}"


# Steps of the road that stand on the same floor: none reaches into another's room below.
# train -> evaluate is allowed (validation scores with evaluate's scoring); evaluate and segment
# never import train: what both need of a run (build, load, verify a checkpoint) is tasks.checkpoint.
FORBIDDEN_STEP_ARROWS = {
    "tasks.evaluate": ("tasks.train", "tasks.tune", "tasks.segment"),
    "tasks.segment": ("tasks.train", "tasks.tune"),
    # a pipeline step reads data through the readers, never through the generator of a benchmark set
    "tasks.enrich": ("tasks.synthavs", "tasks.train", "tasks.evaluate"),
    "tasks.decode": ("tasks.enrich", "tasks.shards", "tasks.train", "tasks.evaluate", "tasks.segment"),
}


def test_steps_do_not_reach_into_each_others_rooms():
    wrong = sorted(f"{mod} imports {dep}" for mod, deps in _graph().items()
                   for room, banned in FORBIDDEN_STEP_ARROWS.items() if mod == room or mod.startswith(room + ".")
                   for dep in deps if any(dep == b or dep.startswith(b + ".") for b in banned))
    assert wrong == []


def _private_imports(root: Path = REPO) -> list[str]:
    """`from X import _name` of a project module X by another module: a private name borrowed."""
    mods = _modules(root)
    out = []
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] in PACKAGES:
                out += [f"{name} imports {node.module}.{a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__") and node.module != name]
    return sorted(out)


def test_no_private_name_is_borrowed_across_modules():
    assert _private_imports() == []


def test_the_private_name_check_sees_a_borrowed_name(tmp_path):
    _empty_packages(tmp_path)
    (tmp_path / "tasks" / "a.py").write_text("def _helper():\n    pass\n")
    (tmp_path / "tasks" / "b.py").write_text("from tasks.a import _helper\n")
    assert _private_imports(tmp_path) == ["tasks.b imports tasks.a._helper"]
