#!/usr/bin/env bash
# Calibrate artifacts on a CUDA machine (the lent device machine: torch, timm, safetensors,
# numpy, OpenCV and onnx there; no network): the onboard default form with and without the
# learned rounding (CalibConfig.rounding, --rounding-iters), min-max with it. Prints wall times; the
# artifacts land in OUTDIR, split into 15 MB parts (reassemble with cat), the logs and reports in
# OUTDIR/<name>.logs.tgz (each run's files are written as soon as it ends).
#
#   benchmarks/gpu_calibrate.sh WEIGHTS.safetensors IMAGES_DIR OUTDIR [ROUNDING_ITERS]
#
# Fidelity is measured afterwards on the CPU with the onboard engine (gplq_fidelity_onboard).
set -euo pipefail
W=$1; IMAGES=$2; OUTDIR=$3; ITERS=${4:-2000}
export PYTHONPATH=$PWD GPLQ_HOME=${GPLQ_HOME:-/tmp/gplq_home} PYTHONUNBUFFERED=1
PY=${PY:-python3}
mkdir -p "$OUTDIR"
nvidia-smi -L || true
$PY -c 'import torch, timm; print("torch", torch.__version__, "timm", timm.__version__, torch.cuda.get_device_name())'
# the onboard default (gplq_ros.offline.api.ONBOARD_SPEC / ONBOARD_CALIBRATION)
DEFAULT=(--bits w4a8 --act-order --rotation orthogonal --attention qk_int8 --max-8bit-fraction 0.25)
run() {  # name, extra options
    local name=$1; shift
    local t0=$SECONDS
    $PY -m gplq_ros.tools.calibrate --weights "$W" --images "$IMAGES" --device cuda --no-report --force \
        "${DEFAULT[@]}" "$@" --out "$OUTDIR/$name.safetensors" > "$OUTDIR/$name.log" 2>&1 \
        || { tail -20 "$OUTDIR/$name.log"; return 1; }
    echo "$name: $((SECONDS - t0)) s"
    $PY -c 'import json, sys; m = json.load(open(sys.argv[1]))["metrics"]; print(m["timing_s"], m["rounding"])' \
        "$OUTDIR/$name.report.json" || true
    split -b 15000000 -d "$OUTDIR/$name.safetensors" "$OUTDIR/$name.safetensors.part" && rm "$OUTDIR/$name.safetensors"
    tar -C "$OUTDIR" -czf "$OUTDIR/$name.logs.tgz" "$name.log" "$name.report.json" && rm "$OUTDIR/$name".{log,report.json}
}
run gplq_default
run gplq_round --rounding-iters "$ITERS" --rounding-batch 32
run minmax_round --method minmax --rounding-iters "$ITERS" --rounding-batch 32
ls -la "$OUTDIR"
