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
  affine (ridge) readout of the inputs from its features, fitted on samples the caller
  gives; the config's metadata says so (``encoder_study.decoder``). SAELens then encodes exactly
  our features and decodes through that readout.

A dictionary trained on scaled inputs x / s (notebook 5's activations are divided by their RMS
norm) is written for raw inputs: W_enc / s, b_dec * s, W_dec * s, so SAELens needs no
normalisation step (``normalize_activations`` "none"), and the scale is recorded. The package's
own fields (kind, knobs, training settings, readout) live under ``metadata.encoder_study``, which
is how ``read`` rebuilds the dictionary; SAELens keeps unknown metadata keys as they are.

Each kind declares its part in its own file (``kinds/``): ``saelens_architecture``,
``saelens_pre_biased``, ``saelens_fields`` (TopK's k), and ``to_saelens`` / ``from_saelens`` (the
tensors both ways). This module holds what every kind shares: scaling, cfg.json, the checks.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import __version__
from ..book.storage import read_json_object, read_safetensors, write_atomic
from ..evaluation.metrics import features, fit_linear_readout
from ..models.config import RunConfig, saved_run_config
from ..models.kinds import KINDS, ModelKind, user_kinds

CFG_FILE, WEIGHTS_FILE = "cfg.json", "sae_weights.safetensors"
SAELENS_TENSORS = {  # the tensors of each SAELens architecture a kind may export as
    "standard": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "topk": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "jumprelu": ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"),
}


def saelens_tensor_names(kind: type[ModelKind]) -> tuple[str, ...]:
    """The tensors a kind's SAELens form holds, by its ``saelens_architecture``; a kind with none, or
    with an architecture this module does not write, is refused by name."""
    if kind.saelens_architecture is None:
        raise ValueError(f"model kind {kind.name!r} has no SAELens form (its saelens_architecture is None)")
    if kind.saelens_architecture not in SAELENS_TENSORS:
        raise ValueError(
            f"model kind {kind.name!r} has saelens_architecture={kind.saelens_architecture!r}; "
            f"this export writes {sorted(SAELENS_TENSORS)}"
        )
    return SAELENS_TENSORS[kind.saelens_architecture]


def readout_of(dictionary, readout_x: torch.Tensor) -> torch.Tensor:
    """The affine readout (K + 1, D), bias last, of ``readout_x`` from its features
    (``metrics.fit_linear_readout``): the decoder a dictionary without one is given when it is
    written for SAELens."""
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
    docstring); ``readout`` is a decoder-free kind's fitted readout in its own (scaled) input space."""
    from safetensors.torch import save

    config = dictionary.config
    kind = KINDS[config.model]
    saelens_tensor_names(kind)  # a kind without a SAELens form this module writes is refused before any file
    if config.activation != "relu":
        raise ValueError(
            f"activation={config.activation!r}: only ReLU activations map onto SAELens's architectures"
        )
    tensors = {
        n: t.detach().to(torch.float32).cpu() for n, t in kind.to_saelens(dictionary.state, readout).items()
    }
    tensors["W_enc"] = tensors["W_enc"] / input_scale
    for name in ("W_dec", "b_dec"):
        tensors[name] = tensors[name] * input_scale
    tensors = {n: t.contiguous() for n, t in tensors.items()}
    cfg = {
        "architecture": kind.saelens_architecture,
        "d_in": dictionary.input_dim,
        "d_sae": dictionary.hidden_dim,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": kind.saelens_pre_biased,
        "normalize_activations": "none",
        "reshape_activations": "none",
        **kind.saelens_fields(config),
        "metadata": {
            "model_name": model_name,
            "hook_name": hook_name,
            "encoder_study": {
                "kind": kind.user_name,
                "knobs": kind.knob_values(config),
                "training": config.training(),
                "input_scale": input_scale,
                "decoder": (
                    "the model's trained decoder"
                    if kind.has_decoder
                    else f"affine ridge readout fitted on {readout_samples} samples "
                    "(the model has no decoder)"
                ),
                "package_version": __version__,
            },
        },
    }
    path.mkdir(parents=True, exist_ok=True)
    write_atomic(path / WEIGHTS_FILE, save(tensors))
    write_atomic(path / CFG_FILE, json.dumps(cfg, indent=1))
    return path


def is_saelens_folder(path: Path) -> bool:
    return (path / CFG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def read(path: Path) -> tuple[RunConfig, int, dict[str, torch.Tensor], torch.Tensor | None]:
    """(the run config, the input dimension, the model's state in raw input units, a decoder-free
    kind's readout or None) of a folder ``write`` wrote, after checking that ``cfg.json``'s
    architecture, d_in, d_sae and the kind's own fields (TopK's k) agree with the tensors and with
    the package's metadata (an error names the file and the field)."""
    cfg_file = path / CFG_FILE
    cfg = read_json_object(cfg_file)
    ours = cfg.get("metadata", {}).get("encoder_study") if isinstance(cfg.get("metadata"), dict) else None
    if not ours:
        raise ValueError(
            f"path={str(path)!r} is a SAELens folder that encoder-study did not write (no metadata."
            f"encoder_study); load it with sae_lens.SAE.load_from_disk"
        )
    kinds = user_kinds()
    if not isinstance(ours, dict) or not isinstance(ours.get("kind"), str):
        raise ValueError(
            f"{cfg_file}: metadata.encoder_study must be an object naming its kind, got {ours!r}"[:300]
        )
    if ours.get("kind") not in kinds:
        raise ValueError(
            f"{cfg_file}: metadata.encoder_study.kind={ours.get('kind')!r} is not one of {sorted(kinds)}"
        )
    kind = kinds[ours["kind"]]
    t = read_safetensors(path / WEIGHTS_FILE)
    d_in, d_sae = _check_tensors(kind, t, path / WEIGHTS_FILE)
    try:
        config = saved_run_config(ours["kind"], d_sae, ours["knobs"], ours["training"])
    except KeyError as e:
        raise ValueError(f"{cfg_file}: metadata.encoder_study lacks the field {e}") from e
    except (TypeError, ValueError) as e:
        raise ValueError(f"{cfg_file}: {e}") from e
    expected = {
        "architecture": kind.saelens_architecture,
        "d_in": d_in,
        "d_sae": d_sae,
        **kind.saelens_fields(config),
    }
    for field, want in expected.items():
        if cfg.get(field) != want:
            raise ValueError(
                f"{cfg_file}: {field}={cfg.get(field)!r}, but the tensors and metadata.encoder_study "
                f"(kind {kind.user_name!r}) say {want!r}"
            )
    try:
        state, readout = kind.from_saelens(t)
    except ValueError as e:
        raise ValueError(f"{path / WEIGHTS_FILE}: {e}") from e
    return config, d_in, state, readout


def _check_tensors(kind: type[ModelKind], t: dict[str, torch.Tensor], source: Path) -> tuple[int, int]:
    """(d_in, d_sae) of SAELens tensors whose names and shapes fit together, else an error."""
    names = set(saelens_tensor_names(kind))
    if set(t) != names:
        raise ValueError(
            f"{source}: tensors {sorted(t)} are not SAELens's {sorted(names)} for kind {kind.user_name!r}"
        )
    if t["W_enc"].dim() != 2:
        raise ValueError(f"{source}: W_enc has shape {tuple(t['W_enc'].shape)}; expected (d_in, d_sae)")
    d_in, d_sae = t["W_enc"].shape
    shapes = {"b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,), "threshold": (d_sae,)}
    for name in sorted(names - {"W_enc"}):
        if tuple(t[name].shape) != shapes[name]:
            raise ValueError(
                f"{source}: {name} has shape {tuple(t[name].shape)}; d_in={d_in}, d_sae={d_sae} "
                f"needs {shapes[name]}"
            )
    return d_in, d_sae
