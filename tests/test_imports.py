"""The package's imports, read from its source: no circle between modules, no import of a package
module hidden inside a function (the usual way a circle is broken), and a package whose import
loads nothing but its CPU settings, so ``python -m encoder_study.<module>`` never finds its module
already imported."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "encoder_study"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _target(path: Path, node: ast.ImportFrom, alias: str) -> str | None:
    """The package module a relative ``from`` import names (a submodule where ``alias`` is one)."""
    if node.level == 0:
        return node.module if node.module and node.module.startswith("encoder_study") else None
    base = path.relative_to(ROOT).parent.parts[: len(path.relative_to(ROOT).parent.parts) - node.level + 1]
    parts = [*base, *(node.module.split(".") if node.module else [])]
    as_module = ROOT.joinpath(*parts, alias)
    if as_module.with_suffix(".py").exists() or (as_module / "__init__.py").exists():
        parts.append(alias)
    return ".".join(parts)


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(path: Path) -> tuple[set[str], list[str]]:
    """(the package modules ``path`` imports at module level, its imports inside functions)."""
    tree = ast.parse(path.read_text())
    top, inside = set(), []
    for node in tree.body:
        if _type_checking(node):
            continue
        for sub in ast.walk(node):
            if isinstance(sub, ast.ImportFrom) and not isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                top |= {t for a in sub.names if (t := _target(path, sub, a.name))}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom) and any(_target(path, sub, a.name) for a in sub.names):
                    inside.append(f"{path.relative_to(ROOT)}: {node.name} imports {sub.module or '.'}")
    return top, inside


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    graph, inside = {}, []
    for path in sorted(PACKAGE.rglob("*.py")):
        top, found = _imports(path)
        graph[_module_name(path)] = top
        inside += found
    return graph, inside


def test_no_package_module_is_imported_inside_a_function():
    _, inside = _graph()
    assert not inside, inside


def test_the_package_has_no_import_circle():
    graph, _ = _graph()
    # a package's __init__ importing its own submodules (the registry) is not a circle
    edges = {
        m: {t for t in ts if t in graph and not (t.startswith(m + ".") and m != t)} for m, ts in graph.items()
    }
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join([*stack[stack.index(t) :], t]))
            elif t not in state:
                visit(t, [*stack, t])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles
    assert len(graph) > 20 and graph["encoder_study.interface.api"]  # the reader found the package's imports


def test_importing_the_package_loads_only_its_cpu_settings():
    code = "import sys, encoder_study; print(sorted(m for m in sys.modules if m.startswith('encoder_study')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['encoder_study', 'encoder_study.training', 'encoder_study.training.cpu']"
    run = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-m", "encoder_study.fit", "--help"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0 and "found in sys.modules" not in run.stderr, run.stderr[-500:]


def test_every_module_sits_in_a_subpackage_of_the_architecture():
    # the package's top holds only its __init__ and the `python -m encoder_study.fit` entry point
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == ["__init__.py", "fit.py"]
    parts = {p.relative_to(PACKAGE).parts[0] for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE}
    assert parts == {"book", "evaluation", "interface", "llm", "models", "training"}


def _string_compares(tree: ast.AST) -> list[tuple[int, set[str]]]:
    """(line, strings) of every comparison with string literals on a side (or in a tuple there)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            collections = (ast.Tuple, ast.List, ast.Set)
            items = [e for s in sides for e in (s.elts if isinstance(s, collections) else [s])]
            strings = {e.value for e in items if isinstance(e, ast.Constant) and isinstance(e.value, str)}
            if strings:
                found.append((node.lineno, strings))
    return found


def test_no_kind_name_is_compared_as_a_string_outside_the_kinds():
    # what a kind is lives in its file: code elsewhere asks the kind (its knobs, has_decoder, terms,
    # SAELens form), never which one it holds. The notebooks' tables label their rows "ours", "sae",
    # ...: comparing labels of a table is the notebook's analysis, so notebooks are not read here.
    from encoder_study.models.kinds import KINDS

    names = set(KINDS) | {k.user_name for k in KINDS.values() if k.user_name}
    assert {"encoder", "ours", "sae", "topk"} <= names
    hits = []
    for folder in ("encoder_study", "scripts", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "kinds" in path.relative_to(ROOT).parts:
                continue
            for line, strings in _string_compares(ast.parse(path.read_text())):
                if strings & names:
                    hits.append(f"{path.relative_to(ROOT)}:{line} compares {sorted(strings & names)}")
    assert not hits, hits


def test_the_kind_name_check_finds_a_comparison():
    # the reader above on a hand-written line of each form it must catch
    code = 'a = cfg.model == "encoder"\nb = model in ("topk", "batchtopk")\nc = "sae" != name\nd = x == 1'
    assert _string_compares(ast.parse(code)) == [(1, {"encoder"}), (2, {"topk", "batchtopk"}), (3, {"sae"})]
