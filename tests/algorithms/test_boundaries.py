"""alignloop.algorithms imports only torch and the standard library, and does no I/O."""

import ast
import pathlib
import sys

import alignloop.algorithms

PACKAGE = pathlib.Path(alignloop.algorithms.__file__).parent
ALLOWED = {"torch", "alignloop"} | set(sys.stdlib_module_names)
NO_IO = {"open", "print", "input"}


def test_only_torch_and_stdlib_imports_and_no_io():
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                roots = [(node.module or "").split(".")[0]]
                if roots[0] == "alignloop":
                    assert node.module.startswith("alignloop.algorithms"), f"{path.name}: {node.module}"
            else:
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                    assert node.func.id not in NO_IO, f"{path.name}:{node.lineno} calls {node.func.id}"
                continue
            for root in roots:
                assert root in ALLOWED, f"{path.name}:{node.lineno} imports {root}"


def test_files_stay_short():
    for path in PACKAGE.glob("*.py"):
        assert len(path.read_text().splitlines()) < 300, path.name
