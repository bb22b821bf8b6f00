"""The house rules that keep the code readable: thin CLI commands, imports where a reader looks for them."""

from __future__ import annotations

import ast
from pathlib import Path

import medlens

SRC = Path(medlens.__file__).parent
LAZY_FACES = {SRC / "__init__.py"}  # the public face loads its names on first use (importlib, no import statement)


def _functions(tree: ast.AST) -> list[ast.FunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_medlens_modules_are_imported_at_module_top_outside_the_cli() -> None:
    """The CLI imports the library inside its commands (the library loads PyTorch; `medlens --help` stays fast, as
    the docstring of each CLI module says); everywhere else our own modules are imported at the top."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if (SRC / "cli") in path.parents or path in LAZY_FACES or "flower_app" in path.parts:
            continue
        for fn in _functions(ast.parse(path.read_text())):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("medlens"):
                    found.append(f"{path.relative_to(SRC)}:{node.lineno} {node.module}")
    assert not found, found


def test_cli_modules_say_why_they_import_late_and_commands_stay_short() -> None:
    long = []
    for path in sorted((SRC / "cli").glob("*.py")):
        tree = ast.parse(path.read_text())
        local = any(
            isinstance(n, ast.ImportFrom) and (n.module or "").startswith("medlens")
            for fn in _functions(tree)
            for n in ast.walk(fn)
        )
        assert not local or "--help" in (ast.get_docstring(tree) or ""), f"{path.name}: say why imports are late"
        for fn in tree.body:
            if isinstance(fn, ast.FunctionDef):
                body = fn.body[1:] if ast.get_docstring(fn) else fn.body
                if body[-1].end_lineno - body[0].lineno + 1 > 26:
                    long.append(f"{path.name}:{fn.name}")
    assert not long, f"CLI functions over 25 lines (move the work into the library): {long}"


def test_the_licence_is_in_the_repository() -> None:
    text = (Path(__file__).parent.parent / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0" in text
