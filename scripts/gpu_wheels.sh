#!/usr/bin/env bash
# Wheels for a GPU machine that has no network but its own Python with torch, transformers and the usual
# scientific stack (the lent H200 machines: CPython 3.12, torch 2.11 + CUDA 13, transformers 5). They go
# into .whl/ (git-ignored); scripts/gpu_check.sh installs them into a private folder when it finds them.
#
#   bash scripts/gpu_wheels.sh            # about 13 MiB: what the GPU check needs and that machine lacks
#
# Left out on purpose: imageio-ffmpeg (68 MiB: mp4 export only; GIF export needs nothing more), viser and
# dearpygui (the front-ends; the GPU check runs headless).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
test -x "$PY" || PY=python3
PACKAGES=(diffusers==0.42.1 importlib_metadata==10.2.0 gsplat==1.5.3 plyfile==1.1.5)
mkdir -p .whl
for p in "${PACKAGES[@]}"; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "$p"
done
du -ch .whl/*.whl | tail -1
