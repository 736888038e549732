#!/usr/bin/env bash
# One prepared pass over every GPU code path, for a session that has a GPU machine (the device
# tool). It prints figures, runs every section even when one fails, and exits non-zero if any did.
#
# Before (here, with network, once): bash benchmarks/gpu_wheels.sh    # .gpu/wheels, ~26 MB
# Then, as ONE device call (about 8 min on an H100; timeout_s 600):
#   run(command="bash benchmarks/gpu_check.sh 2>&1 | tee $OUT/gpu_check.log", carry=[".gpu"])
# GPU_CHECK_SECTIONS="throughput metrics" runs only those sections (names below);
# GPU_CHECK_IMAGENET=1 adds the 1,281,167 x 2048 scaling run (several more minutes).
# GPU_CHECK_COMPILE=1 adds a throughput run with torch.compile (about a minute more).
#
# Works without installing clusterprobe (PYTHONPATH); on a machine with a full environment
# (faiss-gpu included) it uses that instead. CPU-only machines: nothing here is needed for the tests.
set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
out=${OUT:-$(mktemp -d)}
work=$(mktemp -d)
python=${PYTHON:-python3}
export DEV=${GPU_CHECK_DEVICE:-cuda}  # cpu: a smoke test of this script on a machine without a GPU
sections=${GPU_CHECK_SECTIONS:-"metrics extract train throughput step scaling report gputests"}
failed=()

if [ -d .gpu/wheels ] && ! $python -c "import faiss, kornia, umap" 2>/dev/null; then
  $python -m pip install --quiet --no-deps --no-index .gpu/wheels/*.whl || echo "wheel install failed"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
clusterprobe() { $python -m cli.main "$@"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$python -c "import torch, faiss; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| faiss', faiss.__version__, 'GPUs for faiss:', faiss.get_num_gpus() if hasattr(faiss, 'get_num_gpus') else 0)"

run_section() {  # name, then the command
  local name=$1; shift
  case " $sections " in *" $name "*) ;; *) return 0 ;; esac
  echo; echo "== $name"
  local start=$SECONDS
  if "$@"; then echo "-- $name ok in $((SECONDS - start)) s"; else echo "-- $name FAILED after $((SECONDS - start)) s"; failed+=("$name"); fi
}

metrics() {  # k-means, kNN and the silhouettes on the GPU (torch or FAISS GPU) against the CPU
  $python - <<'PY' || return 1
import os, time
import numpy as np
import torch  # noqa: F401  (before faiss)
from clusterprobe.metrics import kmeans, knn_accuracy, nmi, silhouette_score, linear_probe
from clusterprobe.metrics._device import search_backend
print("backend on the GPU:", search_backend(os.environ["DEV"]))
rng = np.random.default_rng(0)
centers = rng.standard_normal((10, 512)).astype("float32") * 0.12  # overlapping: kNN well below 1
y = rng.integers(0, 10, 50000)
X = (centers[y] + rng.standard_normal((50000, 512))).astype("float32")
results = {}
import os
gpu = os.environ["DEV"]
for device in (gpu, "cpu"):
    t = time.perf_counter(); km = kmeans(X, 10, seeds=3, device=device); t = time.perf_counter() - t
    print(f"{device}: k-means x3 {t:.2f}s backend={km.backend} gpu={km.gpu} NMI {np.mean([nmi(y, l) for l in km.labels]):.4f}")
    t = time.perf_counter(); acc = knn_accuracy(X[:40000], y[:40000], X[40000:], y[40000:], device=device); t = time.perf_counter() - t
    t2 = time.perf_counter(); sil = silhouette_score(X[:20000], y[:20000], metric='euclidean', device=device); t2 = time.perf_counter() - t2
    t3 = time.perf_counter(); probe = linear_probe(X[:40000], y[:40000], X[40000:], y[40000:], device=device); t3 = time.perf_counter() - t3
    print(f"{device}: kNN top1 {acc.top1:.4f} ({t:.2f}s); euclidean silhouette {sil:.6f} ({t2:.2f}s); linear probe {probe.top1:.4f} ({t3:.2f}s)")
    results[device] = (acc.top1, sil, probe.top1)
assert results[gpu][0] == results["cpu"][0], "kNN differs between the GPU and the CPU"
assert abs(results[gpu][1] - results["cpu"][1]) < 1e-4, "silhouette differs between the GPU and the CPU"
PY
  # k = 1000: where the torch backend's time goes (k-means++ seeding vs Lloyd) against FAISS on the CPU
  $python benchmarks/kmeans_backends.py --device $DEV
}

extract() {  # extraction on cuda equals the CPU bank, float32 and float16
  $python - <<PY
import numpy as np, torch
from clusterprobe import build_model
from clusterprobe.data import load_dataset
from clusterprobe.extract import extract_features
torch.manual_seed(0)
model = build_model("resnet18", width=16, in_channels=1, projector_dims=(256, 256, 64))
data = load_dataset("digits", split="test")
gpu = extract_features(model, data, "$work/bank_gpu", device="$DEV", progress=False)
cpu = extract_features(model, data, "$work/bank_cpu", device="cpu", progress=False)
half = extract_features(model, data, "$work/bank_f16", device="$DEV", progress=False, dtype="float16")
for layer in gpu.layers:
    print(layer, "max |gpu - cpu| =", float(np.abs(gpu[layer] - cpu[layer]).max()),
          "| max rel. float16 rounding", float(np.abs(half[layer].astype(np.float32) - gpu[layer]).max() / np.abs(gpu[layer]).max()))
PY
}

train() {  # one epoch of each method on cuda with AMP (bf16; Sinkhorn kept in float32)
  local method
  for method in resa byol simclr vicreg swav barlow_twins; do
    clusterprobe train --method $method --dataset digits --backbone resnet18 --width 16 \
      --projector-dims 256,256,64 --epochs 1 --batch-size 128 $( [ $DEV = cuda ] && echo --amp ) --device $DEV \
      --out "$work/runs/$method" --no-flip $( [ $method = byol ] && echo --predictor-dims 256,64 ) \
      >"$work/train_$method.log" 2>&1 || { tail -n 20 "$work/train_$method.log"; return 1; }
    echo "$method: $(tail -n 1 "$work/runs/$method/epochs.csv")"
  done
}

throughput() {  # the issue's target: ResNet-18 CIFAR ReSA at batch 256, >= 10,000 images/s, loop/step >= 0.9
  $python benchmarks/synthetic_cifar.py "$work/cifar_like" --train 50000 --test 1000 || return 1
  $python benchmarks/train_throughput.py --data-root "$work/cifar_like" --views-on device --device $DEV \
    --width 64 --batch 256 --steps 50 --warmup 5 || return 1
  $python benchmarks/train_throughput.py --data-root "$work/cifar_like" --views-on device --device $DEV \
    --width 64 --batch 256 --steps 50 --warmup 5 --amp || return 1
  # the loss read back every 50 steps instead of every step (no host sync between steps)
  $python benchmarks/train_throughput.py --data-root "$work/cifar_like" --views-on device --device $DEV \
    --width 64 --batch 256 --steps 50 --warmup 5 --amp --log-every 50 || return 1
  $python benchmarks/train_throughput.py --data-root "$work/cifar_like" --views-on loader --device $DEV \
    --width 64 --batch 256 --steps 30 --warmup 5 --num-workers 12 || return 1
  if [ "${GPU_CHECK_COMPILE:-0}" = 1 ]; then  # torch.compile of the encoders: about a minute more
    $python benchmarks/train_throughput.py --data-root "$work/cifar_like" --views-on device --device $DEV \
      --width 64 --batch 256 --steps 50 --warmup 15 --amp --compile
  fi
}

step() {  # the step alone for several methods, fp32 and AMP; the LARS optimiser step
  $python benchmarks/train_step.py --batch 256 --width 64 --device $DEV --methods resa,byol,simclr || return 1
  $python benchmarks/train_step.py --batch 256 --width 64 --device $DEV --methods resa,byol --amp || return 1
  if [ -f benchmarks/optim_step.py ]; then $python benchmarks/optim_step.py --device $DEV; fi
  $python benchmarks/extract_throughput.py --width 64 --n 8192 --batch-size 256 --device $DEV
}

scaling() {  # time and memory per metric on the GPU, float16 banks, d 2048, k 1000
  $python benchmarks/scaling.py --sizes 50000,200000 --dtype float16 --device $DEV --timeout 300 \
    --metrics kmeans,silhouette,linear,knn,silhouette_euclidean || return 1
  if [ "${GPU_CHECK_IMAGENET:-0}" = 1 ]; then
    $python benchmarks/scaling.py --sizes 1281167 --dtype float16 --device $DEV --timeout 600 \
      --metrics kmeans,silhouette,linear,knn
  fi
}

report() {
  clusterprobe report "$work/runs" --device $DEV --no-umap >/dev/null && echo "report ok"
}

gputests() {  # the suite's tests that skip without a CUDA GPU (the image has pytest and pyyaml)
  [ "$DEV" = cuda ] || { echo "(CPU smoke test: these tests skip without a GPU)"; return 0; }
  $python -m pytest -q -rs -p no:cacheprovider \
    "tests/test_train_loop.py::test_steps_between_log_steps_never_wait_for_the_gpu" \
    tests/test_metrics_probes.py::test_gpu_results_equal_cpu_results
}

run_section metrics metrics
run_section extract extract
run_section train train
run_section throughput throughput
run_section step step
run_section scaling scaling
run_section report report
run_section gputests gputests
echo
if [ ${#failed[@]} -gt 0 ]; then echo "FAILED sections: ${failed[*]}"; exit 1; fi
echo "all sections passed"
