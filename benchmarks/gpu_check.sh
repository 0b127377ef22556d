#!/usr/bin/env bash
# The device check, one short script for a lent GPU machine (its own python3 and torch):
#   1. the engine's CUDA path against the CPU (tests/test_training.py, which skips that test
#      without a GPU), with the model and loss tests;
#   2. benchmarks/training_speed.py on the GPU (plain loop vs the engine at 1..48 runs);
#   3. seconds per epoch at the language-model notebook's shapes (576 -> 1152, 234k vectors).
# Needs the MNIST wheel under $ENCODER_STUDY_CACHE/downloads (no network there). Writes to $OUT.
set -uo pipefail
export ENCODER_STUDY_CACHE=${ENCODER_STUDY_CACHE:-$PWD/.gpu/cache} PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, sys; print(sys.version.split()[0], 'torch', torch.__version__, torch.cuda.get_device_name(0))"
} 2>&1 | tee "$OUT/machine.txt"
python3 -m encoder_study.book.data 2>&1 | tail -2
python3 -m pytest -q -p no:cacheprovider tests/test_training.py tests/test_losses.py tests/test_models.py 2>&1 \
  | tail -25 | tee "$OUT/tests.txt"
python3 benchmarks/training_speed.py --device cuda --epochs 4 --runs 1 4 12 24 48 \
  --out "$OUT/training_speed_cuda.csv" 2>&1 | tee "$OUT/bench.txt"
python3 - <<'PY' 2>&1 | tee "$OUT/llm_shapes.txt"
import statistics, torch
from encoder_study.training.engine import train_group
from encoder_study.models.config import RunConfig
g = torch.Generator().manual_seed(0)
X = torch.randn(234_188, 576, generator=g)
print("seconds per epoch, 234,188 x 576 -> 1152, batch 1024 (median of epochs 2-3):")
for kind, extra in (("encoder", {}), ("sae", {"l1": 0.1}), ("topk", {"k": 64})):
    for dev in ("cuda",):
        r = train_group([RunConfig(model=kind, hidden_dim=1152, batch_size=1024, epochs=3, device=dev, **extra)], X,
                        progress=False)[0]
        print(f"  {kind:8s} {dev}: {statistics.median(h['seconds'] for h in r.history[1:]):.2f} s")
PY
