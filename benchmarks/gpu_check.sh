#!/usr/bin/env bash
# The CIFAR-10 alpha=0.1 row (fedavg, fedprox, fedpfn, fedpnu; seed 0) on a GPU:
# prints per-round time and accuracy of every cell. On a machine without a CUDA
# GPU it says so and exits 0.
#
#   benchmarks/gpu_check.sh                     # 30 rounds, 4 clients share the GPU
#   ROUNDS=5 CLIENT_GPUS=0.5 benchmarks/gpu_check.sh
#
# Clients get CLIENT_GPUS of a GPU each (Ray's num_gpus; 0.25 = four clients per
# GPU) and device=cuda, so model, batches and mask anchors live on the GPU; the
# server evaluates on the GPU too (device=auto in its process).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
ROUNDS=${ROUNDS:-30}
CLIENT_GPUS=${CLIENT_GPUS:-0.25}
CLIENT_CPUS=${CLIENT_CPUS:-1}
OUT=${OUT:-outputs/gpu_check_r${ROUNDS}_g${CLIENT_GPUS}}

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA GPU is visible to torch on this machine (torch.cuda.is_available() is False); nothing to check"
    exit 0
fi
"$PY" -c "import torch; print('gpu_check: GPU', torch.cuda.get_device_name(0), '| torch', torch.__version__)"

"$PY" -m fedalign sweep experiments/cifar10_dirichlet.yaml --only alpha=0.1 --only seed=0 \
    --set "rounds=${ROUNDS}" --set "client-gpus=${CLIENT_GPUS}" --set "client-cpus=${CLIENT_CPUS}" \
    --set "run-config={device: cuda}" --out "$OUT" >/dev/null

"$PY" - "$OUT" <<'PY'
import json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| cell | device | round | seconds | accuracy |")
print("|---|---|---|---|---|")
for path in sorted(out.glob("cells/*/record.json")):
    rec = json.loads(path.read_text())
    for row in rec["rounds"][1:]:
        print(f"| {rec['cell']['label']} | {rec['config']['device']} | {row['round']} | {row['seconds']:.2f} | {row['accuracy']:.4f} |")
    secs = [r["seconds"] for r in rec["rounds"][2:]] or [rec["rounds"][-1]["seconds"]]
    print(f"| {rec['cell']['label']} | summary | median round {statistics.median(secs):.2f} s | final acc {rec['final_accuracy']:.4f} | cell {rec['timing']['process_seconds']:.0f} s |")
PY
