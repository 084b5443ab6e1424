#!/bin/bash
# CUDA check on a GPU machine (run from the repository root): the device tests (CUDA training equals CPU training),
# then the same small grid trained with --device cpu and --device cuda, compared record by record, with timings,
# then bench/scale.py at 1M x 768 on CUDA.
# Usage: [QUICK=1] bench/cuda_check.sh [OUT_DIR]    (python3 with torch+CUDA and this project's requirements importable)
set -o pipefail
OUT=${1:-/tmp/cuda-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import torch, faiss, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name(0), '| faiss', faiss.__version__, '| numpy', numpy.__version__)"
python3 -m pytest -q -rs tests/test_device.py 2>&1 | tee "$OUT/device_tests.log" | tail -5
METHODS=jpq-ivf,distill-vq,distill-vq-labeled,infonce-pq
for dev in cpu cuda; do
  /usr/bin/time -f "$dev wall %e s" python3 run_benchmark.py ${QUICK:+--quick} --methods $METHODS --device $dev --nprobes 16,256 \
      --out "$OUT/synthetic-$dev" 2>&1 | grep -E "wall|fits|Error|error" | tail -3
done
python3 - "$OUT" <<'PY'
import json, sys
def load(dev):
    recs = [json.loads(l) for l in open(f"{sys.argv[1]}/synthetic-{dev}/results.jsonl")]
    return {(r["method"], r["nprobe"]): r for r in recs if r["status"] == "ok"}
cpu, cuda = load("cpu"), load("cuda")
print(f"{'method':20s} {'nprobe':>6s} {'nDCG@10 cpu':>12s} {'cuda':>8s} {'train s cpu':>12s} {'cuda':>8s}")
for key in sorted(cpu, key=str):
    a, b = cpu[key], cuda.get(key)
    if b is None or a["family"] == "reference":
        continue
    print(f"{key[0]:20s} {key[1]!s:>6s} {a['metrics']['nDCG@10']:12.4f} {b['metrics']['nDCG@10']:8.4f} "
          f"{a['train_seconds']:12.1f} {b['train_seconds']:8.1f}")
PY
# the 1M x 768 case (issue #29) end to end on CUDA (training and the exact teacher on the GPU), every stage timed
python3 bench/scale.py --sizes 1000000 --dim 768 --methods faiss-ivfopq,jpq-ivf,distill-vq --coarse two-level \
    --device cuda --workdir "$OUT/scale" --json "$OUT/scale-1m-cuda.json" 2>&1 | tee "$OUT/scale-1m-cuda.log" | tail -45
