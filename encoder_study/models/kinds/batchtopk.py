"""The BatchTopK sparse autoencoder (Bussmann, Leask and Nanda 2024, "BatchTopK Sparse
Autoencoders"): TopK taken over a whole minibatch instead of each sample."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..stacking import linear_shared_input
from .base import Knob, Params
from .topk import TopKKind, TopKSAE

THRESHOLD_DECAY = 0.99  # the inference threshold's running average forgets at this rate per step


SAMPLE_ROWS = 64  # kth_largest brackets the batch's cut from this many samples' pre-activations


def _largest(v: torch.Tensor, j: int) -> torch.Tensor:
    """The j-th largest entry of a 1-D tensor (1 <= j <= len(v))."""
    return v.kthvalue(v.numel() - j + 1).values


def kth_largest(values: torch.Tensor, m: int, sample: torch.Tensor) -> torch.Tensor:
    """The m-th largest entry of the 1-D tensor ``values``, exactly, found fast.

    A selection over all of a minibatch's pre-activations (a million numbers at notebook 5's
    shapes) runs on one core; instead, the m-th largest is bracketed between two quantiles of
    ``sample`` (a subset of ``values``), those above the bracket are counted and the selection
    runs only inside it. Where the bracket misses (the sample unrepresentative, or m near the
    ends), it falls back to the full selection, so the answer is exact either way.
    """
    n, s = values.numel(), sample.numel()
    if not 1 <= m <= n:
        raise ValueError(f"m={m} must be in 1..{n}, the number of values")
    q = m / n
    margin = 4 * math.sqrt(q * (1 - q) / s) + 2 / s
    hi = _largest(sample, max(1, math.floor(s * (q - margin))))
    lo = _largest(sample, min(s, math.ceil(s * (q + margin))))
    above = int((values > hi).sum())
    band = values[(values >= lo) & (values <= hi)]
    if 1 <= m - above <= band.numel():
        return _largest(band, m - above)
    return _largest(values, m)


class BatchTopKSAE(TopKSAE):
    """The TopK SAE's parameters (unit-norm decoder columns, b_pre) plus one number, ``threshold``.

    Training keeps the k x B largest pre-activations of a minibatch of B samples (so a sample may
    use more or fewer than k latents, k on average); a single sample has no batch, so inference
    keeps every pre-activation above ``threshold``, a running average of the smallest activation
    kept in training (a JumpReLU with one threshold for all latents).
    """

    def __init__(self, input_dim: int = 784, hidden_dim: int = 64, k: int = 16) -> None:
        super().__init__(input_dim, hidden_dim, k)
        self.register_buffer("threshold", torch.zeros(()))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = self.pre_activations(x)
        return torch.where(z > self.threshold, z, 0.0).relu()


class BatchTopKKind(TopKKind):
    """Training stacks of BatchTopK SAEs: the TopK SAE's loss, AuxK and decoder constraint, with
    the selection over each run's whole minibatch; ``threshold`` is a buffer the kind updates after
    every step (the first steps average the minima so far, then an exponential average with
    ``THRESHOLD_DECAY``)."""

    name, module = "batchtopk", BatchTopKSAE
    user_name, saelens_architecture = (
        "batchtopk",
        "jumprelu",
    )  # SAELens's JumpReLU: ReLU(h) where h > threshold
    knobs = (
        Knob(
            "k",
            "active latents per sample, on average over a minibatch",
            type=int,
            minimum=1,
            field="k",
            at_most="hidden_dim",
        ),
    )
    buffers = ("threshold",)
    per_run_state = ("k", "idle", "last_min")
    checkpointed = ("idle", "steps")

    @classmethod
    def saelens_fields(cls, config) -> dict:
        return {}

    @classmethod
    def to_saelens(cls, state: Params, readout: torch.Tensor | None) -> Params:
        # SAELens's JumpReLU has a threshold per latent; the BatchTopK SAE's one, repeated
        return {
            **super().to_saelens(state, readout),
            "threshold": state["threshold"].expand(state["encoder.bias"].shape),
        }

    @classmethod
    def from_saelens(cls, tensors: Params) -> tuple[Params, torch.Tensor | None]:
        if not bool((tensors["threshold"] == tensors["threshold"][0]).all()):
            raise ValueError("the BatchTopK SAE has one threshold for all latents; these differ")
        state, _ = super().from_saelens(tensors)
        return {**state, "threshold": tensors["threshold"][0].clone()}, None

    def __init__(self, configs: list, layout, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(configs, layout, device, dtype)
        self.steps = torch.zeros((), dtype=torch.long, device=device)
        self.last_min = torch.zeros(len(configs), dtype=dtype, device=device)

    @classmethod
    def build(cls, input_dim: int, config) -> nn.Module:
        return BatchTopKSAE(input_dim, config.hidden_dim, config.k)

    def _topk_per_run(self, z: torch.Tensor) -> torch.Tensor:
        """Per run, the k_r x B largest entries of its (B, K) pre-activations kept, then ReLU; the
        smallest kept activation of each run is remembered for the threshold (in ``last_min``, in
        place, so that a replayed CUDA graph leaves it where ``after_step`` reads it).

        The cut is each run's (k_r x B)-th largest value and the kept entries are those at or above
        it: a mask rather than a top-k and a scatter (an exact tie at the cut keeps every tied
        entry).
        """
        R, B, K = z.shape
        with torch.no_grad():
            cut = self._cuts(z.reshape(R, B * K), B)
            self.last_min.copy_(cut.relu())
        return torch.where(z >= cut.view(R, 1, 1), z.relu(), 0.0)

    def _cuts(self, flat: torch.Tensor, B: int) -> torch.Tensor:
        """Each run's (k_r x B)-th largest entry of its row of ``flat`` (R, B x K), exactly: the same
        number whichever way it is found. On the CPU, ``kth_largest`` (its counts are read on the
        host, which costs nothing there, and it selects within a narrow bracket); a sync-free step
        (``sync_free``: a GPU, a CUDA graph) takes the smallest of an unsorted top-(k_r x B), a
        radix selection on the device that reads nothing back."""
        sample = min(B, SAMPLE_ROWS) * (flat.shape[1] // B)  # the first SAMPLE_ROWS samples' entries
        cuts = []
        for r, k in enumerate(self.ks):
            if self.sync_free:
                cuts.append(flat[r].topk(k * B, sorted=False).values.amin())
            else:
                cuts.append(kth_largest(flat[r], k * B, flat[r, :sample]))
        return torch.stack(cuts)

    def encode(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """Inference: each run's pre-activations above its threshold."""
        z = linear_shared_input(x, params["encoder.weight"], self._encoder_bias(params))
        return torch.where(z > params["threshold"].view(-1, 1, 1), z, 0.0).relu()

    @torch.no_grad()
    def after_step(self, params: Params) -> None:
        super().after_step(params)
        self.steps += 1
        rate = torch.clamp(1.0 / self.steps.to(self.dtype), min=1 - THRESHOLD_DECAY)
        params["threshold"].add_((self.last_min - params["threshold"]) * rate)
