"""The learning-rate choice shared by the comparison notebooks, on hand-built validation curves."""

import math

import numpy as np
import pandas as pd
import pytest

from encoder_study.evaluation.rate_choice import (
    SCORE,
    against_chosen,
    beyond_edge,
    choose_rate,
    on_edge,
    score_rates,
    select_rates,
    unscored_rates,
)


def curve(model: str, lr: float, points: list[tuple[float, float]]) -> list[dict]:
    return [{"model": model, "lr": lr, "l0": l0, "fvu": f} for l0, f in points]


def test_the_score_is_the_fvu_read_off_at_the_selection_l0_in_log_l0():
    # L0 10 and 40 around 20: log-linear weight log(2)/log(4) = 1/2, so the FVU midway
    validation = pd.DataFrame(
        curve("a", 1e-3, [(10, 0.4), (40, 0.2)]) + curve("a", 3e-3, [(1, 0.9), (2, 0.8)])
    )
    scores = score_rates(validation, selection_l0=20).set_index("lr")[SCORE]
    assert scores[1e-3] == pytest.approx(0.3, rel=1e-12)
    assert math.isnan(scores[3e-3])  # 20 lies far beyond L0 1-2: no reading


def test_the_lowest_score_chooses_and_a_model_without_one_keeps_the_fallback():
    validation = pd.DataFrame(
        curve("a", 1e-3, [(10, 0.5), (40, 0.3)])
        + curve("a", 3e-3, [(10, 0.3), (40, 0.1)])
        + curve("a", 1e-2, [(10, 0.6), (40, 0.4)])
        + curve("b", 1e-3, [(1, 0.9), (2, 0.8)])
    )
    scores = score_rates(validation, selection_l0=20)
    assert choose_rate(scores, "a", fallback=7.0) == 3e-3
    assert choose_rate(scores, "b", fallback=7.0) == 7.0


def test_the_edge_and_the_rate_past_it():
    rates = [3e-4, 1e-3, 3e-3, 1e-2]
    assert on_edge(rates, 1e-2) and on_edge(rates, 3e-4)
    assert not on_edge(rates, 1e-3)
    assert not on_edge([1e-3, 3e-3], 3e-3)  # two rates give no direction
    assert beyond_edge(rates, 1e-2) == 0.033  # 1e-2 x (1e-2 / 3e-3), two significant digits
    assert beyond_edge(rates, 3e-4) == 9e-5  # 3e-4 x (3e-4 / 1e-3)
    with pytest.raises(ValueError, match="lr=0.001 is not on an edge"):
        beyond_edge(rates, 1e-3)


def test_an_unscored_rate_is_compared_with_the_chosen_one_where_both_reach():
    validation = pd.DataFrame(
        curve("a", 1e-3, [(10, 0.5), (100, 0.2)])  # chosen: log-linear, FVU 0.35 at L0 sqrt(1000)
        + curve("a", 1e-2, [(1000**0.5, 0.4), (20, 0.3), (1, 0.9)])  # L0 1 is beyond the chosen curve's reach
    )
    # at L0 31.6 the chosen curve reads 0.35 < 0.4 (chosen lower); at L0 20, 0.5 - 0.3 log(2)/log(10)
    # = 0.4097 > 0.3 (chosen higher)
    assert against_chosen(validation, "a", 1e-2, chosen=1e-3) == (2, 1)
    scores = score_rates(validation, selection_l0=60)  # 1e-3 reaches 60, 1e-2 (L0 1-31.6) does not
    table = unscored_rates(validation, scores, {"a": 1e-3})
    assert table.to_dict("records") == [
        {"model": "a", "lr": 1e-2, "points_both_reach": 2, "chosen_lower_at": 1}
    ]


def test_the_selection_round_steps_past_the_edge_while_the_choice_sits_on_it():
    asked = []

    def validate(pairs):  # model "a" is better the faster it learns, up to 0.05; "b" is best at 1e-3
        asked.append(pairs)
        best = {"a": 0.05, "b": 1e-3}
        return pd.DataFrame(
            [
                row
                for m, lr in pairs
                for row in curve(
                    m, lr, [(10, 0.5 + abs(np.log(lr / best[m]))), (40, 0.3 + abs(np.log(lr / best[m])))]
                )
            ]
        )

    found = select_rates(validate, ["a", "b"], [3e-4, 1e-3, 3e-3, 1e-2], 20, 3)
    # a: 1e-2 on the edge -> 0.033 -> 0.11 (worse than 0.033, which is then off the edge): two steps
    assert asked[1:] == [[("a", 0.033)], [("a", 0.11)]]
    assert found.rates == {"a": [3e-4, 1e-3, 3e-3, 1e-2, 0.033, 0.11], "b": [3e-4, 1e-3, 3e-3, 1e-2]}
    assert found.chosen == {"a": 0.033, "b": 1e-3} and found.fallback == 3e-3
    assert not found.on_edge("a") and not found.on_edge("b")
    assert found.past_grid() == {"a": [0.033, 0.11]}
    assert found.unscored_models == [] and found.unscored.empty
    assert found.scores[found.scores.chosen].lr.tolist() == [0.033, 1e-3]


def test_a_model_that_no_rate_brings_near_the_selection_l0_keeps_the_grids_middle_rate():
    def validate(pairs):  # "c" never gets denser than L0 2; "a" is best at 1e-3
        return pd.DataFrame(
            [
                row
                for m, lr in pairs
                for row in (
                    curve(m, lr, [(1, 0.9), (2, 0.8)])
                    if m == "c"
                    else curve(m, lr, [(10, 0.5 + abs(np.log(lr / 1e-3))), (40, 0.3)])
                )
            ]
        )

    found = select_rates(validate, ["a", "c"], [1e-3, 3e-4, 3e-3], 20, 2)
    assert found.fallback == 1e-3  # the middle of the sorted grid, whatever the order given
    assert found.chosen == {"a": 1e-3, "c": 1e-3} and found.unscored_models == ["c"]
    assert found.past_grid() == {} and found.grid == [3e-4, 1e-3, 3e-3]
    assert found.unscored.empty  # only a model chosen by score has unscored rates to set against it
    assert found.scores.chosen.sum() == 2
