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
``weights.safetensors`` (the model's state, tensor names as in ``model.py``) and ``config.json``
(kind, shapes, knobs, training settings, the final training loss and the package version).
With ``format="saelens"`` the folder is SAELens's instead (``saelens.py``); ``load`` reads both.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .config import LossConfig, RunConfig
from .metrics import features
from .model import build_run_model
from .runs import as_data_tensor, run_experiments
from .storage import write_atomic
from .validation import check_choice, check_positive

# The names a user gives a model kind, and the engine's names for them (kinds.KINDS).
KINDS = {"ours": "encoder", "sae": "sae", "topk": "topk", "batchtopk": "batchtopk"}
# Each kind's knobs (keyword: meaning). Anything else given to fit for that kind is an error.
KNOBS = {
    "ours": {
        "lambda_lse": "weight of the log-sum-exp term",
        "lambda_var": "weight of the variance term",
        "lambda_tc": "weight of the decorrelation term",
    },
    "sae": {"l1": "weight of the L1 sparsity penalty"},
    "topk": {"k": "active latents per sample"},
    "batchtopk": {"k": "active latents per sample, on average over a minibatch"},
}
CONFIG_FILE, WEIGHTS_FILE = "config.json", "weights.safetensors"
FORMAT = "encoder-study-dictionary/1"
SAVE_FORMATS = ("encoder-study", "saelens")


@dataclass
class Dictionary:
    """A trained dictionary: its run's config, weights and training history."""

    config: RunConfig
    input_dim: int
    state: dict[str, torch.Tensor]
    history: list[dict] = field(default_factory=list)
    train_seconds: float = float("nan")
    readout: torch.Tensor | None = None
    """Ours only, once fitted: the least-squares affine readout (K + 1, D), bias last, that stands
    in for a decoder (``saelens.readout_of``); kept so a dictionary read from SAELens's layout
    writes the same folder again."""

    @property
    def kind(self) -> str:
        return next(name for name, engine_kind in KINDS.items() if engine_kind == self.config.model)

    @property
    def hidden_dim(self) -> int:
        return self.config.hidden_dim

    def model(self) -> torch.nn.Module:
        """The trained model (``model.py``), in eval mode."""
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
    ) -> Path:
        """Write the folder ``path`` (created if needed).

        format "encoder-study": weights in safetensors, config in JSON (``load`` reads it back).
        format "saelens": SAELens's layout (``saelens.py``). Ours has no decoder, so it needs
        ``readout_x`` (samples, in the units it was trained on) to fit the linear readout that
        becomes W_dec and b_dec, unless it already has one. ``input_scale``: s if the dictionary
        was trained on inputs divided by s; the folder is then written for raw inputs.
        ``hook_name`` and ``model_name`` go into SAELens's metadata (where the inputs came from).
        """
        from safetensors.torch import save_file

        check_choice("format", format, SAVE_FORMATS)
        check_positive("input_scale", input_scale)
        folder = _writable_folder(path)
        if format == "saelens":
            from . import saelens

            readout, samples = self.readout, None
            if self.kind == "ours" and readout_x is not None:
                x = as_data_tensor("readout_x", readout_x)
                if x.shape[1] != self.input_dim:
                    raise ValueError(
                        f"readout_x has {x.shape[1]} features; this dictionary takes {self.input_dim}"
                    )
                readout, samples = saelens.readout_of(self, x), len(x)
                self.readout = readout
            elif self.kind == "ours" and readout is None:
                raise ValueError(
                    "readout_x=None: ours has no decoder; give samples (readout_x=) to fit the linear "
                    "readout that SAELens's W_dec and b_dec hold"
                )
            return saelens.write(self, folder, readout, samples, input_scale, hook_name, model_name)
        final_loss = self.history[-1]["total"] if self.history else None
        config = {
            "format": FORMAT,
            "kind": self.kind,
            "input_dim": self.input_dim,
            "hidden_dim": self.hidden_dim,
            "knobs": knobs_of(self.config),
            "training": training_of(self.config),
            "final_training_loss": final_loss,
            "train_seconds": self.train_seconds if math.isfinite(self.train_seconds) else None,
            "package": "encoder-study",
            "package_version": __version__,
            "tensors": {name: list(t.shape) for name, t in self.state.items()},
        }
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state.items()}
        write_atomic(
            folder / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp), metadata={"format": FORMAT})
        )
        write_atomic(folder / CONFIG_FILE, lambda tmp: tmp.write_text(json.dumps(config, indent=1)))
        return folder


def _writable_folder(path: object) -> Path:
    folder = _as_path("path", path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OSError(f"path={str(path)!r} is not a writable folder: {e.strerror or e}") from e
    return folder


def _as_path(name: str, path: object) -> Path:
    if not isinstance(path, (str, os.PathLike)) or str(path) == "":
        raise TypeError(f"{name}={path!r} must be a folder path (a non-empty str or pathlib.Path)")
    return Path(path)


def knobs_of(config: RunConfig) -> dict:
    """The sparsity knobs of a run, by the names ``fit`` takes."""
    if config.model == "encoder":
        return {"lambda_lse": config.loss.lse, "lambda_var": config.loss.var, "lambda_tc": config.loss.tc}
    if config.model == "sae":
        return {"l1": config.l1}
    return {"k": config.k}


def training_of(config: RunConfig) -> dict:
    return {
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "optimizer": config.optimizer,
        "lr": config.lr,
        "seed": config.seed,
        "activation": config.activation,
    }


def _run_config(
    kind: str,
    hidden_dim: int,
    epochs: int,
    seed: int,
    batch_size: int,
    lr: float,
    optimizer: str,
    device: str,
    knobs: dict,
) -> RunConfig:
    check_choice("kind", kind, KINDS)
    unknown = sorted(set(knobs) - set(KNOBS[kind]))
    if unknown:
        allowed = ", ".join(f"{k} ({v})" for k, v in KNOBS[kind].items())
        raise TypeError(f"kind={kind!r} does not take {', '.join(unknown)}; its knobs are: {allowed}")
    common = {
        "hidden_dim": hidden_dim,
        "epochs": epochs,
        "seed": seed,
        "batch_size": batch_size,
        "lr": lr,
        "optimizer": optimizer,
        "device": device,
    }
    if kind == "ours":
        loss = LossConfig(
            lse=knobs.get("lambda_lse", 1.0),
            var=knobs.get("lambda_var", 1.0),
            tc=knobs.get("lambda_tc", 1.0),
            wr=0.0,
        )
        return RunConfig(model="encoder", loss=loss, **common)
    if kind == "sae":
        return RunConfig(model="sae", l1=knobs.get("l1", 0.01), **common)
    if "k" not in knobs:
        raise TypeError(f"kind={kind!r} needs k= (active latents per sample, 1 <= k <= hidden_dim)")
    return RunConfig(model=KINDS[kind], k=knobs["k"], **common)


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
    "sae" (MSE + L1; knob l1, default 0.01), "topk" (TopK SAE; knob k, required) or "batchtopk"
    (BatchTopK SAE; knob k, required; it encodes with its learned threshold). The data are
    used as given (float32; centre or scale them first if your features need it). X_test, if
    given, is where the engine measures dead units, L0 and redundancy during training (history).
    cache: the run cache's folder (default under ``~/.cache/encoder-study``).
    """
    x = as_data_tensor("X", X).to(torch.float32)
    xt = None if X_test is None else as_data_tensor("X_test", X_test).to(torch.float32)
    config = _run_config(kind, hidden_dim, epochs, seed, batch_size, lr, optimizer, device, knobs)
    if config.batch_size > len(x):
        raise ValueError(f"batch_size={batch_size} is larger than X's {len(x)} samples")
    (result,) = run_experiments([config], x, xt, cache=cache, progress=progress)
    if result.diverged_epoch is not None:
        raise FloatingPointError(
            f"training diverged at epoch {result.diverged_epoch} (loss not finite); "
            f"try a smaller lr (lr={lr})"
        )
    return Dictionary(config, x.shape[1], result.state, result.history, result.seconds)


def load(path: str | os.PathLike) -> Dictionary:
    """A dictionary saved by ``Dictionary.save``, in either format."""
    from safetensors.torch import load_file

    from . import saelens

    folder = _as_path("path", path)
    if not (folder / CONFIG_FILE).exists() and saelens.is_saelens_folder(folder):
        return _load_saelens(folder)
    cfg_file, weights_file = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for f in (cfg_file, weights_file):
        if not f.is_file():
            raise FileNotFoundError(f"path={str(path)!r} is not a saved dictionary: {f.name} is missing")
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_file}: not valid JSON ({e})") from e
    if cfg.get("format") != FORMAT:
        raise ValueError(f"{cfg_file}: format {cfg.get('format')!r} is not {FORMAT!r}")
    config = _saved_config(cfg["kind"], cfg["hidden_dim"], cfg["knobs"], cfg["training"])
    state = load_file(str(weights_file))
    loss = cfg.get("final_training_loss")
    history = [{"epoch": cfg["training"]["epochs"], "total": loss}] if loss is not None else []
    seconds = cfg.get("train_seconds")
    return Dictionary(
        config,
        int(cfg["input_dim"]),
        state,
        history,
        float(seconds) if seconds is not None and math.isfinite(seconds) else float("nan"),
    )


def _load_saelens(folder: Path) -> Dictionary:
    from . import saelens

    meta, state, readout = saelens.read(folder)
    hidden_dim, input_dim = state["linear.weight" if meta["kind"] == "ours" else "encoder.weight"].shape
    config = _saved_config(meta["kind"], hidden_dim, meta["knobs"], meta["training"])
    return Dictionary(config, input_dim, state, readout=readout)


def _saved_config(kind: str, hidden_dim: int, knobs: dict, training: dict) -> RunConfig:
    """The RunConfig a saved dictionary records (kind, knobs and ``training_of``'s fields)."""
    t = training
    return _run_config(
        kind, hidden_dim, t["epochs"], t["seed"], t["batch_size"], t["lr"], t["optimizer"], "auto", knobs
    )
