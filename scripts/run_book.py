"""Run every notebook of the book headlessly with papermill and a folder of parameter files.

    python scripts/run_book.py --params params/paper              # the record: executed/, figures/
    python scripts/run_book.py --params params/smoke --out /tmp/x  # anywhere else, figures inside

Each notebooks/NN_name.py (jupytext) is synced to its .ipynb, executed with params/<set>/NN_name.yaml
into <out>/NN_name.ipynb, its tables landing in <out>/NN_name/. Ends by printing where the record
is and how long each notebook took (also written to <out>/book_timings.csv).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

import papermill as pm
import yaml

ROOT = Path(__file__).resolve().parent.parent


def notebooks(only: list[str] | None) -> list[Path]:
    found = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
    if only:
        found = [p for p in found if any(p.stem.startswith(o) or p.stem == o for o in only)]
        if not found:
            sys.exit(f"--only {only}: no notebook matches")
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params/paper", help="folder of NN_name.yaml parameter files")
    ap.add_argument("--out", default="executed", help="where executed notebooks and tables go")
    ap.add_argument("--only", nargs="*", help="run only notebooks whose names start with these")
    args = ap.parse_args()
    params_dir, out = (ROOT / args.params), (ROOT / args.out)
    rel = lambda p: str(p.relative_to(ROOT)) if p.resolve().is_relative_to(ROOT) else str(p)  # noqa: E731
    record = out.resolve() == (ROOT / "executed").resolve()
    figures = ROOT / "figures" if record else out / "figures"
    out.mkdir(parents=True, exist_ok=True)
    timings = []
    for py in notebooks(args.only):
        name = py.stem
        subprocess.run([sys.executable, "-m", "jupytext", "--quiet", "--sync", str(py)], check=True, cwd=ROOT)
        pfile = params_dir / f"{name}.yaml"
        params = yaml.safe_load(pfile.read_text()) if pfile.exists() else {}
        params = {**(params or {}), "results_dir": rel(out / name), "figures_dir": rel(figures)}
        print(f"== {name}  (parameters: {rel(pfile) if pfile.exists() else 'defaults'})", flush=True)
        start = time.perf_counter()
        pm.execute_notebook(str(py.with_suffix(".ipynb")), str(out / f"{name}.ipynb"), parameters=params,
                            cwd=str(ROOT), kernel_name="python3", progress_bar=True, request_save_on_cell_execute=True)
        timings.append((name, time.perf_counter() - start))
    timing_file = out / "book_timings.csv"
    rows = {}
    if args.only and timing_file.exists():  # a partial run replaces only its notebooks' rows
        with open(timing_file, newline="") as f:
            rows = {r["notebook"]: r for r in csv.DictReader(f)}
    for name, sec in timings:
        rows[name] = {"notebook": name, "seconds": f"{sec:.1f}", "params": args.params}
    with open(timing_file, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["notebook", "seconds", "params"])
        w.writeheader()
        w.writerows(rows[k] for k in sorted(rows))
    print("\nThe record:")
    print(f"  executed notebooks and tables: {out}")
    print(f"  figures:                       {figures}")
    for name, sec in timings:
        print(f"  {name:<24} {sec / 60:6.1f} min")
    print(f"  {'total':<24} {sum(s for _, s in timings) / 60:6.1f} min")
    if record and not args.only:
        subprocess.run([sys.executable, str(ROOT / "scripts" / "update_readme.py")], check=True)


if __name__ == "__main__":
    main()
