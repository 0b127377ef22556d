"""``python -m encoder_study.fit``: train a dictionary on your own activations, score it on a
held-out split and write it in SAELens's layout.

    python -m encoder_study.fit --activations acts.npy --kind ours --hidden-dim 1152 \\
        --lambda-lse 3 --epochs 5 --out my_dictionary

(Installed with the package as the command ``encoder-study-fit``, which takes the same flags.)
The array (n samples x d features, a ``.npy`` file of floats) is memory-mapped, so it may be
larger than memory: a float32 file is trained on in place (the engine gathers each minibatch's
rows from the mapping), other float types are converted to float32 in memory first. The last
``--heldout-rows`` rows are held out (activations files are usually in document order, so these
are held-out text); the rest train. After training: FVU (the decoder's reconstruction; for ours
the linear readout fitted on up to ``--readout-samples`` training rows), L0 and the share
of latents that never fire, on the held-out rows; they are printed and written to
``heldout_metrics.json`` beside the SAELens files. A value that is not a finite number is written
as ``null`` with the reason beside it (``fvu_undefined_because``: held-out rows without variance
leave FVU undefined), so the file is strict JSON.

Everything is checked before any work: the flags (each against what it allows, a knob against the
kind), ``--device cuda`` without a GPU, an ``--out`` (or ``--cache``) that is a file, is not
writable or (without ``--overwrite``) already holds a dictionary, then the array and the split.
A refusal is one line ``error: ...`` on stderr naming the flag, the value and what is allowed,
with exit status 2, and nothing is trained or written. Exit status 1: the run diverged (``fit``'s
FloatingPointError, also one ``error:`` line, with the advice to lower ``--lr``); nothing is
written. Exit status 0: the folder is written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..book.storage import write_atomic
from ..evaluation.metrics import apply_linear_readout, firing_frequency, fvu, l0
from ..models.config import run_config_for
from ..models.kinds import Knob, user_kinds
from . import api
from .api import fit

PROG, CONSOLE_SCRIPT = "python -m encoder_study.fit", "encoder-study-fit"
CHUNK_ROWS = 65536  # rows checked (or converted) at a time, so a large file never sits in memory twice
# The engine seeds each epoch's order with seed * 1,000,003 + epoch, which must fit in 64 bits.
SEED_LIMIT = 10**12
DEFAULT_HELDOUT = "a tenth of the rows, at most 65,536"


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Every flag's help ends with its default; a flag without one (required, or a default that
    needs words) says so in its own help."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.required or action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def prog() -> str:
    """The name the user typed: the console script's, else the module's."""
    typed = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return typed if typed.startswith(CONSOLE_SCRIPT) else PROG


def knob_flags() -> dict[str, Knob]:
    """Every knob of the kinds users name, by name (one flag serves the kinds that share a knob):
    read from the kinds' own declarations, so a registered kind brings its flags."""
    return {knob.name: knob for kind in user_kinds().values() for knob in kind.knobs}


def knob_help(name: str) -> str:
    """What a knob means for each kind that takes it, with that kind's default (fit's)."""
    parts = []
    for kind_name, kind in user_kinds().items():
        for knob in kind.knobs:
            if knob.name == name:
                given = "required" if knob.default is None else f"default: {knob.default:g}"
                parts.append(f"{kind_name}: {knob.doc} ({given}{_bounds(knob)})")
    return "; ".join(parts)


def _bounds(knob: Knob) -> str:
    upper = f" <= --{knob.at_most.replace('_', '-')}" if knob.at_most else ""
    return f", {knob.minimum:g} <= {knob.name}{upper}" if upper or knob.type is int else ""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog(),
        description="Train a dictionary on an (n, d) float array and write it in SAELens's layout.",
        epilog="Exit status: 0 written; 2 a flag or the input refused (nothing trained); 1 the run diverged.",
        formatter_class=_Help,
    )
    p.add_argument(
        "--activations",
        required=True,
        type=Path,
        help="a .npy file of floats: n samples x d features (memory-mapped; required)",
    )
    p.add_argument(
        "--kind",
        required=True,
        choices=sorted(user_kinds()),
        help="the kind of dictionary: ours (LSE + InfoMax, no decoder) or an SAE; every kind registered "
        "in this process, each with its own knob flags below (required)",
    )
    p.add_argument("--hidden-dim", required=True, type=int, help="latents of the dictionary, >= 1 (required)")
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="the folder to write: created if needed, refused if it holds a dictionary (required)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a dictionary already in --out")
    for name, knob in knob_flags().items():
        p.add_argument(knob.flag, dest=name, type=knob.type, help=knob_help(name))
    p.add_argument("--epochs", type=int, default=5, help="passes over the training rows, >= 1")
    p.add_argument(
        "--seed",
        type=int,
        default=1,
        help=f"seeds the initialisation, minibatch order and ours' readout rows (|seed| <= {SEED_LIMIT:,})",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=1024,
        help="rows per minibatch, from 1 (ours: 2) to the number of training rows",
    )
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate, a finite number > 0")
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="where to train: auto (CUDA when available), cpu or cuda",
    )
    p.add_argument(
        "--heldout-rows",
        type=int,
        default=None,
        help=f"the last rows, held out for scoring: 2 to n - 2 (default: {DEFAULT_HELDOUT})",
    )
    p.add_argument(
        "--readout-samples",
        type=int,
        default=65536,
        help="ours: training rows its readout is fitted on, >= 1",
    )
    p.add_argument(
        "--hook-name",
        default=None,
        help="where the activations came from, for SAELens's metadata (default: not recorded)",
    )
    p.add_argument(
        "--model-name",
        default=None,
        help="the model they came from, for SAELens's metadata (default: not recorded)",
    )
    p.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="the run cache's folder (default: runs/ under $ENCODER_STUDY_CACHE or ~/.cache/encoder-study)",
    )
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
    flags = knob_flags()
    given = {name: getattr(args, name) for name in flags if getattr(args, name) is not None}
    own = {knob.name for knob in user_kinds()[args.kind].knobs}
    wrong = sorted(set(given) - own)
    if wrong:
        allowed = ", ".join(flags[name].flag for name in sorted(own)) or "none"
        raise ValueError(
            f"--kind {args.kind} does not take {', '.join(flags[n].flag for n in wrong)}; "
            f"its knobs: {allowed}"
        )
    return given


def check_knobs(kind: str, knobs: dict, args: argparse.Namespace) -> None:
    """Each knob of ``kind``: given where it has no default, within its bounds."""
    for knob in user_kinds()[kind].knobs:
        upper = getattr(args, knob.at_most) if knob.at_most else None
        span = f"{knob.minimum:g} to --{knob.at_most.replace('_', '-')} ({upper})" if knob.at_most else ""
        if knob.name not in knobs:
            if knob.default is None:
                what = f"an integer from {span}" if knob.type is int else "a number"
                raise ValueError(f"--kind {kind} needs {knob.flag} ({knob.doc}): {what}")
            continue
        value = knobs[knob.name]
        if knob.at_most and not knob.minimum <= value <= upper:
            upper_flag = "--" + knob.at_most.replace("_", "-")
            raise refuse(
                knob.flag,
                value,
                f"--kind {kind} takes {knob.minimum:g} <= {knob.name} <= {upper_flag} ({upper})",
            )
        if not (math.isfinite(value) and value >= knob.minimum):
            raise refuse(knob.flag, value, f"give a finite number >= {knob.minimum:g}")


def refuse(flag: str, value: object, allowed: str) -> ValueError:
    return ValueError(f"{flag} {value} is not allowed: {allowed}")


def check_settings(args: argparse.Namespace) -> dict:
    """The knobs, once every flag that needs no data is checked against what it allows (and the
    RunConfig built from them, as ``fit`` will build it)."""
    knobs = knobs_from(args)
    h, kind = args.hidden_dim, args.kind
    if h < 1:
        raise refuse("--hidden-dim", h, "give an integer >= 1 (the dictionary's latents)")
    check_knobs(kind, knobs, args)
    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size)):
        if value < 1:
            raise refuse(flag, value, "give an integer >= 1")
    min_batch = user_kinds()[kind].min_batch
    if args.batch_size < min_batch:
        raise refuse(
            "--batch-size",
            args.batch_size,
            f"--kind {kind} takes a variance over each minibatch, which needs at least {min_batch} rows",
        )
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise refuse("--lr", args.lr, "give a finite number > 0")
    if abs(args.seed) > SEED_LIMIT:
        raise refuse("--seed", args.seed, f"give an integer from -{SEED_LIMIT:,} to {SEED_LIMIT:,}")
    if args.readout_samples < 1:
        raise refuse("--readout-samples", args.readout_samples, "give an integer >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise refuse(
            "--device",
            "cuda",
            "torch.cuda.is_available() is False (no CUDA GPU visible, or a torch built without CUDA); "
            "use --device cpu or --device auto",
        )
    # the RunConfig fit will build: anything the checks above missed is refused here, by fit's name
    run_config_for(
        kind,
        knobs,
        hidden_dim=h,
        epochs=args.epochs,
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
        device=args.device,
    )
    return knobs


def check_folder(flag: str, path: Path, overwrite: bool | None = None) -> None:
    """Refuse a folder to write that is a file, cannot be created or written (``os.access`` on it
    or its nearest existing parent: nothing is created here), or, with ``overwrite`` False,
    already holds a dictionary."""
    if path.exists() and not path.is_dir():
        raise refuse(flag, path, "it is a file; give a folder (created if needed)")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise refuse(flag, path, f"{existing} is a file, so the folder cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "it" if existing == path else f"{existing}, where it would be created,"
        raise refuse(flag, path, f"{where} is not writable (permission denied); choose another folder")
    if overwrite is False and path.is_dir():
        present = api.dictionary_files(path)
        if present:
            files = ", ".join(name for names in present.values() for name in names)
            raise refuse(
                flag, path, f"it already holds a dictionary ({files}); give --overwrite or another folder"
            )


def split_rows(args: argparse.Namespace, n: int) -> int:
    """The held-out rows, once they and the batch size are checked against the array's ``n`` rows."""
    if args.heldout_rows is None:
        n_held = min(n // 10, 65536)
        if not 2 <= n_held <= n - 2:
            raise ValueError(
                f"--heldout-rows: the default ({DEFAULT_HELDOUT}: {n_held}) is too few for an array of "
                f"{n} rows; give --heldout-rows from 2 to {n - 2}"
            )
    else:
        n_held = args.heldout_rows
        if not 2 <= n_held <= n - 2:
            raise ValueError(
                f"--heldout-rows {n_held} must be between 2 and {n - 2} (the array has {n} rows)"
            )
    n_train = n - n_held
    if args.batch_size > n_train:
        raise refuse(
            "--batch-size",
            args.batch_size,
            f"it is larger than the {n_train} training rows ({n} rows, {n_held} held out); "
            f"give at most {n_train}",
        )
    min_batch = user_kinds()[args.kind].min_batch
    if 0 < n_train % args.batch_size < min_batch:
        raise refuse(
            "--batch-size",
            args.batch_size,
            f"the {n_train} training rows would leave a last minibatch of {n_train % args.batch_size} "
            f"row(s), and --kind {args.kind} takes a variance over each minibatch (at least "
            f"{min_batch} rows); change --batch-size or --heldout-rows",
        )
    return n_held


@torch.no_grad()
def heldout_scores(dictionary, held: torch.Tensor, readout: torch.Tensor | None) -> dict:
    """FVU, L0 and the share of latents that never fire, on the held-out rows. An FVU that is not
    a finite number is None, with ``fvu_undefined_because`` saying why."""
    A = dictionary.encode(held)
    if readout is not None:
        x_hat = apply_linear_readout(A, readout.double())
    else:
        model = dictionary.model()
        x_hat = torch.cat([model(held[s : s + 8192])[0] for s in range(0, len(held), 8192)])
    scores = {"heldout_rows": len(held), "fvu": fvu(held, x_hat)}
    if not math.isfinite(scores["fvu"]):
        scores["fvu_undefined_because"] = (
            "the held-out rows have zero variance, every one being the same row"
            if bool((held == held[0]).all())
            else f"it came out {scores['fvu']} (the reconstruction is not finite)"
        )
        scores["fvu"] = None
    scores["l0"] = l0(A)
    scores["dead_fraction"] = float((firing_frequency(A) == 0).mean())
    return scores


def strict_json(scores: dict) -> str:
    """``scores`` as strict JSON: a value that is not a finite number becomes null, with a reason."""
    out = {}
    for key, value in scores.items():
        if isinstance(value, float) and not math.isfinite(value):
            out[key], out[f"{key}_undefined_because"] = None, f"it came out {value}"
        else:
            out[key] = value
    return json.dumps(out, indent=1, allow_nan=False)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:  # every check before any work: a refusal is one line, exit status 2
        knobs = check_settings(args)
        check_folder("--out", args.out, overwrite=args.overwrite)
        if args.cache is not None:
            check_folder("--cache", args.cache)
        X = load_activations(args.activations)
        n = len(X)
        n_held = split_rows(args, n)
    except (ValueError, TypeError, OSError) as e:  # OSError covers FileNotFoundError
        print(f"error: {e}", file=sys.stderr)
        return 2
    data = torch.from_numpy(X)
    train, held = data[: n - n_held], data[n - n_held :].clone()
    print(f"{args.activations}: {n:,} x {X.shape[1]}; training on {len(train):,} rows, {n_held:,} held out")
    start = time.perf_counter()
    try:
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
    except FloatingPointError as e:  # the run diverged: not a usage error, so exit status 1
        print(f"error: {e}", file=sys.stderr)
        return 1
    readout_x = None
    decoder_free = not d.kind_class.has_decoder
    if decoder_free:
        # NumPy seeds with non-negative integers only: a negative seed is taken modulo 2**64
        rows = np.random.default_rng(args.seed % 2**64).choice(
            len(train), min(args.readout_samples, len(train)), False
        )
        readout_x = train[torch.from_numpy(np.sort(rows))]
    folder = d.save(
        args.out,
        format="saelens",
        readout_x=readout_x,
        hook_name=args.hook_name,
        model_name=args.model_name,
        overwrite=args.overwrite,
    )
    scores = heldout_scores(d, held, d.readout if decoder_free else None)
    scores["train_seconds"] = time.perf_counter() - start
    write_atomic(folder / "heldout_metrics.json", strict_json(scores))
    shown = (
        f"FVU {scores['fvu']:.4f}"
        if scores["fvu"] is not None
        else f"FVU undefined ({scores['fvu_undefined_because']})"
    )
    print(
        f"held out ({n_held:,} rows): {shown}, L0 {scores['l0']:.1f}, "
        f"never firing {scores['dead_fraction']:.1%}; written {folder} (SAELens layout)"
    )
    return 0
