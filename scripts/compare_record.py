"""Compare the record's tables with those of an earlier commit: how far each number moved.

A rebuild that only reorganises code should move numbers by float rounding at most; one that
changes a method should move exactly the columns it touches. This prints, for every CSV of the
chosen notebooks present at both revisions, each numeric column's largest absolute and relative
change (rows paired in order; the text columns must agree), leaving out wall-clock columns.

    .venv/bin/python scripts/compare_record.py --base 8f5e98d 02_ablation 03_benchmark
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
TIMING_COLUMNS = {"train_seconds", "seconds", "seconds_per_run", "runs_trained_together", "wall_seconds"}


def table_at(base: str, path: Path) -> pd.DataFrame | None:
    """The CSV at ``path`` (relative to the repository) as committed at ``base``, or None."""
    shown = subprocess.run(
        ["git", "show", f"{base}:{path.as_posix()}"], cwd=ROOT, capture_output=True, text=True
    )
    return pd.read_csv(io.StringIO(shown.stdout)) if shown.returncode == 0 else None


def column_changes(old: pd.DataFrame, new: pd.DataFrame) -> list[tuple[str, float, float, int]]:
    """(column, max |new - old|, max relative change, cells blank on one side only) for the
    numeric columns both tables share."""
    changes = []
    for column in old.columns.intersection(new.columns):
        if column in TIMING_COLUMNS or not pd.api.types.is_numeric_dtype(old[column]):
            continue
        a, b = old[column].to_numpy(float), new[column].to_numpy(float)
        one_blank = int((np.isnan(a) != np.isnan(b)).sum())
        both = ~np.isnan(a) & ~np.isnan(b)
        diff = np.abs(b[both] - a[both])
        scale = np.maximum(np.abs(a[both]), np.abs(b[both]))
        rel = np.where(diff == 0, 0.0, diff / np.where(scale > 0, scale, 1.0))
        changes.append((column, float(np.max(diff, initial=0)), float(np.max(rel, initial=0)), one_blank))
    return changes


def compare_notebook(base: str, notebook: str) -> list[str]:
    """Markdown lines describing how each of the notebook's tables moved since ``base``."""
    lines = [f"### {notebook}"]
    for path in sorted((ROOT / "executed" / notebook).glob("*.csv")):
        relative = path.relative_to(ROOT)
        old, new = table_at(base, relative), pd.read_csv(path)
        if old is None:
            lines.append(f"- `{path.name}`: new table ({len(new)} rows)")
            continue
        if old.shape[0] != new.shape[0]:
            lines.append(f"- `{path.name}`: rows changed ({len(old)} -> {len(new)}); not compared")
            continue
        text = [c for c in old.columns.intersection(new.columns) if not pd.api.types.is_numeric_dtype(old[c])]
        if not old[text].fillna("").equals(new[text].fillna("")):
            lines.append(f"- `{path.name}`: text columns differ ({', '.join(text)}); not compared")
            continue
        moved = [m for m in column_changes(old, new) if m[1] != 0 or m[3]]
        if not moved:
            lines.append(f"- `{path.name}`: every number identical")
            continue
        worst = ", ".join(
            f"{c} {d:.3g} ({r:.1e} rel)" + (f", {blank} cells blank on one side" if blank else "")
            for c, d, r, blank in sorted(moved, key=lambda m: (-m[3], -m[2]))
        )
        lines.append(f"- `{path.name}`: largest change per column: {worst}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit whose record is compared against")
    parser.add_argument("notebooks", nargs="+", help="record folders under executed/, e.g. 03_benchmark")
    args = parser.parse_args(argv)
    for notebook in args.notebooks:
        if not (ROOT / "executed" / notebook).is_dir():
            parser.error(f"notebook={notebook!r} has no folder under executed/")
        print("\n".join(compare_notebook(args.base, notebook)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
