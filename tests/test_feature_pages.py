"""The feature pages on hand-built activations whose answers are known."""

import re

import pytest
import torch

from encoder_study.llm.feature_pages import (
    card_html,
    latent_card,
    page,
    printable,
    token_at,
    token_concentration,
)


def test_rows_map_to_context_and_position_skipping_position_0():
    tokens = torch.arange(12).reshape(3, 4)  # 3 contexts of 4 tokens: 3 vectors each (positions 1-3)
    assert [token_at(tokens, r) for r in range(9)] == [(c, p) for c in range(3) for p in (1, 2, 3)]


def test_token_concentration():
    assert token_concentration([5, 5, 5, 7]) == 0.75
    assert token_concentration([1, 2, 3, 4]) == 0.25
    assert token_concentration([]) != token_concentration([])  # NaN for a latent that never fires


def test_latent_card_finds_the_top_rows_their_tokens_and_frequency():
    tokens = torch.tensor([[0, 10, 11, 10], [0, 12, 10, 13]])  # rows: 10, 11, 10, 12, 10, 13
    A = torch.zeros(6, 2)
    A[:, 0] = torch.tensor([3.0, 0.0, 2.0, 0.5, 1.0, 0.0])  # fires on rows 0, 2, 3, 4
    card = latent_card(A, tokens, 0, n_top=3)
    assert card.top_rows == [0, 2, 4] and card.top_values == [3.0, 2.0, 1.0]
    assert card.frequency == pytest.approx(4 / 6)
    assert card.concentration == 1.0  # its top 3 are all token 10
    assert card.top_tokens[0] == (10, 3) and (12, 1) in card.top_tokens
    assert sum(card.hist_counts) == 4
    dead = latent_card(A, tokens, 1)
    assert dead.top_rows == [] and dead.frequency == 0 and dead.hist_counts == []


def test_page_is_static_and_escapes_token_text():
    tokens = torch.tensor([[0, 1, 2, 3]])
    A = torch.tensor([[0.0], [2.0], [0.0]])
    words = {0: "<s>", 1: "<script>alert(1)</script>", 2: "a&b", 3: "\n"}
    html = page("t", "intro", [("ours", "line", card_html(latent_card(A, tokens, 0), tokens, words.get))])
    assert "<script>" not in html and "&lt;script&gt;" in html and "a&amp;b" in html
    assert not re.search(r"(src|href)\s*=", html)
    assert "<b>a&amp;b</b>" in html  # the active token (row 1 = position 2) is the marked one


def test_printable_marks_line_breaks_and_tabs():
    assert printable("a\n\tb") == "a⏎→b"
