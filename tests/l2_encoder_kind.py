"""A kind a user could add outside the package, with a knob of its own, for the tests: this one
file plus one registry line (``kinds.register(L2EncoderKind)``). The decoder-free encoder (ReLU)
trained with the paper's objective plus ``lambda_l2`` times the mean squared activation, through
the default (autograd) training path. Its knob has no RunConfig field (``Knob(field="")``), so it
lives in ``RunConfig.knobs``; ``fit``, the command and the SAELens export take it from the
declaration below and nowhere else."""

from __future__ import annotations

from encoder_study.models.kinds.base import Knob, ModelKind
from encoder_study.models.kinds.encoder import EncoderKind
from encoder_study.models.losses import TERMS, LossConfig, combined_loss


class L2EncoderKind(EncoderKind):
    name, user_name, terms = "l2_encoder", "ours_l2", (*TERMS, "l2")
    knobs = (*EncoderKind.knobs, Knob("lambda_l2", "weight of the mean squared activation", default=0.0))
    per_run_state = ("lambdas", "l2")
    loss_and_grads = ModelKind.loss_and_grads  # autograd through run_loss, not the encoder's hand gradient

    def __init__(self, configs, layout, device, dtype) -> None:
        super().__init__(configs, layout, device, dtype)
        self.l2 = self.per_run([dict(c.knobs)["lambda_l2"] for c in configs])

    def run_loss(self, r, params, output, x):
        a = output[0]
        used = LossConfig(**{t: float(any(getattr(c.loss, t) for c in self.configs)) for t in TERMS})
        out = combined_loss(a, params["linear.weight"], used, weights={t: self.lambdas[t][r] for t in TERMS})
        l2 = a.square().mean()
        return {**{t: out[t] for t in TERMS}, "l2": l2, "total": out["total"] + self.l2[r] * l2}
