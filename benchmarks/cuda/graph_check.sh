#!/usr/bin/env bash
# The device check of the engine's CUDA graphs (encoder_study/training/cuda_graphs.py), one short script for a
# lent GPU machine (its own python3 and torch; no network), about 6 minutes on an H200:
#   1. tests_cuda.txt: tests/test_cuda_graphs.py (every kind, graphs against eager CUDA training in
#      float64, a new capture after runs leave the stack; and the CPU bookkeeping tests) and the
#      engine's CUDA-against-CPU test of tests/test_training.py;
#   2. graph_diffs.txt: per kind, how far graph replay lands from eager CUDA training, in float64 and
#      float32 (bit for bit expected: the same kernels in the same order);
#   3. bench.txt, training_speed_graphs.csv: benchmarks/training_speed.py --graphs (eager against
#      graphs: the encoder at 24 and 96 runs, notebook 3's groups, notebook 5's shapes);
#   4. tests_training.txt: the rest of tests/test_training.py, in the time left (it is CPU-bound).
# Needs the MNIST wheel under $ENCODER_STUDY_CACHE/downloads. Writes to $OUT. A part that fails or
# runs out of time leaves its file and the next part runs; summary.txt lists each part's exit code.
set -uo pipefail
export ENCODER_STUDY_CACHE=${ENCODER_STUDY_CACHE:-$PWD/.gpu/cache} PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/graph_check}
BUDGET=${GRAPH_CHECK_SECONDS:-360}  # the whole script's time; part 4 gets what is left
mkdir -p "$OUT"
: >"$OUT/summary.txt"

part() {  # part NAME SECONDS COMMAND...: run it under a timeout, its output tee'd to $OUT/NAME.txt
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  echo "== $name (at most ${limit} s): $*"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
  rc=${PIPESTATUS[0]}
  echo "$name: exit $rc after $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, sys; print(sys.version.split()[0], 'torch', torch.__version__, torch.cuda.get_device_name(0))"
  git rev-parse HEAD 2>/dev/null; git status --short 2>/dev/null | head -20
} 2>&1 | tee "$OUT/machine.txt"
python3 -m encoder_study.book.data 2>&1 | tail -2 | tee "$OUT/data.txt"

part tests_cuda 150 python3 -m pytest -q -p no:cacheprovider -rs tests/test_cuda_graphs.py \
  "tests/test_training.py::test_engine_on_cuda_matches_cpu"

part graph_diffs 60 python3 - <<'PY'
import os, sys, torch
sys.path.insert(0, "tests")
import test_cuda_graphs as t
from encoder_study.models import kinds
from encoder_study.training import cuda_graphs
from encoder_study.training.engine import train_group

print("graph replay against eager CUDA training: 4 runs on 2 seeds, 3 epochs of 301 x 40 -> 16, batch 32;")
print("the largest |difference| of the final tensors relative to the tensor's largest entry")
for dtype in (torch.float64, torch.float32):
    X = t.data("cuda").to(dtype)
    for kind in t.BUILT_IN:
        try:
            res = {}
            for flag in "01":
                os.environ[cuda_graphs.FLAG] = flag
                res[flag] = train_group(t.group(kind, "cuda"), X, progress=False)
            pairs = list(zip(res["0"], res["1"]))
            rel = max(float((a.state[n] - b.state[n]).abs().max()) / max(float(a.state[n].abs().max()), 1e-300)
                      for a, b in pairs for n in a.state)
            bits = all(torch.equal(a.state[n], b.state[n]) for a, b in pairs for n in a.state)
            hist = all(t.rows(a.history) == t.rows(b.history) for a, b in pairs)
            why = cuda_graphs.eager_reason(kinds.KINDS[kind])
            print(f"{str(dtype)[6:]:8s} {kind:20s} relative {rel:.3g}  bit-identical weights {bits}, "
                  f"histories {hist}  {'replayed' if why is None else 'eager: ' + why[:60]}", flush=True)
        except Exception as e:  # noqa: BLE001
            print(f"{str(dtype)[6:]:8s} {kind:20s} FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
print("captures", dict(cuda_graphs.captures), "replays", dict(cuda_graphs.replays))
PY

part bench 170 python3 benchmarks/training_speed.py --device cuda --graphs --epochs 3 --graph-runs 24 96 \
  --out "$OUT/training_speed_graphs.csv"

left=$((BUDGET - SECONDS))
part tests_training $((left > 60 ? left : 60)) python3 -m pytest -q -p no:cacheprovider -rs tests/test_training.py \
  --deselect "tests/test_training.py::test_engine_on_cuda_matches_cpu"
echo "total: $SECONDS s" | tee -a "$OUT/summary.txt"
