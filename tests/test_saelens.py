"""Dictionaries written in SAELens's disk layout: the files against SAELens's documented format
(tensor names, shapes, config fields), SAELens's encode and decode rules recomputed here in
float64 from the files alone against our models, the scale folding, the round trip, the errors;
and, where sae_lens is installed, SAELens's own loader."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.datasets import load_digits

import encoder_study as es
from encoder_study.evaluation.metrics import apply_linear_readout, fit_linear_readout

EPS32 = np.finfo(np.float32).eps
SAELENS_CFG_FIELDS = {"architecture", "d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input"}
SAELENS_CFG_FIELDS |= {"normalize_activations", "reshape_activations", "metadata"}


@pytest.fixture(scope="module")
def digits():
    return torch.from_numpy((load_digits().data / 16.0).astype(np.float32))


@pytest.fixture(scope="module")
def fitted(digits, tmp_path_factory):
    cache = tmp_path_factory.mktemp("runs")
    knobs = {
        "ours": {},
        "sae": {"l1": 0.05},
        "sae_dnorm": {"l1": 0.05},
        "jumprelu": {"threshold_init": 0.05},
        "topk": {"k": 4},
        "batchtopk": {"k": 4},
    }
    return {
        kind: es.fit(digits, kind=kind, hidden_dim=16, epochs=2, seed=2, cache=cache, progress=False, **kw)
        for kind, kw in knobs.items()
    }


ALL_KINDS = ["ours", "sae", "sae_dnorm", "jumprelu", "topk", "batchtopk"]
JUMPS = ("jumprelu", "batchtopk")  # exported as SAELens's JumpReLU: a threshold per latent
ARCHITECTURE = {"topk": "topk", "jumprelu": "jumprelu", "batchtopk": "jumprelu"}  # the rest: standard


def saelens_encode(t: dict, cfg: dict, x: torch.Tensor) -> torch.Tensor:
    """SAELens's encode, from its documented rule, in float64."""
    t = {n: v.double() for n, v in t.items()}
    h = (x.double() - t["b_dec"] * cfg["apply_b_dec_to_input"]) @ t["W_enc"] + t["b_enc"]
    if cfg["architecture"] == "topk":
        values, idx = h.topk(cfg["k"], dim=-1)
        return torch.zeros_like(h).scatter(-1, idx, values.relu())
    if cfg["architecture"] == "jumprelu":
        return h.relu() * (h > t["threshold"])
    return h.relu()


def rounding_bound(t: dict, x: torch.Tensor) -> torch.Tensor:
    """Elementwise bound on float32 rounding of the encoder's sums: D eps sum |w x| (+ biases)."""
    t = {n: v.double() for n, v in t.items()}
    mags = (x.double().abs() + t["b_dec"].abs()) @ t["W_enc"].abs() + t["b_enc"].abs()
    return x.shape[1] * EPS32 * mags


def written(d, folder, **options):
    d.save(folder, format="saelens", **options)
    return load_file(str(folder / "sae_weights.safetensors")), json.loads((folder / "cfg.json").read_text())


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_layout_matches_saelens_format(fitted, digits, tmp_path, kind):
    t, cfg = written(fitted[kind], tmp_path / kind, readout_x=digits, hook_name="pixels", model_name="digits")
    d_in, d_sae = 64, 16
    shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if kind in JUMPS:
        shapes["threshold"] = (d_sae,)
    assert set(t) == set(shapes)
    assert {n: tuple(v.shape) for n, v in t.items()} == shapes
    assert all(v.dtype == torch.float32 for v in t.values())
    assert SAELENS_CFG_FIELDS <= set(cfg)
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"]) == (d_in, d_sae, "float32")
    assert cfg["normalize_activations"] == "none"
    assert cfg["architecture"] == ARCHITECTURE.get(kind, "standard")
    assert cfg["metadata"]["hook_name"] == "pixels" and cfg["metadata"]["model_name"] == "digits"
    assert cfg["metadata"]["encoder_study"]["kind"] == kind
    if kind == "topk":
        assert cfg["k"] == 4 and cfg["apply_b_dec_to_input"] is True
    assert not list((tmp_path / kind).glob("*.tmp"))


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_saelens_rule_on_the_files_gives_our_features_and_reconstructions(fitted, digits, tmp_path, kind):
    d = fitted[kind]
    t, cfg = written(d, tmp_path / kind, readout_x=digits)
    ours_A = d.encode(digits).double()
    theirs = saelens_encode(t, cfg, digits)
    bound = rounding_bound(t, digits)
    if kind == "topk":  # the same latents win wherever the k-th and (k+1)-th are apart by more than rounding
        top = (digits.double() - t["b_dec"].double()) @ t["W_enc"].double() + t["b_enc"].double()
        kth = top.topk(5, dim=-1).values
        clear = (kth[:, 3] - kth[:, 4]) > 2 * bound.max(1).values
        assert clear.float().mean() > 0.95, "almost every sample should have a clear k-th latent"
        ours_A, theirs, bound = ours_A[clear], theirs[clear], bound[clear]
    if kind in JUMPS:  # away from the threshold, where rounding cannot flip the jump
        h = (digits.double() - t["b_dec"].double()) @ t["W_enc"].double() + t["b_enc"].double()
        far = (h - t["threshold"].double()).abs() > 2 * bound
        ours_A, theirs, bound = ours_A * far, theirs * far, bound
    assert torch.all((ours_A - theirs).abs() <= bound + 1e-30)
    # decode: a @ W_dec + b_dec against the model's decoder, or ours' readout, in float64
    A = d.encode(digits).double()
    x_hat = A @ t["W_dec"].double() + t["b_dec"].double()
    if kind == "ours":
        expected = apply_linear_readout(A, fit_linear_readout(A, digits))
    else:
        expected = d.model().double()(digits.double())[0].detach()
    assert torch.allclose(x_hat, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))


def test_input_scale_is_folded_so_raw_inputs_give_the_same_features(fitted, digits, tmp_path):
    s = 3.0  # the dictionary saw x / s; SAELens will see x
    for kind in ALL_KINDS[1:]:  # the SAEs: ours' readout is fitted to the inputs it is given
        t, cfg = written(fitted[kind], tmp_path / kind, input_scale=s)
        raw = digits * s
        ours_A = fitted[kind].encode(digits).double()
        theirs = saelens_encode(t, cfg, raw)
        atol = 64 * 64 * EPS32 * float(ours_A.abs().max() + 1)  # D^2 roundings of float32 sums, scaled
        keep = torch.ones(len(digits), dtype=torch.bool)
        if kind in JUMPS:  # a sample with a latent within rounding of its threshold may jump either way
            pre = raw.double() - t["b_dec"].double() * cfg["apply_b_dec_to_input"]
            h = pre @ t["W_enc"].double() + t["b_enc"].double()
            keep = ((h - t["threshold"].double()).abs() > atol).all(1)
            assert keep.float().mean() > 0.9, "almost every sample should be clear of the thresholds"
        assert torch.allclose(theirs[keep], ours_A[keep], rtol=0, atol=atol)
        x_hat = theirs @ t["W_dec"].double() + t["b_dec"].double()
        own = fitted[kind].model().double()(digits.double())[0].detach()
        assert torch.allclose(x_hat[keep] / s, own[keep], atol=1e-4)
        assert cfg["metadata"]["encoder_study"]["input_scale"] == s


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_round_trip_gives_identical_features_and_files(fitted, digits, tmp_path, kind):
    d = fitted[kind]
    t1, _ = written(d, tmp_path / "a", readout_x=digits)
    back = es.load(tmp_path / "a")
    assert back.kind == kind and back.config.as_dict() == {**d.config.as_dict(), "device": "auto"}
    assert torch.equal(back.encode(digits), d.encode(digits))
    t2, _ = written(back, tmp_path / "b")  # ours keeps its readout: no readout_x needed again
    assert all(torch.equal(t1[n], t2[n]) for n in t1)


def test_errors_name_what_is_wrong(fitted, digits, tmp_path):
    with pytest.raises(ValueError, match="readout_x=None"):  # a fresh copy: saving with readout_x keeps one
        dataclasses.replace(fitted["ours"], readout=None).save(tmp_path / "x", format="saelens")
    with pytest.raises(ValueError, match="format='onnx'"):
        fitted["sae"].save(tmp_path / "x", format="onnx")
    with pytest.raises(ValueError, match="input_scale=0"):
        fitted["sae"].save(tmp_path / "x", format="saelens", input_scale=0)
    with pytest.raises(ValueError, match="readout_x has 3 features"):
        fitted["ours"].save(tmp_path / "x", format="saelens", readout_x=np.ones((5, 3), np.float32))
    foreign = tmp_path / "foreign"
    written(fitted["sae"], foreign)
    cfg = json.loads((foreign / "cfg.json").read_text())
    del cfg["metadata"]["encoder_study"]
    (foreign / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="did not write"):
        es.load(foreign)


def test_saelens_itself_loads_the_folder(fitted, digits, tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    for kind in ALL_KINDS:
        written(fitted[kind], tmp_path / kind, readout_x=digits)
        sae = sae_lens.SAE.load_from_disk(str(tmp_path / kind))
        with torch.no_grad():
            theirs = sae.encode(digits)
        assert torch.allclose(theirs, fitted[kind].encode(digits), atol=1e-5), kind


@pytest.mark.parametrize(
    "kind,field,value",
    [
        ("sae", "architecture", "topk"),
        ("sae", "d_in", 63),
        ("sae", "d_sae", 7),
        ("topk", "k", 5),
        ("batchtopk", "architecture", "standard"),
    ],
)
def test_the_reader_checks_cfg_json_against_tensors_and_metadata(fitted, tmp_path, kind, field, value):
    folder = tmp_path / kind
    written(fitted[kind], folder)
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg[field] = value
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=f"cfg.json: {field}={value!r}"):
        es.load(folder)


def test_the_reader_refuses_tensors_of_the_wrong_shape_or_non_finite(fitted, tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "sae"
    written(fitted["sae"], folder)
    t = load_file(str(folder / "sae_weights.safetensors"))
    save_file({**t, "b_dec": t["b_dec"][:-1].contiguous()}, str(folder / "sae_weights.safetensors"))
    with pytest.raises(ValueError, match="b_dec has shape"):
        es.load(folder)
    save_file(
        {**t, "W_dec": torch.full_like(t["W_dec"], float("inf"))}, str(folder / "sae_weights.safetensors")
    )
    with pytest.raises(ValueError, match="NaN or infinite"):
        es.load(folder)


def test_each_kind_exports_the_tensors_of_its_architecture_and_an_unknown_one_is_refused():
    from encoder_study.interface.saelens import saelens_tensor_names
    from encoder_study.models.kinds import KINDS

    # SAELens's formats: every architecture has the encoder, decoder and their biases; JumpReLU
    # (the JumpReLU SAE's and BatchTopK's form) adds a threshold per latent
    base = {"W_enc", "b_enc", "W_dec", "b_dec"}
    assert set(saelens_tensor_names(KINDS["sae"])) == base
    assert set(saelens_tensor_names(KINDS["topk"])) == base
    assert set(saelens_tensor_names(KINDS["jumprelu"])) == base | {"threshold"}
    assert set(saelens_tensor_names(KINDS["batchtopk"])) == base | {"threshold"}
    gated = type("GatedKind", (), {"name": "gated", "saelens_architecture": "gated"})
    with pytest.raises(ValueError, match=r"'gated' has saelens_architecture='gated'; this export writes \["):
        saelens_tensor_names(gated)
