"""``python -m encoder_study.fit``: train a dictionary on your own activations, score it on a
held-out split and write it in SAELens's layout.

    python -m encoder_study.fit --activations acts.npy --kind ours --hidden-dim 1152 \\
        --lambda-lse 3 --epochs 5 --out my_dictionary

The array (n samples x d features, a ``.npy`` file of floats) is memory-mapped, so it may be
larger than memory: a float32 file is trained on in place (the engine gathers each minibatch's
rows from the mapping), other float types are converted to float32 in memory first. The last
``--heldout-rows`` rows are held out (activations files are usually in document order, so these
are held-out text); the rest train. After training: FVU (the decoder's reconstruction; for ours
the least-squares readout fitted on up to ``--readout-samples`` training rows), L0 and the share
of latents that never fire, on the held-out rows; they are printed and written to
``heldout_metrics.json`` beside the SAELens files.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .api import KINDS, KNOBS, fit
from .metrics import apply_linear_readout, firing_frequency, fvu, l0
from .storage import write_atomic

CHUNK_ROWS = 65536  # rows checked (or converted) at a time, so a large file never sits in memory twice
FLAGS = {
    "lambda_lse": "--lambda-lse",
    "lambda_var": "--lambda-var",
    "lambda_tc": "--lambda-tc",
    "l1": "--l1",
    "k": "--k",
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m encoder_study.fit",
        description="Train a dictionary on an (n, d) float array and write it in SAELens's layout.",
    )
    p.add_argument("--activations", required=True, type=Path, help="a .npy file: n samples x d features")
    p.add_argument(
        "--kind", required=True, choices=sorted(KINDS), help="ours (LSE + InfoMax), sae (L1), topk, batchtopk"
    )
    p.add_argument("--hidden-dim", required=True, type=int, help="latents of the dictionary")
    p.add_argument("--out", required=True, type=Path, help="the folder to write (created if needed)")
    for knob, flag in FLAGS.items():
        meanings = "; ".join(f"{kind}: {knobs[knob]}" for kind, knobs in KNOBS.items() if knob in knobs)
        p.add_argument(flag, type=int if knob == "k" else float, help=meanings)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--heldout-rows", type=int, default=None, help="default: a tenth of the rows, at most 65,536"
    )
    p.add_argument(
        "--readout-samples", type=int, default=65536, help="ours: training rows its readout is fitted on"
    )
    p.add_argument("--hook-name", default=None, help="where the activations came from (SAELens metadata)")
    p.add_argument("--model-name", default=None, help="the model they came from (SAELens metadata)")
    p.add_argument("--cache", type=Path, default=None, help="the run cache's folder")
    return p


def load_activations(path: Path) -> np.ndarray:
    """The array in ``path``, memory-mapped (copy-on-write, so torch may wrap it), checked in
    chunks: 2-D, floating point, finite, at least 4 rows."""
    if not path.is_file():
        raise FileNotFoundError(f"--activations {path}: no such file")
    try:
        X = np.load(path, mmap_mode="c")
    except (ValueError, OSError) as e:
        raise ValueError(f"--activations {path}: not a .npy array file ({e})") from e
    if X.ndim != 2 or X.shape[0] < 4 or X.shape[1] < 1:
        raise ValueError(
            f"--activations {path}: expected a 2-D (n samples, d features) array, got shape {X.shape}"
        )
    if not np.issubdtype(X.dtype, np.floating):
        raise ValueError(f"--activations {path}: dtype {X.dtype} is not floating point; give floats")
    for start in range(0, len(X), CHUNK_ROWS):
        finite = np.isfinite(X[start : start + CHUNK_ROWS]).all(1)
        if not finite.all():
            raise ValueError(
                f"--activations {path}: row {start + int(np.argmin(finite))} holds NaN or infinite values"
            )
    if X.dtype != np.float32:
        X = np.concatenate([X[s : s + CHUNK_ROWS].astype(np.float32) for s in range(0, len(X), CHUNK_ROWS)])
    return X


def knobs_from(args: argparse.Namespace) -> dict:
    """The knob flags given, refused by name where the kind does not take them."""
    given = {knob: getattr(args, knob) for knob in FLAGS if getattr(args, knob) is not None}
    wrong = sorted(set(given) - set(KNOBS[args.kind]))
    if wrong:
        allowed = ", ".join(FLAGS[k] for k in KNOBS[args.kind])
        raise ValueError(
            f"--kind {args.kind} does not take {', '.join(FLAGS[k] for k in wrong)}; its knobs: {allowed}"
        )
    return given


@torch.no_grad()
def heldout_scores(dictionary, held: torch.Tensor, readout: torch.Tensor | None) -> dict:
    """FVU, L0 and the share of latents that never fire, on the held-out rows."""
    A = dictionary.encode(held)
    if readout is not None:
        x_hat = apply_linear_readout(A, readout.double())
    else:
        model = dictionary.model()
        x_hat = torch.cat([model(held[s : s + 8192])[0] for s in range(0, len(held), 8192)])
    return {
        "heldout_rows": len(held),
        "fvu": fvu(held, x_hat),
        "l0": l0(A),
        "dead_fraction": float((firing_frequency(A) == 0).mean()),
    }


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        knobs = knobs_from(args)
        X = load_activations(args.activations)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = len(X)
    n_held = args.heldout_rows if args.heldout_rows is not None else min(n // 10, 65536)
    if not 2 <= n_held <= n - 2:
        print(
            f"error: --heldout-rows {n_held} must be between 2 and {n - 2} (the array has {n} rows)",
            file=sys.stderr,
        )
        return 2
    data = torch.from_numpy(X)
    train, held = data[: n - n_held], data[n - n_held :].clone()
    print(f"{args.activations}: {n:,} x {X.shape[1]}; training on {len(train):,} rows, {n_held:,} held out")
    start = time.perf_counter()
    d = fit(
        train,
        kind=args.kind,
        hidden_dim=args.hidden_dim,
        epochs=args.epochs,
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
        device=args.device,
        X_test=held,
        cache=args.cache,
        **knobs,
    )
    readout_x = None
    if args.kind == "ours":
        rows = np.sort(
            np.random.default_rng(args.seed).choice(len(train), min(args.readout_samples, len(train)), False)
        )
        readout_x = train[torch.from_numpy(rows)]
    folder = d.save(
        args.out, format="saelens", readout_x=readout_x, hook_name=args.hook_name, model_name=args.model_name
    )
    scores = heldout_scores(d, held, d.readout if args.kind == "ours" else None)
    scores["train_seconds"] = time.perf_counter() - start
    write_atomic(folder / "heldout_metrics.json", lambda tmp: tmp.write_text(json.dumps(scores, indent=1)))
    print(
        f"held out ({n_held:,} rows): FVU {scores['fvu']:.4f}, L0 {scores['l0']:.1f}, "
        f"never firing {scores['dead_fraction']:.1%}; written {folder} (SAELens layout)"
    )
    return 0
