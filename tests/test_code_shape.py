"""The package and its scripts stay readable: no class of 200 lines or more, no function of 80
or more (the package, scripts/ and benchmarks/)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("encoder_study", "scripts", "benchmarks")
MAX_CLASS, MAX_FUNCTION = 200, 80


def _lengths() -> list[tuple[str, str, int]]:
    found = []
    for path in sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                kind = "class" if isinstance(node, ast.ClassDef) else "function"
                where = f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"
                found.append((kind, where, node.end_lineno - node.lineno + 1))
    return found


def test_no_class_or_function_is_too_long():
    lengths = _lengths()
    assert any(kind == "class" for kind, _, _ in lengths) and any(
        kind == "function" for kind, _, _ in lengths
    )
    too_long = [
        f"{where} ({n} lines)"
        for kind, where, n in lengths
        if n >= (MAX_CLASS if kind == "class" else MAX_FUNCTION)
    ]
    assert not too_long, "split these: " + "; ".join(too_long)
