"""The method on your own data: ``fit`` a dictionary, ``encode`` with it, ``save`` and ``load`` it.

    import encoder_study as es
    d = es.fit(X, kind="ours", hidden_dim=64, epochs=20, seed=1)   # X: (n, d) NumPy array or tensor
    A = d.encode(X)                                                # (n, 64) features, same type as X
    d.save("my_dictionary")                                        # a folder: weights + config
    same = es.load("my_dictionary")
    d.save("for_saelens", format="saelens", readout_x=X)           # SAELens's layout (saelens.py)

``fit`` trains through the book's engine and run cache (``runs.run_experiments``), so the same
data, settings and seed give the same numbers as the notebooks would, and a second call with
them loads the finished run instead of training again. A saved dictionary is a folder holding
``weights.safetensors`` (the model's state, tensor names as in ``models/model.py``) and ``config.json``
(kind, shapes, knobs, training settings, the final training loss and the package version).
With ``format="saelens"`` the folder is SAELens's instead (``saelens.py``); ``load`` reads both.

``load`` trusts nothing it reads: the config's format, kind and knobs are checked as ``fit``
checks them, and the weights' names, shapes and dtypes against the model that config describes
(and against the shapes the config records); non-finite weights are refused, and so is a folder
holding both formats (which dictionary would be meant?). ``save`` refuses a folder that already
holds a dictionary unless ``overwrite=True``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..book.storage import read_json_object, read_safetensors, write_atomic
from ..book.validation import check_choice, check_positive
from ..evaluation.metrics import features
from ..models.config import RunConfig, run_config_for, saved_run_config
from ..models.kinds import KINDS, ModelKind
from ..models.model import build_run_model
from ..training.runs import as_data_tensor, run_experiments
from . import saelens

CONFIG_FILE, WEIGHTS_FILE = "config.json", "weights.safetensors"
FORMAT = "encoder-study-dictionary/1"
DTYPE = "float32"  # what fit trains and save writes
SAVE_FORMATS = ("encoder-study", "saelens")


@dataclass(repr=False)
class Dictionary:
    """A trained dictionary: its run's config, weights and training history."""

    config: RunConfig
    input_dim: int
    state: dict[str, torch.Tensor]
    history: list[dict] = field(default_factory=list)
    train_seconds: float = float("nan")
    readout: torch.Tensor | None = None
    """Ours only, once fitted: the fitted affine readout (K + 1, D), bias last, that stands
    in for a decoder (``saelens.readout_of``); kept so a dictionary read from SAELens's layout
    writes the same folder again."""

    @property
    def kind(self) -> str:
        """The kind as users name it (``fit(kind=...)``)."""
        return self.kind_class.user_name or self.config.model

    @property
    def kind_class(self) -> type[ModelKind]:
        """The registered kind (``kinds.KINDS``): its knobs, its SAELens form, whether it has a decoder."""
        return KINDS[self.config.model]

    @property
    def hidden_dim(self) -> int:
        return self.config.hidden_dim

    def __repr__(self) -> str:
        c = self.config
        return (
            f"Dictionary(kind={self.kind!r}, input_dim={self.input_dim}, hidden_dim={self.hidden_dim}, "
            f"knobs={self.kind_class.knob_values(c)}, epochs={c.epochs}, seed={c.seed}"
            + (", readout fitted" if self.readout is not None else "")
            + ")"
        )

    def model(self) -> torch.nn.Module:
        """The trained model (``models/model.py``), in eval mode."""
        m = build_run_model(self.config, self.input_dim)
        m.load_state_dict(self.state)
        return m.eval()

    @torch.no_grad()
    def encode(self, X: np.ndarray | torch.Tensor, batch_size: int = 8192) -> np.ndarray | torch.Tensor:
        """The features of X (n x input_dim): a NumPy float32 array for a NumPy input, else a tensor."""
        x = as_data_tensor("X", X)
        if x.shape[1] != self.input_dim:
            raise ValueError(f"X has {x.shape[1]} features; this dictionary was trained on {self.input_dim}")
        A = features(self.model(), x.to(torch.float32), batch_size)
        return A.numpy() if isinstance(X, np.ndarray) else A

    def save(
        self,
        path: str | os.PathLike,
        format: str = "encoder-study",
        readout_x: np.ndarray | torch.Tensor | None = None,
        input_scale: float = 1.0,
        hook_name: str | None = None,
        model_name: str | None = None,
        overwrite: bool = False,
    ) -> Path:
        """Write the folder ``path`` (created if needed; one that already holds a dictionary, in
        either format, only with ``overwrite=True``, which replaces it).

        format "encoder-study": weights in safetensors, config in JSON (``load`` reads it back).
        format "saelens": SAELens's layout (``saelens.py``). Ours has no decoder, so it needs
        ``readout_x`` (samples, in the units it was trained on) to fit the linear readout that
        becomes W_dec and b_dec, unless it already has one. ``input_scale``: s if the dictionary
        was trained on inputs divided by s; the folder is then written for raw inputs.
        ``hook_name`` and ``model_name`` go into SAELens's metadata (where the inputs came from).
        """
        from safetensors.torch import save

        check_choice("format", format, SAVE_FORMATS)
        check_positive("input_scale", input_scale)
        folder = _writable_folder(path, overwrite)
        if format == "saelens":
            readout, samples = self.readout, None
            decoder_free = not self.kind_class.has_decoder
            if decoder_free and readout_x is not None:
                x = as_data_tensor("readout_x", readout_x)
                if x.shape[1] != self.input_dim:
                    raise ValueError(
                        f"readout_x has {x.shape[1]} features; this dictionary takes {self.input_dim}"
                    )
                readout, samples = saelens.readout_of(self, x), len(x)
                self.readout = readout
            elif decoder_free and readout is None:
                raise ValueError(
                    f"readout_x=None: {self.kind} has no decoder; give samples (readout_x=) to fit the "
                    "linear readout that SAELens's W_dec and b_dec hold"
                )
            saelens.write(self, folder, readout, samples, input_scale, hook_name, model_name)
            _remove_other_format(folder, keep="saelens")
            return folder
        final_loss = self.history[-1]["total"] if self.history else None
        final_loss = final_loss if final_loss is not None and math.isfinite(final_loss) else None
        config = {
            "format": FORMAT,
            "kind": self.kind,
            "input_dim": self.input_dim,
            "hidden_dim": self.hidden_dim,
            "knobs": self.kind_class.knob_values(self.config),
            "training": self.config.training(),
            "final_training_loss": final_loss,
            "train_seconds": self.train_seconds if math.isfinite(self.train_seconds) else None,
            "package": "encoder-study",
            "package_version": __version__,
            "dtype": DTYPE,
            "tensors": {name: list(t.shape) for name, t in self.state.items()},
        }
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state.items()}
        write_atomic(folder / WEIGHTS_FILE, save(tensors, metadata={"format": FORMAT}))
        write_atomic(folder / CONFIG_FILE, json.dumps(config, indent=1, allow_nan=False))
        _remove_other_format(folder, keep="encoder-study")
        return folder


def dictionary_files(folder: Path) -> dict[str, list[str]]:
    """The files of each disk format present in ``folder`` (formats with none left out)."""
    formats = {
        "encoder-study": (CONFIG_FILE, WEIGHTS_FILE),
        "saelens": (saelens.CFG_FILE, saelens.WEIGHTS_FILE),
    }
    found = {f: [n for n in names if os.path.lexists(folder / n)] for f, names in formats.items()}
    return {f: names for f, names in found.items() if names}


def _writable_folder(path: object, overwrite: bool) -> Path:
    """``path`` as a folder to write a dictionary into: created if missing; refused if it is a
    file, not writable, or (unless ``overwrite``) holds a dictionary already."""
    folder = _as_path("path", path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"path={str(path)!r} is not a writable folder: {e.strerror or e}") from e
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OSError(f"path={str(path)!r} is not a writable folder: permission denied")
    existing = dictionary_files(folder)
    if existing and not overwrite:
        files = ", ".join(n for names in existing.values() for n in names)
        raise FileExistsError(
            f"path={str(path)!r} already holds a dictionary ({files}); pass overwrite=True to replace "
            f"it, or choose another folder"
        )
    return folder


def _remove_other_format(folder: Path, keep: str) -> None:
    """Once a dictionary is written in format ``keep``, remove the other format's files (links, not
    their targets), so the folder never holds two dictionaries. Nothing is removed before the new
    files are written: a refusal or a failed write leaves the old dictionary as it was."""
    for fmt, names in dictionary_files(folder).items():
        if fmt != keep:
            for name in names:
                (folder / name).unlink()


def _as_path(name: str, path: object) -> Path:
    if not isinstance(path, (str, os.PathLike)) or str(path) == "":
        raise TypeError(f"{name}={path!r} must be a folder path (a non-empty str or pathlib.Path)")
    return Path(path)


def fit(
    X: np.ndarray | torch.Tensor,
    kind: str = "ours",
    hidden_dim: int = 64,
    epochs: int = 20,
    seed: int = 1,
    batch_size: int = 128,
    lr: float = 1e-3,
    optimizer: str = "adam",
    device: str = "auto",
    X_test: np.ndarray | torch.Tensor | None = None,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
    **knobs: float,
) -> Dictionary:
    """Train one dictionary on X (n samples x d features) and return it.

    kind: "ours" (LSE + InfoMax, no decoder; knobs lambda_lse, lambda_var, lambda_tc, default 1),
    "sae" (MSE + L1; knob l1, default 0.01), "sae_dnorm" (the L1 penalty weighted by decoder
    norms, with the rest of its current recipe: transposed init, warm-up, clipping; l1), "topk"
    (TopK SAE; knob k, required), "batchtopk" (BatchTopK SAE; k, required; it encodes with its
    learned threshold), "jumprelu" (JumpReLU SAE; sparsity, bandwidth), or a kind
    registered from outside the package (``kinds.user_kinds()``: each declares its knobs). The data are
    used as given (float32; centre or scale them first if your features need it). X_test, if
    given, is where the engine measures dead units, L0 and redundancy during training (history).
    cache: the run cache's folder (default under ``~/.cache/encoder-study``).
    """
    x = as_data_tensor("X", X).to(torch.float32)
    xt = None if X_test is None else as_data_tensor("X_test", X_test).to(torch.float32)
    if xt is not None and xt.shape[1] != x.shape[1]:
        raise ValueError(f"X_test has {xt.shape[1]} features but X has {x.shape[1]}; give both the same")
    config = run_config_for(
        kind,
        knobs,
        hidden_dim=hidden_dim,
        epochs=epochs,
        seed=seed,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        device=device,
    )
    if config.batch_size > len(x):
        raise ValueError(f"batch_size={batch_size} is larger than X's {len(x)} samples")
    (result,) = run_experiments([config], x, xt, cache=cache, progress=progress)
    if result.diverged_epoch is not None:
        why = result.history[-1].get("diverged_because", "its loss left the bound")
        raise FloatingPointError(
            f"training diverged at epoch {result.diverged_epoch}: {why}; try a smaller lr (lr={lr})"
        )
    return Dictionary(config, x.shape[1], result.state, result.history, result.seconds)


def load(path: str | os.PathLike) -> Dictionary:
    """A dictionary saved by ``Dictionary.save``, in either format, checked against what its files
    say (see the module docstring); an error names the file and what does not fit."""
    folder = _as_path("path", path)
    if not folder.is_dir():
        raise FileNotFoundError(f"path={str(path)!r} is not a folder holding a saved dictionary")
    present = dictionary_files(folder)
    if len(present) > 1:
        raise ValueError(
            f"path={str(path)!r} holds two dictionaries, one in each format "
            f"({', '.join(present['encoder-study'])} and {', '.join(present['saelens'])}); keep one "
            f"(remove the other's files) or load from separate folders"
        )
    if "saelens" in present:
        return _load_saelens(folder)
    cfg_file, weights_file = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for f in (cfg_file, weights_file):
        if not f.is_file():
            raise FileNotFoundError(f"path={str(path)!r} is not a saved dictionary: {f.name} is missing")
    cfg = read_json_object(cfg_file)
    if cfg.get("format") != FORMAT:
        raise ValueError(f"{cfg_file}: format {cfg.get('format')!r} is not {FORMAT!r}")
    try:
        config = saved_run_config(cfg["kind"], cfg["hidden_dim"], cfg["knobs"], cfg["training"])
        input_dim = cfg["input_dim"]
        if isinstance(input_dim, bool) or not isinstance(input_dim, int) or input_dim < 1:
            raise ValueError(f"input_dim={input_dim!r} must be an integer >= 1")
        if cfg.get("dtype", DTYPE) != DTYPE:
            raise ValueError(f"dtype={cfg['dtype']!r} is not {DTYPE!r}")
    except KeyError as e:
        raise ValueError(f"{cfg_file}: the field {e} is missing") from e
    except (TypeError, ValueError) as e:
        raise ValueError(f"{cfg_file}: {e}") from e
    state = read_safetensors(weights_file)
    recorded = cfg.get("tensors")
    if recorded is not None and recorded != {n: list(t.shape) for n, t in state.items()}:
        raise ValueError(f"{weights_file}: its tensors' shapes are not those {cfg_file.name} records")
    check_state(state, config, input_dim, weights_file)
    loss = cfg.get("final_training_loss")
    history = [{"epoch": cfg["training"]["epochs"], "total": loss}] if loss is not None else []
    seconds = cfg.get("train_seconds")
    return Dictionary(
        config,
        input_dim,
        state,
        history,
        float(seconds) if isinstance(seconds, (int, float)) and math.isfinite(seconds) else float("nan"),
    )


def check_state(state: dict[str, torch.Tensor], config: RunConfig, input_dim: int, source: Path) -> None:
    """Refuse, naming ``source``, weights that are not the state of the model ``config`` describes
    on ``input_dim`` inputs: other tensor names, shapes or dtypes, or non-finite values."""
    with torch.device("meta"):  # names, shapes and dtypes only: nothing allocated, no random numbers drawn
        expected = build_run_model(config, input_dim).state_dict()
    if set(state) != set(expected):
        raise ValueError(
            f"{source}: tensors {sorted(state)} are not those of a {config.model!r} model "
            f"({sorted(expected)})"
        )
    for name, want in expected.items():
        got = state[name]
        if tuple(got.shape) != tuple(want.shape) or got.dtype != want.dtype:
            raise ValueError(
                f"{source}: {name} is {got.dtype} {tuple(got.shape)}; a hidden_dim={config.hidden_dim}, "
                f"input_dim={input_dim} model needs {want.dtype} {tuple(want.shape)}"
            )
        if not bool(torch.isfinite(got).all()):
            raise ValueError(f"{source}: {name} holds NaN or infinite values")


def _load_saelens(folder: Path) -> Dictionary:
    config, input_dim, state, readout = saelens.read(folder)
    source = folder / saelens.WEIGHTS_FILE
    check_state(state, config, input_dim, source)
    if readout is not None and not bool(torch.isfinite(readout).all()):
        raise ValueError(f"{source}: W_dec or b_dec holds NaN or infinite values")
    return Dictionary(config, input_dim, state, readout=readout)
