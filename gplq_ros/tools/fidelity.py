"""gplq_fidelity: compare a GPLQ artifact with the FP32 model on images it was not
calibrated on.

Per image (whole, plus ``--views`` random crops/flips/rotations): final and per-layer
patch-token cosine, final-token MSE, boundary-map SSIM, corner repeatability and VLAD
descriptor cosine, and ``descriptor_top1`` over all views (``gplq_ros.offline.evaluation``).
Prints means/minima; ``--json F`` writes all.
"""
import argparse
import json
import sys
from pathlib import Path

from gplq_ros.offline.api import fidelity_report
from gplq_ros.offline.evaluation import METRICS
from gplq_ros.onboard.paths import default_vocab
from gplq_ros.tools.common import cli


@cli('gplq_fidelity')
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog='gplq_fidelity', description=__doc__.split('\n\n')[0])
    ap.add_argument('--model', type=Path, required=True, help='GPLQ artifact (.safetensors)')
    ap.add_argument('--images', nargs='+', default=None,
                    help='dirs/files not used in calibration (default: the NEON OSBS/SOAP tiles)')
    ap.add_argument('--weights', type=Path, default=None, help='FP32 reference weights')
    ap.add_argument('--vocab', type=Path, default=None, help=f'default {default_vocab()}')
    ap.add_argument('--views', type=int, default=4, help='random crops per image besides the whole (default 4)')
    ap.add_argument('--long-side', type=int, default=224)
    ap.add_argument('--json', type=Path, default=None, help='write all figures here')
    args = ap.parse_args(argv)
    res = fidelity_report(args.model, args.images, args.weights, args.vocab, args.views, args.long_side)
    for name in res['used_in_calibration']:
        print(f'gplq_fidelity: warning: {name} was used in calibration', file=sys.stderr)
    print(f'{args.model}: {res["tag"]}, {res["n"]} views of {res["images"]} held-out images')
    for m in METRICS + ('descriptor_top1',):
        if m in res['summary']:
            s = res['summary'][m]
            print(f'  {m:22s} mean {s["mean"]:.4f}  min {s["min"]:.4f}')
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
