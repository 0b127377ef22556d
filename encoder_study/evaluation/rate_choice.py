"""Each model at its own best learning rate, chosen on validation data by one rule.

A model trained at a few settings of its sparsity knob, at each rate of a grid, gives per rate a
curve of (L0, validation FVU). Its score at a rate is that FVU read off at one L0
(``frontier.value_at_l0``): comparing rates at equal sparsity keeps a rate from winning by making
the code denser. The lowest score chooses. A grid can be too narrow for some model: where its
choice is the smallest or largest rate tried, the next rate past that edge (by the grid's own end
ratio) is worth trying, and the notebooks do so a bounded number of times.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd

from encoder_study.evaluation.frontier import value_at_l0

SCORE = "validation_fvu_at_selection_l0"


def score_rates(validation: pd.DataFrame, selection_l0: float) -> pd.DataFrame:
    """Per model and rate, the validation FVU read off at L0 = ``selection_l0`` (NaN where that
    rate's runs do not reach it). ``validation`` has a row per run: ``model``, ``lr``, ``l0``,
    ``fvu``."""
    return pd.DataFrame(
        [
            {"model": m, "lr": lr, SCORE: value_at_l0(g.l0, g.fvu, selection_l0)}
            for (m, lr), g in validation.groupby(["model", "lr"])
        ],
        columns=["model", "lr", SCORE],
    )


def choose_rate(scores: pd.DataFrame, model: str, fallback: float) -> float:
    """``model``'s rate with the lowest score; ``fallback`` where no rate has a score (the caller
    says so in its findings)."""
    d = scores[scores.model == model].dropna(subset=[SCORE])
    return fallback if d.empty else float(d.loc[d[SCORE].idxmin(), "lr"])


def on_edge(rates_tried: Sequence[float], lr: float) -> bool:
    """Whether ``lr`` is the smallest or largest of ``rates_tried``, among three or more (with two,
    every rate is an edge and the grid says nothing about a direction)."""
    return len(rates_tried) >= 3 and lr in (min(rates_tried), max(rates_tried))


def beyond_edge(rates_tried: Sequence[float], lr: float) -> float:
    """The next rate past the edge of ``rates_tried`` that ``lr`` sits on, by the ratio of the two
    rates at that end, rounded to two significant digits (1e-2 after 3e-3 gives 0.033)."""
    r = sorted(rates_tried)
    if lr not in (r[0], r[-1]) or len(r) < 2:
        raise ValueError(f"lr={lr:g} is not on an edge of the rates tried {r}")
    step = r[-1] / r[-2] if lr == r[-1] else r[0] / r[1]
    return float(f"{lr * step:.2g}")


@dataclass
class RateSelection:
    """What a selection round found: every validation run, the rates each model tried, the scores,
    and the choice."""

    grid: list[float]
    """The stated grid of rates, ascending: every model tried each."""
    validation: pd.DataFrame
    """A row per validation run: ``model``, ``lr``, ``l0``, ``fvu`` (and whatever the notebook adds)."""
    rates: dict[str, list[float]]
    """Each model's rates tried, ascending: the grid's, then any past its edge."""
    scores: pd.DataFrame
    """``score_rates`` of ``validation``, with ``chosen`` marking each model's chosen rate."""
    chosen: dict[str, float]
    """Each model's chosen rate: the lowest score, or ``fallback`` where no rate has one."""
    fallback: float
    """The grid's middle rate, kept by a model that no rate brings near the selection L0."""
    unscored_models: list[str]
    """Models that no rate brought near the selection L0 (they keep ``fallback``)."""
    unscored: pd.DataFrame
    """``unscored_rates``: each rate without a score set against its model's chosen rate."""

    def on_edge(self, model: str) -> bool:
        """Whether ``model``'s chosen rate is still the smallest or largest it tried."""
        return on_edge(self.rates[model], self.chosen[model])

    def past_grid(self) -> dict[str, list[float]]:
        """The rates each model tried past the grid's edge, for the models that tried any."""
        extra = {m: [lr for lr in r if lr not in self.grid] for m, r in self.rates.items()}
        return {m: r for m, r in extra.items() if r}


def select_rates(
    validate: Callable[[list[tuple[str, float]]], pd.DataFrame],
    models: Sequence[str],
    lr_grid: Sequence[float],
    selection_l0: float,
    edge_steps: int,
) -> RateSelection:
    """The selection round: ``validate`` (the notebook's: it trains a (model, rate) pair's runs and
    returns a row per run with ``model``, ``lr``, ``l0``, ``fvu``) over every model and rate of
    ``lr_grid``; then, up to ``edge_steps`` times, each model whose choice sits on the edge of the
    rates it has tried is validated at the next rate past it. A model that no rate brings near
    ``selection_l0`` keeps the grid's middle rate."""
    fallback = sorted(lr_grid)[len(lr_grid) // 2]
    validation = validate([(m, lr) for m in models for lr in lr_grid])
    rates = {m: sorted(lr_grid) for m in models}
    for _ in range(edge_steps):
        scores = score_rates(validation, selection_l0)
        now = {m: choose_rate(scores, m, fallback) for m in models}
        at_edge = {m: beyond_edge(rates[m], lr) for m, lr in now.items() if on_edge(rates[m], lr)}
        if not at_edge:
            break
        validation = pd.concat([validation, validate(list(at_edge.items()))], ignore_index=True)
        rates.update({m: sorted(rates[m] + [lr]) for m, lr in at_edge.items()})
    scores = score_rates(validation, selection_l0)
    chosen = {m: choose_rate(scores, m, fallback) for m in models}
    scores["chosen"] = [chosen[m] == lr for m, lr in zip(scores.model, scores.lr)]
    unscored_models = [m for m in models if scores[scores.model == m][SCORE].isna().all()]
    return RateSelection(
        grid=sorted(lr_grid),
        validation=validation,
        rates=rates,
        scores=scores,
        chosen=chosen,
        fallback=fallback,
        unscored_models=unscored_models,
        unscored=unscored_rates(validation, scores, chosen),
    )


def against_chosen(validation: pd.DataFrame, model: str, lr: float, chosen: float) -> tuple[int, int]:
    """For a rate with no score (its runs never came near the selection L0): at how many of its
    runs' L0s the chosen rate's curve can be read (``frontier.value_at_l0``), and at how many of
    those the chosen rate's FVU is the lower. Behind at every point both reach says the unscored
    rate lost on the sparsities it did reach; ahead anywhere says the choice is open."""
    own = validation[(validation.model == model) & (validation.lr == lr)].dropna(subset=["l0", "fvu"])
    best = validation[(validation.model == model) & (validation.lr == chosen)]
    read = [(f, value_at_l0(best.l0, best.fvu, l0)) for l0, f in zip(own.l0, own.fvu)]
    both = [(f, g) for f, g in read if pd.notna(g)]  # NaN where the chosen curve does not reach
    return len(both), sum(g < f for f, g in both)


def unscored_rates(validation: pd.DataFrame, scores: pd.DataFrame, chosen: dict[str, float]) -> pd.DataFrame:
    """Every rate without a score, of a model whose choice was made by score, set against its
    chosen rate by ``against_chosen``: columns model, lr, points_both_reach, chosen_lower_at."""
    scored = set(scores.dropna(subset=[SCORE]).model)
    rows = [
        {"model": r.model, "lr": r.lr}
        for r in scores[scores[SCORE].isna() & scores.model.isin(scored)].itertuples()
    ]
    for row in rows:
        row["points_both_reach"], row["chosen_lower_at"] = against_chosen(
            validation, row["model"], row["lr"], chosen[row["model"]]
        )
    return pd.DataFrame(rows, columns=["model", "lr", "points_both_reach", "chosen_lower_at"])


def describe_unscored(table: pd.DataFrame, selection_l0: float) -> str:
    """The findings' sentence on ``unscored_rates``' table, after a space ('' where every rate was
    scored)."""
    if table.empty:
        return ""
    return (
        f" Rates whose runs never came near L0 {selection_l0:g} (no score), against the chosen rate at "
        "the L0s both reach: "
        + "; ".join(
            f"{r.model} {r.lr:g}: "
            + (
                f"the chosen rate's FVU lower at {r.chosen_lower_at} of {r.points_both_reach}"
                if r.points_both_reach
                else "no L0 that both reach"
            )
            for r in table.itertuples()
        )
        + "."
    )
