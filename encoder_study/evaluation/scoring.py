"""One evaluation of trained features, the same in every notebook that scores them.

``evaluate_codes`` scores any feature map from its codes (the controls of notebook 7 have no
model of this package); ``evaluate_run`` scores a trained run of the engine: its codes, plus what
needs the model (its own decoder's reconstruction, its parameter count, its training time).

FVU conventions (one meaning per column, everywhere in the book): ``readout_fvu`` is the fraction
of variance unexplained by a linear readout of the features (ridge regression with a bias, its
penalty chosen by leave-one-out on the training rows, fitted there, scored on the test rows);
``decoder_fvu`` is the model's own decoder's (NaN for a model without one); ``fvu`` is the
model's own reconstruction: its decoder's where it has one, else the fitted readout (how SAE
tools report a dictionary).
"""

from __future__ import annotations

import math

import torch

from ..models.kinds import KINDS
from ..models.model import count_parameters
from ..training.engine import RunResult
from .metrics import (
    activation_summary,
    features,
    fvu,
    l0,
    linear_probe_accuracy,
    readout_fvu,
)


@torch.no_grad()
def evaluate_codes(
    A_train: torch.Tensor,
    A_test: torch.Tensor,
    train_x: torch.Tensor,
    test_x: torch.Tensor,
    train_y: torch.Tensor | None = None,
    test_y: torch.Tensor | None = None,
    probe_max_iter: int = 5000,
    signed: bool = False,
) -> dict:
    """The numbers of a feature map from its codes of the training and test rows.

    ``l0``: mean active units per test row (a > 0.01; |a| > 0.01 for a ``signed`` code);
    ``readout_fvu``; ``probe_accuracy`` (with labels: the book's logistic regression on
    standardised features); for a non-negative code also ``activation_summary``'s columns
    (dead units, redundancy, entropy of the responsibilities, ...), which assume a >= 0.
    """
    row = {
        "l0": l0(torch.as_tensor(A_test).abs() if signed else A_test),
        "readout_fvu": readout_fvu(A_train, train_x, A_test, test_x),
    }
    if train_y is not None and test_y is not None:
        row["probe_accuracy"] = linear_probe_accuracy(
            A_train, train_y, A_test, test_y, max_iter=probe_max_iter
        )
    return row


@torch.no_grad()
def training_gflop(config, input_dim: int, n_train: int) -> float:
    """A run's training budget in GFLOP: its kind's matrix-product flops per sample
    (``ModelKind.gemm_flops_per_sample``) times the samples of its epochs over ``n_train`` rows."""
    return KINDS[config.model].gemm_flops_per_sample(input_dim, config) * config.epochs * n_train / 1e9


@torch.no_grad()
def decoder_fvu(model: torch.nn.Module, kind: str, test_x: torch.Tensor) -> float:
    """FVU of ``test_x`` through the model's own decoder; NaN for a kind without one (ours, which
    is read out instead)."""
    return fvu(test_x, model(test_x)[0]) if KINDS[kind].has_decoder else math.nan


def evaluate_run(
    result: RunResult,
    train_x: torch.Tensor,
    test_x: torch.Tensor,
    train_y: torch.Tensor | None = None,
    test_y: torch.Tensor | None = None,
    probe_max_iter: int = 5000,
) -> dict:
    """A trained run's numbers (see ``evaluate_codes``, and the FVU conventions above), plus
    ``decoder_fvu``, ``fvu``, ``n_params``, ``train_seconds``, ``train_gflop`` (``train_x`` being
    the rows the run was trained on), ``runs_trained_together`` and ``diverged``. A run that
    diverged gets NaN for every number of its features: its last finite weights are not a
    trained model."""
    model = result.model()
    row = {
        "n_params": count_parameters(model),
        "train_seconds": result.seconds,
        "train_gflop": training_gflop(result.config, train_x.shape[1], len(train_x)),
        "runs_trained_together": result.group_size,
        "diverged": result.diverged_epoch is not None,
    }
    if row["diverged"]:
        return {
            **row,
            "l0": math.nan,
            "readout_fvu": math.nan,
            "decoder_fvu": math.nan,
            "fvu": math.nan,
            **({"probe_accuracy": math.nan} if train_y is not None else {}),
        }
    A_train, A_test = features(model, train_x), features(model, test_x)
    row.update(evaluate_codes(A_train, A_test, train_x, test_x, train_y, test_y, probe_max_iter))
    row.update(activation_summary(A_test, model.W))
    row["decoder_fvu"] = decoder_fvu(model, result.config.model, test_x)
    row["fvu"] = row["readout_fvu"] if math.isnan(row["decoder_fvu"]) else row["decoder_fvu"]
    return row
