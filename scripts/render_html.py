"""Render the record (executed/*.ipynb) as an HTML book in html/ that needs no network.

    python scripts/render_html.py                 # from executed/ and figures/ into html/
    python scripts/render_html.py --src /tmp/x --out /tmp/x-html

One page per executed notebook (figures are inside the notebooks as image outputs; math is
typeset by a local copy of MathJax 2.7, from the jupyter-server-mathjax package), and an index
page with each notebook's question, its first finding and a thumbnail of its main figure, all
taken from the notebooks themselves. A page that would load anything from the network is an
error, not a warning.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
from pathlib import Path

import jupyter_server_mathjax
import markdown_it
import nbformat
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parent.parent
MATHJAX = Path(jupyter_server_mathjax.__file__).parent / "static"
MATHJAX_URL = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"
# what would make a page reach the network: a script, stylesheet, image or frame from a URL
REMOTE = re.compile(r"""<(script|link|img|iframe)\b[^>]*\b(src|href)\s*=\s*["']?(https?:)?//""", re.I)
MODULE_IMPORT = re.compile(r"""<script type="module">[^<]*\bimport\b[^<]*https?://.*?</script>""", re.S)


def exporter() -> HTMLExporter:
    ex = HTMLExporter(template_name="lab")
    ex.mathjax_url = MATHJAX_URL
    ex.require_js_url = ""
    ex.jquery_url = ""
    ex.mermaid_js_url = ""
    ex.mermaid_layout_elk_js_url = ""
    return ex


def offline(page: str, name: str) -> str:
    """The page without the template's optional remote module imports; an error if any remote load is left."""
    page = MODULE_IMPORT.sub("", page)
    page = page.replace('<script src=""></script>', "")
    found = REMOTE.search(page)
    if found:
        raise SystemExit(f"{name}: the page would load from the network: {found.group(0)!r}")
    return page


def first_markdown(nb: nbformat.NotebookNode) -> str:
    return next((c.source for c in nb.cells if c.cell_type == "markdown"), "")


def title_of(nb: nbformat.NotebookNode, fallback: str) -> str:
    m = re.search(r"^#\s+(.+)$", first_markdown(nb), re.M)
    return m.group(1).strip() if m else fallback


def question_of(nb: nbformat.NotebookNode) -> str:
    """The notebook's '**Question.**' paragraph (markdown)."""
    for para in re.split(r"\n\s*\n", first_markdown(nb)):
        if para.lstrip().startswith("**Question.**"):
            return para.strip()
    return ""


def _findings_text(nb: nbformat.NotebookNode) -> str:
    """The Markdown of the notebook's findings: its '## What it shows' section (the cell's own
    text and what the code cells after it display as Markdown, up to the next heading), or the
    first paragraph of a cell that opens with '**What it shows.**'."""
    parts: list[str] = []
    inside = False
    for c in nb.cells:
        if c.cell_type == "markdown":
            if c.source.lstrip().startswith("**What it shows.**"):  # its first paragraph is the finding
                return re.split(r"\n\s*\n", c.source.replace("**What it shows.**", "", 1).strip())[0]
            if inside and re.match(r"\s*#", c.source):
                break
            if re.search(r"^##\s+What it shows", c.source, re.M):
                inside = True
                parts.append(c.source.split("\n", 1)[1] if "\n" in c.source else "")
        elif inside:
            shown = [o.get("data", {}) for o in c.get("outputs", [])]
            parts += [d["text/markdown"] for d in shown if "text/markdown" in d]
    return "\n\n".join(parts)


SETTING_LEADS = ("Setting", "Rates chosen on validation")  # bold leads that state a setting, not a finding


def headline_of(nb: nbformat.NotebookNode) -> str:
    """The notebook's first finding (markdown): the first paragraph or bullet of its findings that
    opens with a bold claim (the notes around the findings and the setting skipped); else the
    findings' first paragraph."""
    blocks = [b.strip().removeprefix("- ") for b in re.split(r"\n\s*\n|\n(?=- )", _findings_text(nb))]
    for text in filter(None, blocks):
        lead = re.match(r"\*\*(.+?)\*\*", text)
        if lead and not lead.group(1).startswith(SETTING_LEADS):
            return text
    return next(filter(None, blocks), "")


def main_figure(src: Path, name: str) -> str | None:
    info = src / name / "run_info.json"
    if not info.exists():
        return None
    figures = [f for f in json.loads(info.read_text()).get("figures", []) if f.endswith(".png")]
    return figures[0] if figures else None


def index_page(entries: list[dict]) -> str:
    md = markdown_it.MarkdownIt()
    cards = []
    for e in entries:
        thumb = (
            f'<a href="{e["page"]}"><img src="figures/{e["figure"]}" alt="{html.escape(e["figure"])}"></a>'
            if e["figure"]
            else ""
        )
        cards.append(
            f'<section><div class="text"><h2><a href="{e["page"]}">{html.escape(e["title"])}</a></h2>'
            f'{md.render(e["question"])}<p class="finding"><b>First finding.</b></p>'
            f"{md.render(e['headline'])}</div>{thumb}</section>"
        )
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "section{display:flex;gap:1.5em;border-top:1px solid #ddd;padding:1em 0;align-items:flex-start}"
        "section .text{flex:1}section img{width:340px;border:1px solid #eee}"
        "h2{margin:0 0 .4em;font-size:1.2em}"
        "p{line-height:1.45}.finding{margin-bottom:0}"
    )
    head = (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>encoder-study: the record</title>'
        f'<style>{style}</style><script type="text/x-mathjax-config">MathJax.Hub.Config({{tex2jax: '
        f'{{inlineMath: [["$","$"], ["\\\\(","\\\\)"]], processEscapes: true}}}});</script>'
        f'<script src="{MATHJAX_URL}"></script></head><body>'
    )
    intro = (
        "<h1>encoder-study: the executed book</h1><p>Each section is one notebook of the record, run at the "
        "paper's settings by <code>make book</code>. Click a title or a figure for the whole notebook.</p>"
    )
    return head + intro + "".join(cards) + "</body></html>"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default=str(ROOT / "executed"), help="folder of executed notebooks")
    ap.add_argument(
        "--figures",
        default=None,
        help="folder of figure files (default: figures/ for the record, else SRC/figures)",
    )
    ap.add_argument("--out", default=str(ROOT / "html"), help="where the HTML book goes")
    args = ap.parse_args()
    src, out = Path(args.src).resolve(), Path(args.out).resolve()
    figures = (
        Path(args.figures).resolve()
        if args.figures
        else (ROOT / "figures" if src == (ROOT / "executed").resolve() else src / "figures")
    )
    notebooks = sorted(src.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise SystemExit(f"--src {src}: no executed notebooks (NN_name.ipynb) there")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(MATHJAX, out / "mathjax", dirs_exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    ex, entries = exporter(), []
    for nb_path in notebooks:
        nb = nbformat.read(nb_path, as_version=4)
        body, _ = ex.from_notebook_node(nb)
        page = f"{nb_path.stem}.html"
        (out / page).write_text(offline(body, page))
        figure = main_figure(src, nb_path.stem)
        if figure and (figures / figure).exists():
            shutil.copy2(figures / figure, out / "figures" / figure)
        else:
            figure = None
        entries.append(
            {
                "page": page,
                "title": title_of(nb, nb_path.stem),
                "question": question_of(nb),
                "headline": headline_of(nb),
                "figure": figure,
            }
        )
    (out / "index.html").write_text(offline(index_page(entries), "index.html"))
    print(f"HTML book: {out / 'index.html'} ({len(entries)} notebooks, math typeset offline)")


if __name__ == "__main__":
    main()
