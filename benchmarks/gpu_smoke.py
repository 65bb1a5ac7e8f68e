"""Smoke check of the calibration's CUDA path (no weights or images needed): the whole
``calibrate`` entry point (stage 1, GPTQ, mixed precision, learned rounding, alignment) on a
randomly initialized ViT-S/14 and random crops, on ``--device`` (default cuda). Checks only
that every stage runs there and the result lands on the CPU; numbers mean nothing.

    python3 benchmarks/gpu_smoke.py [--device cuda]
"""
import argparse
import time

import numpy as np
import torch

from gplq_ros.offline.api import calibrate
from gplq_ros.offline.backbone import DinoV2Extractor, build_vit
from gplq_ros.offline.config import CalibConfig
from gplq_ros.offline.data import make_crops
from gplq_ros.offline.spec import QuantSpec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--device', default='cuda', choices=('cpu', 'cuda'))
    args = ap.parse_args()
    torch.manual_seed(0)
    ext = DinoV2Extractor(build_vit().eval(), 'random')
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (400, 400, 3), dtype=np.uint8) for _ in range(2)]
    crops = make_crops(images, 8, 0)
    spec = QuantSpec(weight_bits=4, act_bits=8, act_order=True, rotation='orthogonal', attention='qk_int8')
    cfg = CalibConfig.from_options(crops=8, batch=4, init_crops=4, gptq_crops=4, sensitivity_crops=4,
                                   max_8bit_fraction=0.25, rounding_iters=20, rounding_crops=8, rounding_batch=4,
                                   device=args.device)
    t0 = time.perf_counter()
    cal = calibrate(ext, spec, cfg, crops)
    out = cal.model.block_tokens(crops[0])[-1]
    print(f'{args.device}: calibrate ran in {time.perf_counter() - t0:.1f} s; output on {out.device}, '
          f'rounding before/after {cal.results["rounding"]["before"][:3]} / {cal.results["rounding"]["after"][:3]}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
