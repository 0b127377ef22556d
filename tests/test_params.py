"""The parameter sets outside the book's two (params/large): each parses against its notebook's
declared parameters, and each group it would train fits an 80 GiB GPU by the engine's own
arithmetic (so the estimate beside it is the one the memory check would hold it to)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

from encoder_study.book.record import check_names, check_value, declared_parameters
from encoder_study.models.config import RunConfig
from encoder_study.training.engine import group_memory_bytes

ROOT = Path(__file__).resolve().parent.parent
GPU_BYTES = 80 * 2**30


def _module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", sorted((ROOT / "params" / "large").glob("*.yaml")), ids=lambda p: p.stem)
def test_a_large_parameter_set_parses_against_its_notebook(path):
    import jupytext

    params = yaml.safe_load(path.read_text())
    cell = next(
        c
        for c in jupytext.read(ROOT / "notebooks" / f"{path.stem}.py").cells
        if "parameters" in c.metadata.get("tags", [])
    )
    declared = declared_parameters(cell.source)
    check_names(set(params), declared)
    for name, value in params.items():
        check_value(name, value, declared[name])
    grids = ("sae_l1_grid", "sae_dnorm_l1_grid", "jumprelu_threshold_init_grid")
    assert all(len(params[g]) == len(params["hidden_dims"]) for g in grids) and len(params["seeds"]) >= 3


def test_every_group_of_the_large_llm_set_fits_an_80_gib_gpu():
    estimate = _module(ROOT / "params" / "large" / "estimate.py")
    params = yaml.safe_load((ROOT / "params" / "large" / "05_llm_activations.yaml").read_text())
    data = int(params["max_tokens"] * estimate.TRAIN_FRACTION) * estimate.D * 4
    found = estimate.groups(params)
    assert {k for _, k, _ in found} >= {4096, 16384}
    for model, k, runs in found:
        config = RunConfig(model=model, hidden_dim=k, k=20 if "topk" in model else 0)
        state = group_memory_bytes([config] * runs, estimate.D)
        covariance = runs * 2 * k * k * 4 if model == "encoder" else 0
        activations = runs * estimate.ACTIVATION_BUFFERS * params["batch_size"] * k * 4
        assert data + state + covariance + activations < GPU_BYTES, (model, k, runs)


def test_group_memory_is_weights_gradients_and_two_moments_per_run():
    # the paper's counts: 50,240 parameters for ours at 784 -> 64, 101,200 for its SAE
    assert group_memory_bytes([RunConfig()] * 3, 784) == 3 * 50_240 * 4 * 4
    assert group_memory_bytes([RunConfig(model="sae")] * 2, 784) == 2 * 101_200 * 4 * 4
