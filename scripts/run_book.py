"""Run the notebooks of the book headlessly with papermill and a folder of parameter files.

    python scripts/run_book.py --params params/paper                 # the record: executed/, figures/
    python scripts/run_book.py --params params/smoke --out /tmp/x     # anywhere else, figures inside
    python scripts/run_book.py --params params/paper --only 03 --out /tmp/nb3

Paths are taken relative to the working directory. Each notebooks/NN_name.py (jupytext) is
converted to a notebook in a temporary folder, executed with <params>/NN_name.yaml into
<out>/NN_name.ipynb, its tables landing in <out>/NN_name/ and its figures in figures/ (for the
record) or <out>/figures/. The console shows which notebook and which training group is running.
Ends by printing where the results are and how long each notebook took; a full run into executed/
also rewrites the README's results.

<out>/book_timings.csv gets each notebook's row as soon as it finishes (an interrupted book keeps
the times it measured): its wall time, the parameter folder, when this book run started, the
processor, and how many groups of runs the run cache held when the notebook began (0 for the
first notebook of a book from an empty cache; later notebooks may reuse earlier ones' runs, as
they do in any whole book). An executed notebook takes its place in <out> only once it finished,
so a killed run never leaves a half-executed notebook in the record.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import jupytext
import nbformat
import papermill as pm
import yaml
from tqdm import tqdm

from encoder_study.book.data import cache_dir
from encoder_study.book.record import check_names, check_value, cpu_model, declared_parameters
from encoder_study.book.storage import write_atomic
from encoder_study.training.run_cache import finished_groups, fresh_requested

ROOT = Path(__file__).resolve().parent.parent
RECORD = ROOT / "executed"
CONSOLE_ENV = "ENCODER_STUDY_CONSOLE"  # encoder_study.book.progress writes its updates there


def notebooks(only: list[str] | None) -> list[Path]:
    found = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
    if only:
        found = [p for p in found if any(p.stem.startswith(o) or p.stem == o for o in only)]
        if not found:
            sys.exit(
                f"--only {only}: no notebook matches; the notebooks are "
                f"{[p.stem for p in sorted((ROOT / 'notebooks').glob('[0-9][0-9]_*.py'))]}"
            )
    return found


def read_parameters(params_dir: Path, name: str) -> dict:
    """The notebook's parameter file, or an error naming what is missing or malformed."""
    pfile = params_dir / f"{name}.yaml"
    if not pfile.is_file():
        sys.exit(f"--params {params_dir}: no parameter file {pfile.name} for notebook {name}")
    try:
        params = yaml.safe_load(pfile.read_text()) or {}
    except yaml.YAMLError as e:
        sys.exit(f"{pfile}: not valid YAML: {e}")
    if not isinstance(params, dict):
        sys.exit(f"{pfile}: must hold a mapping of parameter names to values, got {type(params).__name__}")
    notebook = jupytext.read(ROOT / "notebooks" / f"{name}.py")
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    declared = declared_parameters(cell.source)
    try:  # the kernel checks again (ParameterGuard); here a mistake is named before any notebook runs
        check_names(set(params), declared)
        for key, value in params.items():
            check_value(key, value, declared[key])
    except (TypeError, ValueError) as e:
        sys.exit(f"{pfile}: {e}")
    return params


class ConsoleProgress:
    """Shows in this console the progress bars that the notebook's kernel writes to a file."""

    def __init__(self, path: Path, notebook: str) -> None:
        self.path, self.notebook, self.offset = path, notebook, 0
        self.bars: dict[str, tqdm] = {}
        self.live = sys.stderr.isatty()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.thread.start()

    def _follow(self) -> None:
        while not self.stop.wait(0.5):
            self._read()
        self._read()

    def _read(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as f:
                f.seek(self.offset)
                lines = f.readlines()
                self.offset = f.tell()
        except OSError:
            return
        for line in lines:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "message" in event:
                tqdm.write(f"   {self.notebook}: {event['message']}", file=sys.stderr)
                continue
            if not self.live:  # a log file or a pipe: one line per finished bar, no redrawing
                if event["done"]:
                    print(f"   {event['desc']}: {event['status']}", file=sys.stderr, flush=True)
                continue
            bar = self.bars.get(event["id"])
            if bar is None:
                bar = self.bars[event["id"]] = tqdm(
                    total=event["total"],
                    desc=f"   {event['desc']}",
                    unit=event["unit"],
                    file=sys.stderr,
                    leave=True,
                )
            bar.n = event["n"]
            bar.set_postfix_str(event["status"] or "", refresh=False)
            bar.refresh()
            if event["done"]:
                bar.close()
                del self.bars[event["id"]]

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for bar in self.bars.values():
            bar.close()


def run_notebook(py: Path, params: dict, out: Path, workdir: Path) -> float:
    """Execute one notebook; returns its wall time in seconds."""
    ipynb = workdir / f"{py.stem}.ipynb"
    nbformat.write(jupytext.read(py), ipynb)
    console = workdir / f"{py.stem}.progress.jsonl"
    console.touch()
    os.environ[CONSOLE_ENV] = str(console)  # the kernel inherits this process's environment
    follower = ConsoleProgress(console, py.stem)
    executing = workdir / f"{py.stem}.executed.ipynb"
    start = time.perf_counter()
    try:
        pm.execute_notebook(
            str(ipynb),
            str(executing),
            parameters=params,
            cwd=str(ROOT),
            kernel_name="python3",
            progress_bar=False,
            request_save_on_cell_execute=True,
            # the kernel's start-up notice that it talks to papermill over local TCP says nothing to
            # a reader of the console; the kernel's errors still show
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
            # the notebook is saved before its kernel is shut down; a graceful shutdown interrupts
            # the kernel's whole process group, where a local Ray cluster's processes die with
            # stack traces on the console while the driver waits for them. Nothing runs after the
            # last cell, so the kernel is stopped at once.
            shutdown_kernel="immediate",
        )
    finally:
        follower.close()
        os.environ.pop(CONSOLE_ENV, None)
    seconds = time.perf_counter() - start
    place_executed(executing, out / f"{py.stem}.ipynb", py)
    return seconds


def place_executed(executing: Path, executed: Path, source: Path) -> None:
    """Put the finished notebook at ``executed`` in one step. Papermill records where it read and
    wrote the notebook as absolute paths of this machine; the record keeps them relative to the
    repository (or just the file name outside it)."""
    nb = nbformat.read(executing, as_version=4)
    meta = nb.metadata.get("papermill", {})
    for key, path in (("input_path", source), ("output_path", executed)):
        if key in meta:
            meta[key] = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
    write_atomic(executed, nbformat.writes(nb) + "\n")


TIMING_FIELDS = ["notebook", "seconds", "params", "book_started", "processor", "cached_groups_at_start"]


def write_timing(out: Path, row: dict[str, str]) -> None:
    """Replace ``row``'s notebook's line in <out>/book_timings.csv (the other notebooks' lines
    stay, with the book run that measured them), atomically."""
    timing_file = out / "book_timings.csv"
    rows = {}
    if timing_file.exists():
        with open(timing_file, newline="") as f:
            rows = {r["notebook"]: r for r in csv.DictReader(f)}
    rows[row["notebook"]] = row

    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=TIMING_FIELDS, restval="", extrasaction="ignore")
    w.writeheader()
    w.writerows(rows[k] for k in sorted(rows))
    write_atomic(timing_file, text.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--params", default=str(ROOT / "params" / "paper"), help="folder of NN_name.yaml parameter files"
    )
    ap.add_argument(
        "--out", default=str(RECORD), help="where executed notebooks and tables go (default: the record)"
    )
    ap.add_argument("--only", nargs="*", help="run only notebooks whose names start with these")
    args = ap.parse_args()
    params_dir, out = Path(args.params).resolve(), Path(args.out).resolve()
    if not params_dir.is_dir():
        sys.exit(f"--params {args.params}: no such folder (resolved to {params_dir})")
    selected = notebooks(args.only)
    parameters = {py.stem: read_parameters(params_dir, py.stem) for py in selected}  # all checked up front
    rel = lambda p: str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)  # noqa: E731
    record = out == RECORD.resolve()
    figures = ROOT / "figures" if record else out / "figures"
    out.mkdir(parents=True, exist_ok=True)
    timings = []
    book_run = {  # what every row of this book run shares
        "params": rel(params_dir),
        "book_started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "processor": f"{cpu_model()}, {os.cpu_count()} cores",
    }
    fresh = fresh_requested()
    with tempfile.TemporaryDirectory(prefix="encoder-study-book-") as tmp:
        for py in selected:
            name = py.stem
            params = {**parameters[name], "results_dir": rel(out / name), "figures_dir": rel(figures)}
            print(f"== {name}  (parameters: {rel(params_dir / (name + '.yaml'))})", flush=True)
            cached = 0 if fresh else finished_groups(cache_dir() / "runs")  # FRESH=1 reads no cache
            sec = run_notebook(py, params, out, Path(tmp))
            print(f"   {name} done in {sec / 60:.1f} min", flush=True)
            timings.append((name, sec))
            write_timing(
                out,
                {
                    "notebook": name,
                    "seconds": f"{sec:.1f}",
                    **book_run,
                    "cached_groups_at_start": str(cached),
                },
            )
    print("\nThe results:")
    print(f"  executed notebooks and tables: {out}")
    print(f"  figures:                       {figures}")
    for name, sec in timings:
        print(f"  {name:<24} {sec / 60:6.1f} min")
    print(f"  {'total':<24} {sum(s for _, s in timings) / 60:6.1f} min")
    if record and not args.only:
        subprocess.run([sys.executable, str(ROOT / "scripts" / "update_readme.py")], check=True)


if __name__ == "__main__":
    main()
