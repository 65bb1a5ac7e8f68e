"""OpenVINO f32 vs bf16 inference precision for the onboard graphs: time (interleaved) and fidelity.

usage: python benchmarks/openvino_precision.py [GRAPH.onnx ...] [--rounds 40]
Default graphs: the `make demo` FP32 and W4A8 graphs (168x224). Frames: the held-out tiles resized
to 640x480. Fidelity: token cosine and boundary SSIM against the FP32 graph at f32. On CPUs without
BF16 support OpenVINO runs bf16 requests in f32 (same times).
"""
import argparse
import random
import time
from pathlib import Path

import cv2
import numpy as np

from gplq_ros.offline.data import default_heldout, load_images
from gplq_ros.onboard.engine import load
from gplq_ros.onboard.metrics import ssim, token_cosine
from gplq_ros.onboard.paths import default_onboard_models


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('graphs', nargs='*', type=Path)
    ap.add_argument('--rounds', type=int, default=40)
    ap.add_argument('--threads', type=int, default=2)
    args = ap.parse_args()
    models = default_onboard_models()
    graphs = args.graphs or [Path(models['reference_model']), Path(models['model'])]
    frames = [cv2.resize(img, (640, 480), interpolation=cv2.INTER_AREA) for img in load_images(default_heldout())]
    engines = {(g.name, p): load(g, backend='openvino', precision=p, threads=args.threads)
               for g in graphs for p in ('f32', 'bf16')}
    times = {k: [] for k in engines}
    order = list(engines)
    for r in range(args.rounds):
        random.shuffle(order)
        for k in order:
            t = time.perf_counter()
            engines[k](frames[r % len(frames)])
            times[k].append((time.perf_counter() - t) * 1e3)
    ref = load(Path(models['reference_model']), backend='openvino', precision='f32', threads=args.threads)
    print(f'| graph | precision | median ms | p95 ms | token cosine vs FP32 | boundary SSIM vs FP32 |  '
          f'({args.threads} threads, {args.rounds} interleaved rounds, image -> outputs)')
    print('|---|---|---|---|---|---|')
    for (g, p), e in engines.items():
        cos = np.mean([token_cosine(e(f).tokens, ref(f).tokens) for f in frames])
        bs = np.mean([ssim(e(f).boundary, ref(f).boundary) for f in frames])
        v = times[(g, p)]
        print(f'| {g} | {p} | {np.median(v):.2f} | {np.percentile(v, 95):.2f} | {cos:.5f} | {bs:.4f} |')


if __name__ == '__main__':
    main()
