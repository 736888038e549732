#!/usr/bin/env bash
# Download, on a machine with network access, the wheels that the lent GPU machines lack, into
# .gpu/wheels/ (git-ignored), so that a session with a GPU can carry them there:
#
#   bash benchmarks/gpu_wheels.sh                     # here, once (about 26 MB)
#   device run: carry [".gpu"], command "bash benchmarks/gpu_check.sh"
#
# The GPU image (see /work/.library/device/KINDS.md) has Python 3.12 with torch, torchvision,
# timm, scikit-learn, pandas, matplotlib, seaborn, typer, rich, numba and pyarrow, and no
# network. It lacks FAISS, kornia and UMAP. PyPI's faiss-gpu builds need CUDA 12 runtime wheels
# of several hundred MB (the image has CUDA 13), so the check carries faiss-cpu: k-means and kNN
# then run on the GPU through the torch backend (clusterprobe/metrics/_torch_search.py).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${GPU_PYTHON_VERSION:-3.12}
mkdir -p .gpu/wheels
pip download --quiet --no-deps --dest .gpu/wheels --python-version "$python" --only-binary=:all: \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  "faiss-cpu>=1.8" "kornia>=0.7" kornia-rs "umap-learn>=0.5.5" pynndescent
du -sh .gpu/wheels && ls .gpu/wheels
