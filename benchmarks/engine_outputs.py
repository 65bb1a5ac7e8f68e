"""Onboard engine outputs of some graphs on some images, saved to .npz; or two such files compared.

Used by ``aarch64_check.sh`` to check the engine on aarch64 (emulated with qemu-user-static)
against x86_64: imports only the onboard package (no torch), so it runs with the packages of
``requirements-onboard.txt``.

    python benchmarks/engine_outputs.py --graphs G1 G2 --images I1 I2 --backend onnxruntime --out x86.npz
    python benchmarks/engine_outputs.py --compare x86.npz arm.npz   # exit 1 if a token cosine < 0.999
"""
import argparse
import platform
import sys
from pathlib import Path

import numpy as np

from gplq_ros.onboard.engine import load
from gplq_ros.onboard.metrics import token_cosine
from gplq_ros.onboard.preprocess import read_rgb


def run(graphs, images, backend, out: Path) -> None:
    arrays = {}
    for g in graphs:
        engine = load(Path(g), backend=backend, threads=2, warmup=0)
        for i in images:
            o = engine(read_rgb(i))
            key = f'{Path(g).name}|{Path(i).name}'
            arrays[key + '|tokens'] = o.tokens.reshape(-1, o.tokens.shape[-1])
            arrays[key + '|boundary'] = o.boundary
        print(f'{platform.machine()}: {g} on {engine.description}: {len(images)} images', flush=True)
    np.savez(out, **arrays)


def compare(a: Path, b: Path, bound: float = 0.999) -> int:
    x, y = np.load(a), np.load(b)
    worst = 1.0
    for key in sorted(k for k in x.files if k.endswith('|tokens')):
        cos = token_cosine(x[key], y[key])
        diff = float(np.abs(x[key.replace('tokens', 'boundary')] - y[key.replace('tokens', 'boundary')]).max())
        print(f'{key[:-7]}: token cosine {cos:.6f}, boundary max |diff| {diff:.2e}')
        worst = min(worst, cos)
    missing = set(x.files) ^ set(y.files)
    print(f'worst token cosine {worst:.6f} (bound {bound}); keys only in one file: {sorted(missing)}')
    return 0 if worst >= bound and not missing else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--graphs', nargs='*', default=[])
    ap.add_argument('--images', nargs='*', default=[])
    ap.add_argument('--backend', default='onnxruntime', choices=('auto', 'onnxruntime', 'openvino'))
    ap.add_argument('--out', type=Path)
    ap.add_argument('--compare', nargs=2, type=Path)
    args = ap.parse_args()
    if args.compare:
        return compare(*args.compare)
    run(args.graphs, args.images, args.backend, args.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
