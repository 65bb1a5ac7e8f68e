"""gplq_vocab: build the VLAD vocabulary (spherical k-means) from real images.

Features: DINOv2-S/14 patch tokens of block ``--block`` facet ``--facet`` (default 9,
``value``; see README for why), from each image whole plus ``--crops`` random
crops/flips/rotations per image, at ``--long-side`` pixels.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

from ..model.weights import BACKBONE_ID, sha256_file
from ..paths import default_vocab, default_weights
from .common import cli, list_images, load_images, random_views


def build_vocabulary(extractor, images, k=32, block=9, facet='value', long_side=224,
                     crops=8, seed=0, names=None):
    import torch
    from ..model.preprocess import prepare
    from ..model.vocab import VocabMeta, Vocabulary, spherical_kmeans
    rng = np.random.default_rng(seed)
    feats = []
    with torch.inference_mode():
        for img in images:
            for view in [img] + random_views(img, crops, rng):
                x = torch.from_numpy(prepare(view, long_side).tensor)
                feats.append(extractor(x, [(block, facet)])[(block, facet)][0].numpy())
    x = np.concatenate(feats)
    centers = spherical_kmeans(x, k, seed=seed)
    meta = VocabMeta(backbone=BACKBONE_ID, weights_sha256=extractor.weights_sha256,
                     block=block, facet=facet, long_side=long_side, k=k, seed=seed,
                     n_features=int(x.shape[0]), images=list(names or []))
    return Vocabulary(centers, meta)


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
        from ..model.vocab import Vocabulary
        Vocabulary.load(out, sha256_file(args.weights or default_weights()))
        print(f'gplq_vocab: using existing {out}')
        return 0
    if out.exists() and not args.force:
        print(f'gplq_vocab: {out} exists; pass --force to rebuild it', file=sys.stderr)
        return 1
    from ..model.backbone import load_extractor
    torch_threads()
    t0 = time.perf_counter()
    paths = list_images(args.images)
    ext = load_extractor(args.weights)
    names = [{'name': p.name, 'sha256': sha256_file(p)} for p in paths]
    voc = build_vocabulary(ext, load_images(paths), args.k, args.block, args.facet,
                           args.long_side, args.crops, args.seed, names)
    voc.save(out, force=args.force)
    print(f'gplq_vocab: k={args.k} on {voc.meta.n_features} features from {len(paths)} images '
          f'(block {args.block} {args.facet}) -> {out} in {time.perf_counter() - t0:.1f} s')
    return 0


def torch_threads():
    """Respect OMP_NUM_THREADS if set; torch's default otherwise."""
    import os

    import torch
    if os.environ.get('OMP_NUM_THREADS'):
        torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))


if __name__ == '__main__':
    sys.exit(main())
