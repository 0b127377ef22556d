"""Carry edited prose (markdown cells) from notebooks/NN_name.py into the executed record
executed/NN_name.ipynb without re-running it: code cells and outputs are left as they are.

    python scripts/sync_prose.py 05_llm_activations [...]

Refuses when the code cells differ (then the record must be re-run, not patched).
"""

from __future__ import annotations

import sys
from pathlib import Path

import jupytext
import nbformat

ROOT = Path(__file__).resolve().parent.parent


def main(names: list[str]) -> None:
    for name in names:
        source = jupytext.read(ROOT / "notebooks" / f"{name}.py")
        path = ROOT / "executed" / f"{name}.ipynb"
        executed = nbformat.read(path, as_version=4)
        code = lambda nb: [
            c.source
            for c in nb.cells
            if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])
        ]  # noqa: E731
        if code(source) != code(executed):
            sys.exit(f"{name}: code cells differ from the record; re-run the notebook instead")
        md_src = [c for c in source.cells if c.cell_type == "markdown"]
        md_exe = [c for c in executed.cells if c.cell_type == "markdown"]
        if len(md_src) != len(md_exe):
            sys.exit(f"{name}: {len(md_src)} markdown cells in the source, {len(md_exe)} in the record")
        changed = sum(a.source != b.source for a, b in zip(md_src, md_exe))
        for a, b in zip(md_src, md_exe):
            b.source = a.source
        nbformat.write(executed, path)
        print(f"{name}: {changed} markdown cell(s) updated in {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main(sys.argv[1:])
