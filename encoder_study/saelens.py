"""Dictionaries in SAELens's disk layout, so the SAE tools of the field can load them.

A SAELens folder holds ``cfg.json`` and ``sae_weights.safetensors``. The tensors, in SAELens's
shapes: ``W_enc`` (d_in, d_sae), ``b_enc`` (d_sae), ``W_dec`` (d_sae, d_in), ``b_dec`` (d_in).
SAELens encodes h = (x - b_dec * apply_b_dec_to_input) @ W_enc + b_enc, then ReLU(h)
(architecture "standard") or ReLU of the k largest entries of h, the rest 0 ("topk", field
``k``), and decodes a @ W_dec + b_dec. How each kind maps onto that:

- the L1 SAE: W_enc = encoder.weight^T, b_enc = encoder.bias, W_dec = decoder.weight^T,
  b_dec = decoder.bias, apply_b_dec_to_input false; "standard".
- the TopK SAE: the same with b_dec = pre_bias, which it subtracts from the input before
  encoding (apply_b_dec_to_input true); "topk" with its k.
- the BatchTopK SAE: as the TopK SAE, with its inference rule, which is SAELens's "jumprelu"
  (ReLU(h) where h > threshold): its one threshold repeated for every latent.
- ours (ReLU only): W_enc, b_enc from its one layer; it has no decoder, so W_dec and b_dec are a
  least-squares affine readout of the inputs from its features, fitted on samples the caller
  gives; the config's metadata says so (``encoder_study.decoder``). SAELens then encodes exactly
  our features and decodes through that readout.

A dictionary trained on scaled inputs x / s (notebook 5's activations are divided by their RMS
norm) is written for raw inputs: W_enc / s, b_dec * s, W_dec * s, so SAELens needs no
normalisation step (``normalize_activations`` "none"), and the scale is recorded. The package's
own fields (kind, knobs, training settings, readout) live under ``metadata.encoder_study``, which
is how ``read`` rebuilds the dictionary; SAELens keeps unknown metadata keys as they are.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from . import __version__
from .metrics import features, fit_linear_readout
from .storage import write_atomic

CFG_FILE, WEIGHTS_FILE = "cfg.json", "sae_weights.safetensors"
ARCHITECTURES = {"ours": "standard", "sae": "standard", "topk": "topk", "batchtopk": "jumprelu"}
PRE_BIASED = ("topk", "batchtopk")  # kinds that subtract b_pre (SAELens: b_dec) from the input


def _tensors(
    kind: str, state: dict[str, torch.Tensor], readout: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """The four SAELens tensors of a dictionary trained on unscaled inputs."""
    if kind == "ours":
        return {
            "W_enc": state["linear.weight"].T,
            "b_enc": state["linear.bias"],
            "W_dec": readout[:-1],
            "b_dec": readout[-1],
        }
    out = {
        "W_enc": state["encoder.weight"].T,
        "b_enc": state["encoder.bias"],
        "W_dec": state["decoder.weight"].T,
    }
    out["b_dec"] = state["pre_bias"] if kind in PRE_BIASED else state["decoder.bias"]
    if kind == "batchtopk":  # SAELens's JumpReLU: one threshold per latent, here all the same
        out["threshold"] = state["threshold"].expand(state["encoder.bias"].shape)
    return out


def readout_of(dictionary, readout_x: torch.Tensor) -> torch.Tensor:
    """The least-squares affine readout (K + 1, D), bias last, of ``readout_x`` from its features:
    the decoder a dictionary without one is given when it is written for SAELens."""
    A = features(dictionary.model(), readout_x.to(torch.float32))
    return fit_linear_readout(A, readout_x).to(torch.float32)


def write(
    dictionary,
    path: Path,
    readout: torch.Tensor | None,
    readout_samples: int | None,
    input_scale: float,
    hook_name: str | None,
    model_name: str | None,
) -> Path:
    """Write ``dictionary`` (an ``api.Dictionary``) as a SAELens folder at ``path`` (see the module
    docstring); ``readout`` is ours' fitted readout in its own (scaled) input space."""
    from safetensors.torch import save

    kind, config = dictionary.kind, dictionary.config
    if config.activation != "relu":
        raise ValueError(
            f"activation={config.activation!r}: only ReLU activations map onto SAELens's architectures"
        )
    tensors = {
        n: t.detach().to(torch.float32).cpu() for n, t in _tensors(kind, dictionary.state, readout).items()
    }
    tensors["W_enc"] = tensors["W_enc"] / input_scale
    for name in ("W_dec", "b_dec"):
        tensors[name] = tensors[name] * input_scale
    tensors = {n: t.contiguous() for n, t in tensors.items()}
    from .api import knobs_of, training_of

    cfg = {
        "architecture": ARCHITECTURES[kind],
        "d_in": dictionary.input_dim,
        "d_sae": dictionary.hidden_dim,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": kind in PRE_BIASED,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "model_name": model_name,
            "hook_name": hook_name,
            "encoder_study": {
                "kind": kind,
                "knobs": knobs_of(config),
                "training": training_of(config),
                "input_scale": input_scale,
                "decoder": (
                    f"least-squares affine readout fitted on {readout_samples} samples "
                    "(the model has no decoder)"
                    if kind == "ours"
                    else "the model's trained decoder"
                ),
                "package_version": __version__,
            },
        },
    }
    if kind == "topk":
        cfg.update(k=config.k, rescale_acts_by_decoder_norm=False)
    path.mkdir(parents=True, exist_ok=True)
    write_atomic(path / WEIGHTS_FILE, save(tensors))
    write_atomic(path / CFG_FILE, json.dumps(cfg, indent=1))
    return path


def is_saelens_folder(path: Path) -> bool:
    return (path / CFG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def read(path: Path) -> tuple[dict, dict[str, torch.Tensor], torch.Tensor | None]:
    """(the package's metadata, the model's state in raw input units, ours' readout or None) of
    a folder ``write`` wrote, after checking that ``cfg.json``'s architecture, d_in, d_sae and k
    agree with the tensors and with the package's metadata (an error names the field)."""
    from .api import _read_json, _read_weights

    cfg_file = path / CFG_FILE
    cfg = _read_json(cfg_file)
    ours = cfg.get("metadata", {}).get("encoder_study") if isinstance(cfg.get("metadata"), dict) else None
    if not ours:
        raise ValueError(
            f"path={str(path)!r} is a SAELens folder that encoder-study did not write (no metadata."
            f"encoder_study); load it with sae_lens.SAE.load_from_disk"
        )
    kind = ours.get("kind")
    if kind not in ARCHITECTURES:
        raise ValueError(
            f"{cfg_file}: metadata.encoder_study.kind={kind!r} is not one of {sorted(ARCHITECTURES)}"
        )
    t = _read_weights(path / WEIGHTS_FILE)
    _check_cfg(cfg, cfg_file, kind, ours, t)
    if kind == "ours":
        state = {"linear.weight": t["W_enc"].T.contiguous(), "linear.bias": t["b_enc"]}
        return ours, state, torch.cat([t["W_dec"], t["b_dec"][None]]).contiguous()
    state = {
        "encoder.weight": t["W_enc"].T.contiguous(),
        "encoder.bias": t["b_enc"],
        "decoder.weight": t["W_dec"].T.contiguous(),
    }
    state["pre_bias" if kind in PRE_BIASED else "decoder.bias"] = t["b_dec"]
    if kind == "batchtopk":
        state["threshold"] = t["threshold"][0].clone()
    return ours, state, None


def _check_cfg(cfg: dict, cfg_file: Path, kind: str, ours: dict, t: dict[str, torch.Tensor]) -> None:
    """Refuse a SAELens folder whose cfg.json disagrees with its tensors or its metadata."""
    names = {"W_enc", "b_enc", "W_dec", "b_dec"} | ({"threshold"} if kind == "batchtopk" else set())
    weights = cfg_file.parent / WEIGHTS_FILE
    if set(t) != names:
        raise ValueError(
            f"{weights}: tensors {sorted(t)} are not SAELens's {sorted(names)} for kind {kind!r}"
        )
    if t["W_enc"].dim() != 2:
        raise ValueError(f"{weights}: W_enc has shape {tuple(t['W_enc'].shape)}; expected (d_in, d_sae)")
    d_in, d_sae = t["W_enc"].shape
    expected = {
        "architecture": ARCHITECTURES[kind],
        "d_in": d_in,
        "d_sae": d_sae,
        **({"k": ours.get("knobs", {}).get("k")} if kind == "topk" else {}),
    }
    for field, want in expected.items():
        if cfg.get(field) != want:
            raise ValueError(
                f"{cfg_file}: {field}={cfg.get(field)!r}, but the tensors and metadata.encoder_study "
                f"(kind {kind!r}) say {want!r}"
            )
    shapes = {"b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,), "threshold": (d_sae,)}
    for name in names - {"W_enc"}:
        if tuple(t[name].shape) != shapes[name]:
            raise ValueError(
                f"{weights}: {name} has shape {tuple(t[name].shape)}; d_in={d_in}, d_sae={d_sae} "
                f"needs {shapes[name]}"
            )
    if kind == "batchtopk" and not bool((t["threshold"] == t["threshold"][0]).all()):
        raise ValueError(f"{weights}: the BatchTopK SAE has one threshold for all latents; these differ")
