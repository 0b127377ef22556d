"""Ours with every row of W held at unit length: the paper's objective on a bounded model.

The paper's objective has no minimum: scaling W and b by c > 1 keeps the ReLU pattern, lowers the
variance term by 2 K log c and leaves the log-sum-exp term bounded wherever a unit sits at zero,
so training can always lower the loss by growing the activations' scale (notebook 10). With unit
rows, |a_j| <= ||x|| + |b_j| and that direction is gone: the variance term can only grow by
spreading the units' outputs, not by inflating them. Rows are projected onto the unit sphere
before the first step and after every optimizer step (projected gradient descent); the bias stays
free. Notebook 10's bounded variant (a).
"""

from __future__ import annotations

import torch

from .base import Params
from .encoder import EncoderKind


class EncoderUnitRowsKind(EncoderKind):
    """Training stacks of the decoder-free encoder whose rows of W are projected to unit norm
    after every step; its loss, gradient and knobs are the encoder's (``encoder.py``)."""

    name = "encoder_unit_rows"
    user_name = None  # the notebooks' variant, not a kind ``fit`` offers

    @staticmethod
    @torch.no_grad()
    def _project(params: Params) -> None:
        W = params["linear.weight"]  # (R, K, D)
        W.div_(W.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(W.dtype).tiny))

    def prepare(self, params: Params, train_x: torch.Tensor) -> None:
        self._project(params)

    def after_step(self, params: Params) -> None:
        self._project(params)
