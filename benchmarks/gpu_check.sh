#!/usr/bin/env bash
# One prepared pass over every GPU code path, for a session that has a GPU machine (the device
# tool): run it from the repository root with the project installed. It prints figures and fails
# on the first broken path. CPU-only machines: nothing here is needed for the tests.
#
#   bash benchmarks/gpu_check.sh 2>&1 | tee gpu_check.log
set -euo pipefail
export PYTHONUNBUFFERED=1
out=${OUT:-$(mktemp -d)}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

echo "== 1. FAISS on the GPU (k-means, kNN) vs the CPU, and the metrics suite on cuda"
python - <<'PY'
import numpy as np, faiss, time
from clusterprobe.metrics import kmeans, knn_accuracy, nmi, silhouette_score
print("faiss GPUs:", faiss.get_num_gpus())
rng = np.random.default_rng(0)
centers = rng.standard_normal((10, 512)).astype("float32") * 3
y = rng.integers(0, 10, 50000)
X = (centers[y] + rng.standard_normal((50000, 512))).astype("float32")
for device in ("cuda", "cpu"):
    t = time.perf_counter(); result = kmeans(X, 10, seeds=3, device=device); t = time.perf_counter() - t
    print(f"{device}: k-means x3 {t:.2f}s gpu={result.gpu} NMI {np.mean([nmi(y, l) for l in result.labels]):.4f}")
    t = time.perf_counter(); acc = knn_accuracy(X[:40000], y[:40000], X[40000:], y[40000:], device=device); t = time.perf_counter() - t
    print(f"{device}: kNN top1 {acc.top1:.4f} {t:.2f}s; euclidean silhouette "
          f"{silhouette_score(X[:20000], y[:20000], metric='euclidean', device=device):.6f}")
PY

echo "== 2. Extraction on cuda equals the CPU bank"
python - <<PY
import numpy as np, torch
from clusterprobe import build_model
from clusterprobe.data import load_dataset
from clusterprobe.extract import extract_features
torch.manual_seed(0)
model = build_model("resnet18", width=16, in_channels=1, projector_dims=(256, 256, 64))
data = load_dataset("digits", split="test")
gpu = extract_features(model, data, "$out/bank_gpu", device="cuda", progress=False)
cpu = extract_features(model, data, "$out/bank_cpu", device="cpu", progress=False)
for layer in gpu.layers:
    print(layer, "max |gpu - cpu| =", float(np.abs(gpu[layer] - cpu[layer]).max()))
PY

echo "== 3. Training on cuda with AMP (bf16; Sinkhorn kept in float32), one epoch of each method"
for method in resa byol simclr vicreg swav barlow_twins; do
  clusterprobe train --method $method --dataset digits --backbone resnet18 --width 16 \
    --projector-dims 256,256,64 --epochs 1 --batch-size 128 --amp --device cuda \
    --out "$out/runs/$method" --no-flip $( [ $method = byol ] && echo --predictor-dims 256,64 ) >/dev/null
  tail -n 1 "$out/runs/$method/epochs.csv"
done

echo "== 4. ResNet-18 (width 64) images/s at batch 256 on 32x32, fp32 and AMP"
python benchmarks/train_step.py --batch 256 --width 64 --device cuda --methods resa,byol,simclr
python benchmarks/train_step.py --batch 256 --width 64 --device cuda --methods resa,byol --amp

echo "== 5. Extraction throughput on cuda"
python benchmarks/extract_throughput.py --width 64 --n 8192 --batch-size 256 --device cuda

echo "== 6. Report over the GPU runs"
clusterprobe report "$out/runs" --device cuda --no-umap >/dev/null && echo "report ok: $out/runs/report/index.html"
