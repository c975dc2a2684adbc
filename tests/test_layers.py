"""The package's layers, read from its source with `ast` (nothing is imported): every import,
those inside functions included, points down the layer order that README.md's "Layout"
section writes; no import cycle; feedback/ and quality/ never reach torch; algorithms/ imports
only torch; configs and recipe planning run without torch."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "alignloop"
TORCH = {"torch", "transformers", "peft", "accelerate"}


def modules() -> dict[str, Path]:
    """alignloop.x.y -> its file (a package by its __init__.py)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = modules()


@cache
def imported_names(name: str, path: Path) -> list[tuple[str, int]]:
    """(dotted name, line) of every import in the file, at any depth (lazy ones too)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out += [(base, node.lineno)] + [(f"{base}.{a.name}", node.lineno) for a in node.names]
    return out


def _module_of(dotted: str) -> str | None:
    while dotted and dotted not in MODULES:
        dotted = dotted.rpartition(".")[0]
    return dotted or None


@cache
def edges() -> dict[str, dict[str, int]]:
    """module -> {alignloop module it imports: line}; imports of its own packages left out."""
    graph: dict[str, dict[str, int]] = {m: {} for m in MODULES}
    for m, path in MODULES.items():
        for dotted, line in imported_names(m, path):
            target = _module_of(dotted) if dotted.split(".")[0] == "alignloop" else None
            if target and target != "alignloop" and target != m and not m.startswith(target + "."):
                graph[m].setdefault(target, line)
    return graph


def third_party(m: str) -> set[str]:
    return {d.split(".")[0] for d, _ in imported_names(m, MODULES[m])} - {"alignloop", "__future__"}


def readme_layers() -> dict[str, int]:
    """Module prefix -> layer (1 = lowest) from the numbered list of README.md's "Layout" section:
    `config.py` is alignloop.config, `data/` alignloop.data, `quality/cli.py` alignloop.quality.cli."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    layers, number = {}, None
    for line in section.splitlines():
        start = re.match(r"(\d+)\. ", line)
        if start:
            number = int(start.group(1))
        elif not line.startswith("   "):
            number = None  # the list ended
        for token in re.findall(r"`([\w/.]+)`", line) if number else []:
            if token.endswith((".py", "/")):
                layers["alignloop." + token.removesuffix(".py").strip("/").replace("/", ".")] = number
    return layers


LAYERS = readme_layers()


def layer(module: str) -> int | None:
    """The layer of the longest README prefix of `module` (the package root itself is layer 1)."""
    if module == "alignloop":
        return 1
    prefixes = [p for p in LAYERS if module == p or module.startswith(p + ".")]
    return LAYERS[max(prefixes, key=len)] if prefixes else None


def test_the_readme_gives_every_module_a_layer():
    assert len(set(LAYERS.values())) >= 6, LAYERS
    missing = sorted(m for m in MODULES if layer(m) is None)
    assert not missing, f"add these to README.md's Layout section: {missing}"
    stale = sorted(p for p in LAYERS if p not in MODULES)
    assert not stale, f"README.md's Layout names modules that do not exist: {stale}"


def test_every_import_points_down_the_layers():
    up = [f"{MODULES[m].relative_to(ROOT)}:{line}: {m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
          for m, targets in edges().items() for t, line in targets.items() if layer(t) > layer(m)]
    assert not up, "imports that point up the layers of README.md's Layout:\n" + "\n".join(up)


def test_modules_named_in_strings_are_below_too():
    """A "module:function" or module string (the stage table's run functions, the command
    table of cli.py) is an import made later: it too must point down."""
    named = re.compile(r"^(alignloop(?:\.\w+)+)(?::\w+)?$")
    up, found = [], 0
    for m, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            hit = named.match(node.value) if isinstance(node, ast.Constant) and isinstance(node.value, str) else None
            if hit:
                found += 1
                assert hit.group(1) in MODULES, f"{path.relative_to(ROOT)}:{node.lineno}: no module {hit.group(1)}"
                if layer(hit.group(1)) > layer(m):
                    up.append(f"{path.relative_to(ROOT)}:{node.lineno}: {m} names {hit.group(1)}")
    assert found >= 10 and not up, up


def test_no_import_cycle():
    graph, order, low, stack, on, cycles = edges(), {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        order[v] = low[v] = len(order)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in order:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], order[w])
        if low[v] == order[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on.discard(component[-1])
            if len(component) > 1:
                cycles.append(sorted(component))

    for m in graph:
        if m not in order:
            visit(m)
    assert not cycles, f"import cycles: {cycles}"


def test_feedback_and_quality_never_reach_torch():
    graph = edges()
    for start in (m for m in MODULES if m.startswith(("alignloop.feedback", "alignloop.quality"))):
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo += graph[m]
        heavy = {m: sorted(third_party(m) & TORCH) for m in seen if third_party(m) & TORCH}
        assert not heavy, f"{start} reaches {heavy}"


def test_algorithms_import_only_torch():
    for m in (m for m in MODULES if m.startswith("alignloop.algorithms")):
        assert third_party(m) - set(sys.stdlib_module_names) <= {"torch"}, m
        assert all(t.startswith("alignloop.algorithms") for t in edges()[m]), m


def test_configs_and_planning_a_recipe_never_import_torch(tmp_path):
    code = "\n".join([
        "import sys",
        "from pathlib import Path",
        "import alignloop.configs, alignloop.stages",
        "from alignloop.recipe import load_recipe, plan",
        "for name in ('quickstart', 'cai'):",
        "    recipe, path = load_recipe(name)",
        "    assert plan(recipe, Path(sys.argv[1]), str(path))",
        "assert 'torch' not in sys.modules, 'torch imported'",
        "print('ok')"])
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
