#!/usr/bin/env bash
# The whole GPU check in one go, for a machine with a short time budget and no network (issue 16):
# gsplat's first CUDA build (timed), the GPU tests, the precision table, headless sessions on gsplat
# (procedural, and a random-weight SD 2.1-base), and the real-scale stage and lever tables. Every log and
# table lands in OUT_DIR; docs/BENCHMARKS.md is updated in place and copied there.
#
#   bash scripts/gpu_check.sh OUT_DIR [BUDGET_S]     # BUDGET_S: the whole run, default 530 (under 9 min)
#
# Each step runs under a timeout drawn from what is left of the budget and is recorded in
# OUT_DIR/summary.txt (rc, seconds); a failed step does not stop the ones after it. Without CUDA the GPU
# steps are skipped (with that said in the summary) and the rest run at tiny sizes, which is how this
# script is tried on a CPU machine before it goes to a GPU.
#
# Packages the machine lacks travel as wheels in .whl/ (scripts/gpu_wheels.sh); found, they are installed
# into /tmp/gpu_check_site, ahead of nothing the machine has. PYTHON picks the interpreter (default: the
# checkout's .venv if it has one, else python3).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:?usage: scripts/gpu_check.sh OUT_DIR [BUDGET_S]}
BUDGET=${2:-530}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
PY=${PYTHON:-}
if [ -z "$PY" ]; then if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi; fi
START=$(date +%s)
SUMMARY="$OUT_DIR/summary.txt"
: > "$SUMMARY"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/build/torch_extensions}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

note() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME LIMIT_S COMMAND...: run under min(LIMIT_S, what is left), log to OUT_DIR/NAME.log
step() {
    local name=$1 limit=$2; shift 2
    local left=$(( BUDGET - ($(date +%s) - START) ))
    if [ "$left" -lt 15 ]; then note "$name: not run (budget spent)"; return; fi
    [ "$limit" -gt "$left" ] && limit=$left
    local t0=$(date +%s)
    echo "== $name (limit ${limit}s): $*" | tee "$OUT_DIR/$name.log"
    timeout --kill-after=10 "$limit" "$@" >> "$OUT_DIR/$name.log" 2>&1
    local rc=$?
    local took=$(( $(date +%s) - t0 ))
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then note "$name: TIMED OUT after ${took}s (limit ${limit}s)";
    else note "$name: rc=$rc in ${took}s"; fi
    tail -n 3 "$OUT_DIR/$name.log" | sed 's/^/    /'
}

if ls .whl/*.whl >/dev/null 2>&1; then
    step wheels 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/gpu_check_site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/gpu_check_site"  # after the checkout, after nothing the machine has
fi

CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
step environment 60 bash -c "nvidia-smi || true; $PY - <<'EOF'
import importlib, platform, torch
print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda,
      'device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')
for name in ('transformers', 'diffusers', 'gsplat', 'numpy', 'plyfile', 'huggingface_hub', 'safetensors'):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as e:
        print(name, 'MISSING', type(e).__name__, e)
from renderers.gsplat_backend import jit_build_settings
print('gsplat build:', jit_build_settings())
EOF"

TINY=(--resolution 32 --batch 2 --set init.num=500 --no-progress)
if [ "$CUDA" = 1 ]; then
    # The first use of gsplat compiles its kernels into TORCH_EXTENSIONS_DIR (kept, so this is paid once).
    step gsplat_build 300 "$PY" -c "
import time, torch
from renderers.gsplat_backend import jit_build_settings
print(jit_build_settings())
t0 = time.perf_counter()
from gsplat.cuda._backend import _C
assert _C is not None, 'gsplat: no CUDA extension (see the log above)'
print(f'gsplat CUDA extension ready in {time.perf_counter() - t0:.1f} s')"
    step pytest_gpu 120 "$PY" -m pytest -q -m gpu -p no:cacheprovider \
        tests/test_renderers.py tests/test_prior_sd.py tests/test_prior_accel.py tests/test_transfer.py
    step precision 150 "$PY" benchmarks/gpu_precision.py
    step headless_procedural 90 "$PY" app.py --ui headless --renderer gsplat --steps 300 --out "$OUT_DIR/runs" \
        --export ply,gif,checkpoint --no-progress
    step gpu_iteration 330 "$PY" benchmarks/gpu_iteration.py --levers
    step random_sd_folder 90 "$PY" benchmarks/random_models.py --save /tmp/gpu_check_sd21
    step headless_sd 120 "$PY" app.py --ui headless --renderer gsplat --model /tmp/gpu_check_sd21 --method ism \
        --steps 20 --out "$OUT_DIR/runs" --export ply --no-progress --set prior.compile=off
else
    note "no CUDA: gsplat build, pytest -m gpu and the real-scale runs are skipped; tiny CPU runs instead"
    step pytest_gpu 120 "$PY" -m pytest -q -m gpu -p no:cacheprovider \
        tests/test_renderers.py tests/test_prior_sd.py tests/test_prior_accel.py tests/test_transfer.py
    step precision 150 "$PY" benchmarks/gpu_precision.py --quick --no-write
    step headless_procedural 120 "$PY" app.py --ui headless --renderer cpu --steps 20 --out "$OUT_DIR/runs" \
        --export ply,gif,checkpoint "${TINY[@]}"
    step gpu_iteration 300 "$PY" benchmarks/gpu_iteration.py --quick --no-write
    step random_sd_folder 90 "$PY" benchmarks/random_models.py --size tiny --save /tmp/gpu_check_sd21
    step headless_sd 120 "$PY" app.py --ui headless --renderer cpu --model /tmp/gpu_check_sd21 --method ism \
        --steps 4 --out "$OUT_DIR/runs" --export ply "${TINY[@]}" --set prior.image_size=64
fi

# metrics.jsonl of each session: the steps it took, in the summary.
for m in "$OUT_DIR"/runs/run-*/metrics.jsonl; do
    [ -f "$m" ] && note "$(basename "$(dirname "$m")"): $(wc -l < "$m") metric rows, last: $(tail -n 1 "$m" | cut -c1-200)"
done
cp docs/BENCHMARKS.md "$OUT_DIR/BENCHMARKS.md"
note "total: $(( $(date +%s) - START ))s of a ${BUDGET}s budget"
