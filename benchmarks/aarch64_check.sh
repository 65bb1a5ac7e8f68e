#!/bin/bash
# The onboard engine on aarch64 (the drone's CPU), emulated here with qemu-user-static, against
# x86_64: the same graphs and images through benchmarks/engine_outputs.py on both, token cosine
# >= 0.999 required. Emulated timings mean nothing and are not reported.
#
# Needs: Debian/Ubuntu x86_64 host, root (apt-get, debootstrap), `make setup` and the onboard
# graphs of `make demo` (or GRAPHS="a.onnx b.onnx"). No binfmt_misc needed: the aarch64 Python
# is started through qemu-aarch64-static -L ROOT, and its packages are aarch64 wheels that the
# host's pip installs with --platform/--target. Usage: bash benchmarks/aarch64_check.sh
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$REPO/.venv/bin/python}
ARM=${ARM:-/opt/arm64}
SUITE=${SUITE:-bookworm}        # Debian 12: python3.11, glibc 2.36
command -v debootstrap >/dev/null || apt-get install -y -q debootstrap
# qemu >= 8 emulates /proc/cpuinfo for aarch64 guests; with Debian 12's qemu 7.2 the guest reads
# the x86 host's, and onnxruntime's cpuinfo crashes on import (SIGSEGV, seen here)
qemu_major=$(qemu-aarch64-static --version 2>/dev/null | sed -n 's/^qemu-aarch64 version \([0-9]*\).*/\1/p')
if [ "${qemu_major:-0}" -lt 8 ]; then
    if ! apt-cache madison qemu-user-static | grep -q backports; then
        echo "deb http://deb.debian.org/debian bookworm-backports main" > /etc/apt/sources.list.d/backports.list
        apt-get update -q
    fi
    apt-get install -y -q -t bookworm-backports qemu-user-static
fi
if [ ! -x "$ARM/root/usr/bin/python3.11" ]; then
    # first stage only (unpacks the base system), then the included packages by hand
    debootstrap --arch=arm64 --foreign --variant=minbase \
        --include=python3.11,libpython3.11-stdlib,libgomp1,libstdc++6 "$SUITE" "$ARM/root" http://deb.debian.org/debian
    for deb in "$ARM"/root/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$ARM/root"; done
fi
if [ ! -d "$ARM/site/onnxruntime" ]; then
    plats=""
    for p in manylinux_2_36 manylinux_2_35 manylinux_2_31 manylinux_2_28 manylinux_2_17 manylinux2014; do
        plats="$plats --platform ${p}_aarch64"
    done
    "$PY" -m pip install -q $plats --python-version 3.11 --implementation cp --only-binary=:all: \
        --target "$ARM/site" -r "$REPO/requirements-onboard.txt"
fi
echo "aarch64 onboard packages (requirements-onboard.txt): $(du -sh "$ARM/site" | cut -f1)"
# A Cortex-A72 (Raspberry Pi 4; NEON, no SVE). With qemu's default "max" CPU, numpy's matmul
# of random [0, 1) matrices warned of overflow and ORT ran 18x slower (measured): not a CPU to check on.
export QEMU_CPU=${QEMU_CPU:-cortex-a72}
ARMPY=(qemu-aarch64-static -L "$ARM/root" "$ARM/root/usr/bin/python3.11")
"${ARMPY[@]}" -c 'import platform; print("emulated:", platform.machine(), platform.python_version())'
echo "emulated CPU: $QEMU_CPU"
if [ -z "${GRAPHS:-}" ]; then
    GRAPHS=$("$PY" -c 'from gplq_ros.onboard.paths import default_onboard_models as m; print(m()["reference_model"], m()["model"])')
fi
IMAGES=$(PYTHONPATH="$REPO" "$PY" -c 'from gplq_ros.offline.data import default_heldout as h; print(" ".join(map(str, h())))')
OUT=${OUT:-$REPO/out/aarch64}
mkdir -p "$OUT"
for backend in onnxruntime openvino; do
    # shellcheck disable=SC2086
    PYTHONPATH="$REPO" "$PY" "$REPO/benchmarks/engine_outputs.py" --backend $backend --graphs $GRAPHS \
        --images $IMAGES --out "$OUT/x86_64_$backend.npz"
    # shellcheck disable=SC2086
    PYTHONPATH="$REPO:$ARM/site" "${ARMPY[@]}" "$REPO/benchmarks/engine_outputs.py" --backend $backend \
        --graphs $GRAPHS --images $IMAGES --out "$OUT/aarch64_$backend.npz"
    PYTHONPATH="$REPO" "$PY" "$REPO/benchmarks/engine_outputs.py" --compare "$OUT/x86_64_$backend.npz" \
        "$OUT/aarch64_$backend.npz"
done
