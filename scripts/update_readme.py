"""Write the README's results section from the committed record (executed/*/), never by hand.

Replaces everything between the markers <!-- results:start --> and <!-- results:end -->.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXEC = ROOT / "executed"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _title(notebook: str) -> str:
    """The notebook's own title: the first '# ' heading of its source."""
    for line in (ROOT / "notebooks" / f"{notebook}.py").read_text().splitlines():
        if line.startswith("# # "):
            return line.removeprefix("# # ").strip()
    return notebook


def _notebooks() -> list[str]:
    """The book's notebooks (notebooks/NN_name.py), in its order."""
    return [p.stem for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))]


def _summaries() -> list[str]:
    """Each notebook's own summary (``summary.md``, which the notebook writes from its tables),
    under its title, in the book's order; a notebook without one in the record is named as such."""
    out: list[str] = []
    for notebook in _notebooks():
        path = EXEC / notebook / "summary.md"
        missing = "_No summary in the record yet: run the notebook._"
        text = path.read_text().strip() if path.exists() else missing
        out += [f"#### {_title(notebook)}", "", text, ""]
    return out


def _memory(notebook: str) -> str:
    """' (x.x GiB)': the peak resident memory its run_info records, or nothing."""
    info = EXEC / notebook / "run_info.json"
    peak = json.loads(info.read_text()).get("peak_memory_gib") if info.exists() else None
    return f" ({peak:.1f} GiB)" if peak is not None else ""


def _provenance(rows: list[dict[str, str]]) -> str:
    """Which book run(s) measured these times: their start, processor and what the run cache held
    when each began (book_timings.csv's own columns; rows of older files without them say so)."""
    runs: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        runs.setdefault(r.get("book_started") or "", []).append(r)

    def one(started: str, members: list[dict[str, str]]) -> str:
        if not started:
            return "an older book run that did not record when, where or with what run cache"
        first = members[0]
        cache = (
            "an empty run cache"
            if first.get("cached_groups_at_start") == "0"
            else f"a run cache holding {first.get('cached_groups_at_start')} groups of runs"
        )
        return f"the book run started {started} on {first.get('processor')}, from {cache}"

    if len(runs) == 1:
        ((started, members),) = runs.items()
        return "all in one run: " + one(started, members)
    return f"in {len(runs)} book runs, the total their sum: " + "; ".join(
        f"{', '.join(m['notebook'][:2] for m in members)} in " + one(started, members)
        for started, members in sorted(runs.items(), key=lambda kv: (kv[0] == "", kv[0]))
    )


def _timings() -> list[str]:
    """The time of each notebook (book_timings.csv) and the run(s) that measured it."""
    out: list[str] = []
    t = EXEC / "book_timings.csv"
    if t.exists():
        with t.open(newline="") as f:
            rows = list(csv.DictReader(f))
        total = sum(float(r["seconds"]) for r in rows)
        timed = {r["notebook"] for r in rows}
        missing = [notebook for notebook in _notebooks() if notebook not in timed]
        env, extract = {}, None
        info_files = sorted(EXEC.glob("*/run_info.json"))
        if info_files:
            env = json.loads(info_files[0].read_text()).get("environment", {})
        llm_info = EXEC / "05_llm_activations" / "run_info.json"
        if llm_info.exists():
            durations = json.loads(llm_info.read_text()).get("durations_s", {})
            extract = next((v for k, v in durations.items() if k.startswith("activations")), None)
        note = (
            f"; notebook 05's includes {extract / 60:.1f} min to extract or read its activations"
            if extract
            else ""
        )
        out += [
            f"**Time to run the book here** ({env.get('torch_threads', '?')} threads; {_provenance(rows)}"
            f"{note}; in brackets the peak memory of the run in the record): "
            + ", ".join(
                f"{r['notebook']} {float(r['seconds']) / 60:.1f} min{_memory(r['notebook'])}" for r in rows
            )
            + f"; total {total / 60:.1f} min"
            + (f" ({', '.join(missing)}: no time recorded)." if missing else "."),
            "",
        ]
    return out


def _figures() -> list[str]:
    """The figures, in numeric order."""
    out: list[str] = []
    figs = sorted(
        (p.name for p in (ROOT / "figures").glob("*.pdf")),
        key=lambda n: (int(re.sub(r"\D", "", n.split("_")[0]) or 0), n),
    )
    if figs:
        out += ["Figures: " + ", ".join(f"[`{f}`](figures/{f})" for f in figs) + ".", ""]
    return out


PARTS = (
    _summaries,
    _timings,
    _figures,
)  # the results section's parts, in the record's order


def section() -> str:
    out = [
        "_Generated by `scripts/update_readme.py`, which joins the summaries the notebooks write from "
        "their own tables (`executed/*/summary.md`); it types no number itself._",
        "",
    ]
    for part in PARTS:
        out += part()
    return "\n".join(out)


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"README.md lacks the markers {START} ... {END}")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{section()}\n{END}{tail}")
    print("README.md results section updated from executed/")


if __name__ == "__main__":
    main()
