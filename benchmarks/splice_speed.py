"""Notebook 5's splices: seconds per splice and the fraction of the GEMM peak they reach.

    python benchmarks/splice_speed.py [--contexts 64] [--reps 3] [--out benchmarks/splice_speed.csv]

A splice runs the language model with a reconstruction in place of its residual stream after
block 10 and scores CE and KL(clean || spliced) on 64 contexts of 128 tokens in notebook 5 (204
splices per book). Everything here is timed on one batch of 8 contexts and scaled to
``--contexts``. ``llm.language_model.splice_metrics`` runs the
clean forward once per batch of 8 contexts and, per splice, only the 20 later blocks and the head.

Measured side by side in one process, on one batch of 8 contexts of random tokens:
- ``splice_metrics`` as it is, per splice (four splices timed in one call, less a call with none);
- its parts: the later blocks, the head on the 127 predicting positions, and the scoring
  (log-softmax, CE, KL from the clean probabilities computed once per batch);
- the two parts as they were before (the head on all 128 positions, then the logits sliced and
  flattened, a strided copy; KL by ``F.kl_div`` with ``log_target``, which takes exp of the clean
  log-probabilities again for every splice), to show what the present form buys;
- the fp32 GEMM peak (``training_speed.gemm_peak``) and the splice's GEMM flops, so the fraction
  of the peak says how much any further work on the splice could buy.
"""

from __future__ import annotations

import argparse
import csv
import functools
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from training_speed import gemm_peak

from encoder_study.book.record import cpu_model
from encoder_study.llm import language_model as llm

LAYER, CONTEXT, BATCH = 10, 128, 8


def seconds(fn, reps: int) -> float:
    """Median seconds of ``fn()`` over ``reps`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def splice_gflop(model: torch.nn.Module, tokens: int) -> float:
    """GEMM GFLOP of one splice over ``tokens`` positions: the later blocks' weight matrices (2 flops
    per weight per token; attention's T x T products, 2-4% more, are left out) and the head
    on the positions that predict."""
    later = sum(p.numel() for b in llm.blocks(model)[LAYER:] for p in b.parameters() if p.dim() == 2)
    head = model.get_output_embeddings().weight.numel()
    return 2 * (later * tokens + head * tokens * (CONTEXT - 1) / CONTEXT) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", type=int, default=64, help="contexts per splice (notebook 5: 64)")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per measurement (median)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("splice_speed.csv")))
    args = ap.parse_args()
    torch.manual_seed(0)
    model, _ = llm.load_language_model()
    vocab = model.config.vocab_size
    batch = torch.randint(0, vocab, (BATCH, CONTEXT))
    peak = gemm_peak(torch.device("cpu"))
    four = {f"scaled by {c}": functools.partial(torch.mul, other=c) for c in (0.3, 0.5, 0.7, 0.9)}
    with torch.no_grad():
        clean_only = seconds(lambda: llm.splice_metrics(model, batch, LAYER, {}), args.reps)
        with_four = seconds(lambda: llm.splice_metrics(model, batch, LAYER, four), args.reps)
        per_splice = (with_four - clean_only) / len(four)
        hidden = llm.residual_stream(model, batch, LAYER)
        with llm._blocks_after(model, LAYER):
            trunk = model.get_decoder()
            blocks_s = seconds(lambda: trunk(inputs_embeds=hidden, use_cache=False), args.reps)
            out = trunk(inputs_embeds=hidden, use_cache=False).last_hidden_state
        head = model.get_output_embeddings()
        head_s = seconds(lambda: head(out[:, :-1]).flatten(0, 1), args.reps)
        head_before_s = seconds(lambda: head(out)[:, :-1].float().flatten(0, 1), args.reps)
        logits = head(out[:, :-1]).flatten(0, 1)
        clean = torch.log_softmax(1.1 * logits, -1)
        clean_probability = clean.exp()
        target = batch[:, 1:].flatten()

        def score(kl_before: bool):
            spliced = torch.log_softmax(logits, -1)
            ce = F.nll_loss(spliced, target, reduction="none")
            if kl_before:
                return ce, F.kl_div(spliced, clean, reduction="none", log_target=True).sum(-1)
            return ce, (clean_probability * (clean - spliced)).sum(-1)

        score_s = seconds(lambda: score(False), args.reps)
        score_before_s = seconds(lambda: score(True), args.reps)
    peak_after = gemm_peak(torch.device("cpu"))
    batches = args.contexts / BATCH
    gflop = splice_gflop(model, BATCH * CONTEXT)
    rows = [
        ("splice_metrics, per splice", per_splice),
        ("  later blocks", blocks_s),
        ("  head, predicting positions", head_s),
        ("  head, all positions, then slice+flatten (before)", head_before_s),
        ("  scoring, KL from clean probabilities", score_s),
        ("  scoring, KL by F.kl_div (before)", score_before_s),
        ("parts as before (blocks + both before)", blocks_s + head_before_s + score_before_s),
    ]
    peak_mid = statistics.median([peak, peak_after])
    where = f"{cpu_model()}, {torch.get_num_threads()} threads"
    print(f"{where}; fp32 GEMM peak {peak_mid:.0f} GFLOP/s (before {peak:.0f}, after {peak_after:.0f})")
    print(f"one splice over {args.contexts} contexts: {gflop * batches:.0f} GFLOP of GEMMs")
    header = ["what", "seconds_per_batch_of_8", "seconds_per_splice", "of_gemm_peak", "machine"]
    with open(args.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header + ["gemm_peak_gflops", "gemm_peak_before", "gemm_peak_after"])
        for what, s in rows:
            share = f"{gflop / s / peak_mid:.2f}" if what.startswith(("splice", "parts")) else ""
            print(f"{what:52s} {s:6.3f} s/batch  {s * batches:6.1f} s/splice  {share}")
            peaks = [f"{peak_mid:.0f}", f"{peak:.0f}", f"{peak_after:.0f}"]
            w.writerow([what.strip(), f"{s:.4f}", f"{s * batches:.2f}", share, where] + peaks)


if __name__ == "__main__":
    main()
