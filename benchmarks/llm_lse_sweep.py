"""Exploration, not part of the record: with an overcomplete dictionary (1152 units on SmolLM2's
576-wide residual stream), does a larger LSE weight, longer training or the paper's batch size
make the decoder-free encoder sparse? Notebook 5 (5 epochs, batch 1024, lambda_lse <= 10) found
it dense; this asks what it would take.

    python benchmarks/llm_lse_sweep.py SUBSET.npz [--device cuda] [--out results.csv]

SUBSET.npz holds float16 `train` and `test` vectors from notebook 5's activation cache (block 10)
and the notebook's `scale`. Prints and writes L0, dead units, readout FVU and firing per run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch

from encoder_study.evaluation.metrics import features, firing_frequency, l0, readout_fvu
from encoder_study.models.config import LossConfig, RunConfig
from encoder_study.models.kinds import KINDS
from encoder_study.training.engine import train_many


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("subset")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--epochs", type=int, nargs="*", default=[30, 120])
    ap.add_argument("--hidden", type=int, default=1152)
    ap.add_argument("--out", default="llm_lse_sweep.csv")
    args = ap.parse_args()
    data = np.load(args.subset)
    scale = float(data["scale"])
    X = torch.from_numpy(data["train"].astype(np.float32)) / scale
    Xt = torch.from_numpy(data["test"].astype(np.float32)) / scale
    rows = []
    for epochs in args.epochs:
        base = RunConfig(
            hidden_dim=args.hidden, batch_size=1024, epochs=epochs, eval_every=epochs, device=args.device
        )
        configs = [base.with_(loss=LossConfig(lse=w)) for w in (0.125, 1.0, 10.0, 30.0, 100.0, 300.0)]
        configs += [base.with_(batch_size=128, epochs=max(1, epochs // 8))]  # the paper's batch, same steps
        configs += [base.with_(model="topk", k=k) for k in (32, 128)]
        start = time.perf_counter()
        results = train_many(configs, X, Xt, progress=False)
        seconds = time.perf_counter() - start
        for c, r in zip(configs, results):
            model = r.model()
            A, A_fit = features(model, Xt), features(model, X[:20000])
            rows.append(
                {
                    "model": c.model,
                    "hidden_dim": c.hidden_dim,
                    "batch_size": c.batch_size,
                    "epochs": c.epochs,
                    "steps": c.epochs * -(-len(X) // c.batch_size),
                    "lambda_lse": c.loss.lse if "lse" in KINDS[c.model].terms else np.nan,
                    "k": c.k or np.nan,
                    "l0": l0(A),
                    "active_fraction": l0(A) / c.hidden_dim,
                    "never_active": int((firing_frequency(A) == 0).sum()),
                    "readout_fvu": readout_fvu(A_fit, X[:20000], A, Xt),
                    "diverged": r.diverged_epoch is not None,
                    "group_seconds": seconds,
                }
            )
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
    df = pd.DataFrame(rows)
    df.to_csv(args.out, index=False)
    print(df.round(4).to_string())


if __name__ == "__main__":
    main()
