#!/usr/bin/env bash
# One check of visattn on a GPU, from a source checkout (nothing installed, no network needed):
#   1. the CUDA half of the test suite (tests whose id names cuda),
#   2. the GPU benchmark table (python benchmarks/run.py --device cuda),
#   3. a 200-step training of the digit-scenes demo under bf16 autocast.
# Everything goes to one folder (default: device-check-<UTC time>); sized for under 8 minutes on
# one H100-class GPU, each stage bounded by its own time limit.
#
#   bash benchmarks/device_check.sh [OUT_DIR]        # PYTHON=... to choose the interpreter
#
# Exit status: 0 all stages passed, 1 a stage failed or ran out of time, 2 no CUDA device.
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${1:-device-check-$(date -u +%Y%m%d-%H%M%S)}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "device_check: no CUDA device visible to torch ($PYTHON); nothing run" >&2
    exit 2
fi
mkdir -p "$OUT"
"$PYTHON" - <<'EOF' | tee "$OUT/versions.txt"
import torch
print(f"GPU: {torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
EOF

status=0
stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, output to OUT/NAME.txt
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most ${limit}s)"
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
    local rc=$?
    echo "   exit $rc after $((SECONDS - start))s; output in $OUT/$name.txt"
    tail -n 3 "$OUT/$name.txt" | sed 's/^/   | /'
    [ "$rc" -eq 0 ] || status=1
}

stage tests 150 "$PYTHON" -m pytest tests -q -p no:cacheprovider -k cuda --junitxml="$OUT/tests.xml"
stage benchmark 220 "$PYTHON" benchmarks/run.py --device cuda --output "$OUT/cuda.json"
stage train_digits_bf16 90 "$PYTHON" -m visattn train --quiet --output "$OUT/digits-bf16" \
    --set train.iters=200 --set train.amp=bf16 --set train.device=cuda
exit $status
