"""gplq_demo: run the FP32 reference pipeline on real aerial images and draw what it sees.

For each image writes ``<out>/<name>.png``: input | feature PCA | boundary map | corners,
and ``<out>/similarity.png`` + ``similarity.json``: VLAD descriptor cosine between all
images and between each image and its horizontal flip (``offline.report.reference_pictures``).
"""
import argparse
import sys
from pathlib import Path

from gplq_ros.offline.data import list_images
from gplq_ros.offline.report import reference_pictures
from gplq_ros.onboard.paths import default_vocab
from gplq_ros.tools.common import cli


@cli('gplq_demo')
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog='gplq_demo', description=__doc__.split('\n\n')[0])
    ap.add_argument('--images', nargs='+', default=None, help='dirs/files (default: cached aerial images)')
    ap.add_argument('--weights', type=Path, default=None)
    ap.add_argument('--vocab', type=Path, default=None, help=f'default {default_vocab()}')
    ap.add_argument('--long-side', type=int, default=448, help='input long side in px (default 448)')
    ap.add_argument('--top-k', type=int, default=50, help='corners per image (default 50)')
    ap.add_argument('--out', type=Path, default=Path('out/demo'), help='output dir (default out/demo)')
    args = ap.parse_args(argv)
    paths = list_images(args.images)
    s = reference_pictures(paths, args.out, args.weights, args.vocab, args.long_side, args.top_k)
    print(f'VLAD cosine: image vs own flip min {s["min_flip_cosine"]:.3f}; between different images max '
          f'{s["max_cross_image_cosine"]:.3f}  -> {args.out / "similarity.png"}')
    print(f'gplq_demo: {len(paths)} images in {s["wall_s"]} s, pictures in {args.out}/')
    return 0


if __name__ == '__main__':
    sys.exit(main())
