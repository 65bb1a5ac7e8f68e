"""gplq_vocab: build the VLAD vocabulary (spherical k-means) from real images.

Features: DINOv2-S/14 patch tokens of block ``--block`` facet ``--facet`` (default 9,
``value``; see docs/method.md for why), from each image whole plus ``--crops`` random
crops/flips/rotations per image, at ``--long-side`` pixels (``offline.api.build_vocabulary``).
"""
import argparse
import sys
import time
from pathlib import Path

from gplq_ros.offline.api import check_vocabulary, vocabulary_to_file
from gplq_ros.onboard.paths import default_vocab, default_weights
from gplq_ros.tools.common import cli


@cli('gplq_vocab')
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog='gplq_vocab', description=__doc__.split('\n\n')[0])
    ap.add_argument('--images', nargs='+', default=None, help='dirs/files (default: cached aerial images)')
    ap.add_argument('--weights', type=Path, default=None, help=f'default {default_weights()}')
    ap.add_argument('--out', type=Path, default=None, help=f'default {default_vocab()}')
    ap.add_argument('--k', type=int, default=32, help='clusters (default 32)')
    ap.add_argument('--block', type=int, default=9, help='ViT block 0..11 (default 9)')
    ap.add_argument('--facet', default='value', choices=['token', 'query', 'key', 'value'])
    ap.add_argument('--long-side', type=int, default=224, help='input long side in px (default 224)')
    ap.add_argument('--crops', type=int, default=8, help='random crops per image (default 8)')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--force', action='store_true', help='overwrite --out')
    ap.add_argument('--if-missing', action='store_true',
                    help='exit 0 without work when --out exists and matches the weights')
    args = ap.parse_args(argv)
    out = args.out or default_vocab()
    if out.exists() and args.if_missing and not args.force:
        check_vocabulary(out, args.weights)
        print(f'gplq_vocab: using existing {out}')
        return 0
    if out.exists() and not args.force:
        print(f'gplq_vocab: {out} exists; pass --force to rebuild it', file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    voc, out = vocabulary_to_file(out, args.images, args.weights, args.force, k=args.k, block=args.block,
                                  facet=args.facet, long_side=args.long_side, crops=args.crops, seed=args.seed)
    print(f'gplq_vocab: k={args.k} on {voc.meta.n_features} features from {len(voc.meta.images)} images '
          f'(block {args.block} {args.facet}) -> {out} in {time.perf_counter() - t0:.1f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
