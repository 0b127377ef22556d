"""What a latent responds to, shown the way interpretability work looks at features: its
top-activating held-out contexts with the active token marked, the histogram of its nonzero
activations and the tokens it fires on most, gathered into one standalone HTML page (inline CSS
and SVG, no script, nothing fetched), plus the number that compares models: the share of a
latent's top activations that fall on its single most common token (``token_concentration``;
near 1 for a latent that detects one token, lower for one that responds to a context).

Rows of an activation matrix are tokens of held-out contexts: row r is context r // (T - 1),
position 1 + r % (T - 1) (position 0 of every context is left out, as ``language_model.get_llm_activations``
does).
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..evaluation.metrics import ACTIVE_THRESHOLD


@dataclass
class LatentCard:
    """One latent's evidence."""

    latent: int
    frequency: float  # share of held-out tokens it is active on
    top_rows: list[int]  # rows of its largest activations, largest first
    top_values: list[float]
    hist_counts: list[int]  # histogram of its nonzero activations
    hist_edges: list[float]
    top_tokens: list[tuple[int, int]]  # (token id, count) among the tokens it is active on, most first
    concentration: float  # share of its top activations on its single most common token


def printable(text: str) -> str:
    """Token text with line breaks and tabs shown as marks (a context reads on one line, and
    fonts without a tab glyph draw nothing odd)."""
    return text.replace("\n", "⏎").replace("\t", "→")


def token_at(tokens: torch.Tensor, row: int) -> tuple[int, int]:
    """(context, position) of activation row ``row`` (position 0 of each context left out)."""
    per = tokens.shape[1] - 1
    return row // per, 1 + row % per


def token_concentration(token_ids: list[int]) -> float:
    """The share of ``token_ids`` (a latent's top activations' tokens) equal to the most common one."""
    if not token_ids:
        return float("nan")
    return Counter(token_ids).most_common(1)[0][1] / len(token_ids)


def latent_card(
    A: torch.Tensor, tokens: torch.Tensor, latent: int, n_top: int = 20, bins: int = 24
) -> LatentCard:
    """The evidence for column ``latent`` of the activations A (held-out rows x latents)."""
    a = A[:, latent].double()
    active = a > ACTIVE_THRESHOLD
    n = min(n_top, int(active.sum()))
    values, rows = a.topk(n) if n else (a[:0], torch.zeros(0, dtype=torch.long))
    ids = [int(tokens[token_at(tokens, int(r))]) for r in rows]
    counts, edges = np.histogram(a[active].numpy(), bins=bins) if n else (np.zeros(0, int), np.zeros(0))
    fired = Counter(int(tokens[token_at(tokens, int(r))]) for r in torch.nonzero(active).flatten()[:20000])
    return LatentCard(
        latent,
        float(active.double().mean()),
        [int(r) for r in rows],
        [float(v) for v in values],
        [int(c) for c in counts],
        [float(e) for e in edges],
        fired.most_common(8),
        token_concentration(ids),
    )


def _histogram_svg(card: LatentCard, width: int = 220, height: int = 60) -> str:
    if not card.hist_counts:
        return "<svg width='220' height='60'></svg>"
    top = max(card.hist_counts)
    w = width / len(card.hist_counts)
    bars = "".join(
        f"<rect x='{i * w:.1f}' y='{height - height * c / top:.1f}' width='{w - 1:.1f}' "
        f"height='{height * c / top:.1f}'/>"
        for i, c in enumerate(card.hist_counts)
    )
    lo, hi = card.hist_edges[0], card.hist_edges[-1]
    return (
        f"<svg width='{width}' height='{height + 14}' class='hist'>{bars}"
        f"<text x='0' y='{height + 12}'>{lo:.2g}</text>"
        f"<text x='{width}' y='{height + 12}' text-anchor='end'>{hi:.2g}</text></svg>"
    )


def _context_html(
    tokens: torch.Tensor, row: int, value: float, decode: Callable[[int], str], window: int
) -> str:
    c, p = token_at(tokens, row)
    start, stop = max(0, p - window), min(tokens.shape[1], p + 3)
    parts = []
    for q in range(start, stop):
        text = html.escape(printable(decode(int(tokens[c, q]))))
        parts.append(f"<b>{text}</b>" if q == p else text)
    return f"<div class='ctx'><span class='val'>{value:.3g}</span> {''.join(parts)}</div>"


def card_html(
    card: LatentCard, tokens: torch.Tensor, decode: Callable[[int], str], shown: int = 10, window: int = 10
) -> str:
    """One latent's box: header, histogram, most common tokens, top contexts."""
    toks = ", ".join(f"{html.escape(repr(decode(t)))} ×{n}" for t, n in card.top_tokens)
    contexts = "".join(
        _context_html(tokens, r, v, decode, window) for r, v in zip(card.top_rows[:shown], card.top_values)
    )
    return (
        f"<div class='card'><h4>latent {card.latent} · active on {card.frequency:.2%} of tokens · "
        f"top-{len(card.top_rows)} on one token: {card.concentration:.0%}</h4>"
        f"{_histogram_svg(card)}<div class='toks'>fires most on: {toks or '(never fires)'}</div>"
        f"{contexts}</div>"
    )


STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1400px;color:#222}
h2{border-bottom:1px solid #ccc;margin-top:2em} h3{color:#444}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:10px}
.card{border:1px solid #ddd;border-radius:4px;padding:6px 8px;font-size:12px}
.card h4{margin:0 0 4px;font-size:12px} .toks{color:#555;margin:2px 0 4px}
.ctx{font-family:ui-monospace,monospace;white-space:pre-wrap;margin:1px 0}
.ctx b{background:#ffd54a;font-weight:600} .val{color:#888;display:inline-block;width:3.5em}
.hist rect{fill:#1f77b4} .hist text{font-size:9px;fill:#666}
"""


def page(title: str, intro: str, sections: list[tuple[str, str, str]]) -> str:
    """A whole page: ``sections`` are (heading, a line about it, its cards' HTML)."""
    body = "".join(
        f"<h2>{html.escape(h)}</h2><p>{html.escape(line)}</p>{cards}" for h, line, cards in sections
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><p>{html.escape(intro)}</p>"
        f"{body}</body></html>"
    )
