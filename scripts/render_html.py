"""Render the executed notebooks (the record) to a readable HTML report in html/."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    out = ROOT / "html"
    out.mkdir(exist_ok=True)
    exporter = HTMLExporter(template_name="lab")
    links = []
    for nb_path in sorted((ROOT / "executed").glob("[0-9][0-9]_*.ipynb")):
        body, _ = exporter.from_notebook_node(nbformat.read(nb_path, as_version=4))
        (out / f"{nb_path.stem}.html").write_text(body)
        links.append(f'<li><a href="{nb_path.stem}.html">{nb_path.stem}</a></li>')
    (out / "index.html").write_text("<html><head><meta charset='utf-8'><title>encoder-study: the record</title></head>"
                                    "<body><h1>encoder-study: the executed book</h1><ul>" + "".join(links) +
                                    "</ul></body></html>")
    print(f"HTML report: {out / 'index.html'} ({len(links)} notebooks)")


if __name__ == "__main__":
    main()
