"""gplq_demo: run the FP32 reference pipeline on real aerial images and draw what it sees.

For each image writes ``<out>/<name>.png``: input | feature PCA | boundary map | corners,
and ``<out>/similarity.png`` + ``similarity.json``: VLAD descriptor cosine between all
images and between each image and its horizontal flip.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from ..model.heads import l2_normalize
from ..paths import default_vocab
from .common import cli, list_images, load_images, tile

PANEL_H = 360


def pca_rgb(tokens: np.ndarray) -> np.ndarray:
    """First three principal components of (gh, gw, C) unit tokens as uint8 RGB."""
    gh, gw, c = tokens.shape
    x = l2_normalize(tokens.reshape(-1, c))
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    p = x @ vt[:3].T
    lo, hi = np.percentile(p, 1, axis=0), np.percentile(p, 99, axis=0)
    p = np.clip((p - lo) / np.maximum(hi - lo, 1e-6), 0, 1)
    return (p.reshape(gh, gw, 3) * 255).astype(np.uint8)


def label(img: np.ndarray, text: str) -> np.ndarray:
    img = img.copy()
    cv2.putText(img, text, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 4, cv2.LINE_AA)
    cv2.putText(img, text, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def boundary_rgb(out, scale: float) -> np.ndarray:
    return cv2.applyColorMap((np.clip(out.boundary_full / max(scale, 1e-6), 0, 1) * 255).astype(np.uint8),
                             cv2.COLORMAP_INFERNO)[..., ::-1]


def draw_corners(img: np.ndarray, out) -> np.ndarray:
    img = img.copy()
    r = max(3, int(min(img.shape[:2]) / 80))
    for i, (x, y) in enumerate(out.corners_px):
        color = (255, 40, 40) if i < 10 else (255, 220, 0)
        cv2.circle(img, (int(x), int(y)), r, color, max(1, r // 2), cv2.LINE_AA)
    return img


def draw_boundary_corners(image: np.ndarray, out, text: str, scale: float = 0.6) -> np.ndarray:
    """Boundary map (fixed colour scale, comparable between models) with corners on top."""
    return label(draw_corners(boundary_rgb(out, scale), out), text)


def draw_panel(image: np.ndarray, out) -> np.ndarray:
    h, w = image.shape[:2]
    pca = cv2.resize(pca_rgb(out.tokens), (w, h), interpolation=cv2.INTER_NEAREST)
    bmax = float(out.boundary.max())
    return tile([label(image, 'input'), label(pca, 'feature PCA'),
                 label(boundary_rgb(out, bmax), f'boundary (max {bmax:.2f})'),
                 label(draw_corners(image, out), f'{len(out.corners_px)} Harris corners')], PANEL_H)


def similarity_png(names, sim: np.ndarray, flip: np.ndarray) -> np.ndarray:
    n = len(names)
    cell, left, top = 70, 300, 40
    img = np.full((top + cell * n + 30, left + cell * (n + 1) + 10, 3), 255, np.uint8)
    cv2.putText(img, 'VLAD cosine (last column: vs own flip)', (10, 26),
                cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    full = np.concatenate([sim, flip[:, None]], axis=1)
    for i in range(n):
        cv2.putText(img, names[i][:34], (6, top + cell * i + cell // 2 + 5),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        for j in range(n + 1):
            v = float(full[i, j])
            shade = int(255 * (1 - np.clip(v, 0, 1)))
            x0, y0 = left + cell * j, top + cell * i
            cv2.rectangle(img, (x0, y0), (x0 + cell - 2, y0 + cell - 2), (255, shade, shade), -1)
            cv2.putText(img, f'{v:.2f}', (x0 + 12, y0 + cell // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX,
                        0.5, (0, 0, 0) if v < 0.6 else (255, 255, 255), 1, cv2.LINE_AA)
    return img


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

    from ..model.backbone import load_extractor
    from ..model.pipeline import PipelineConfig, ReferencePipeline
    from ..model.vocab import Vocabulary
    t0 = time.perf_counter()
    ext = load_extractor(args.weights)
    vocab = Vocabulary.load(args.vocab or default_vocab(), ext.weights_sha256)
    pipe = ReferencePipeline(ext, PipelineConfig(long_side=args.long_side, top_k=args.top_k), vocab)
    paths = list_images(args.images)
    args.out.mkdir(parents=True, exist_ok=True)
    descs, flips, rows = [], [], []
    for path, image in zip(paths, load_images(paths)):
        t = time.perf_counter()
        out = pipe(image)
        ms = (time.perf_counter() - t) * 1e3
        descs.append(out.descriptor)
        flips.append(pipe(np.ascontiguousarray(image[:, ::-1])).descriptor)
        dest = args.out / (path.stem + '.png')
        cv2.imwrite(str(dest), cv2.cvtColor(draw_panel(image, out), cv2.COLOR_RGB2BGR))
        rows.append({'image': path.name, 'size_hw': list(image.shape[:2]), 'input_hw': list(out.input_hw),
                     'grid_hw': list(out.grid_hw), 'corners': int(len(out.corners_px)),
                     'boundary_mean': float(out.boundary.mean()), 'boundary_max': float(out.boundary.max()),
                     'pipeline_ms': round(ms, 1), 'picture': str(dest)})
        print(f'{path.name:48s} {image.shape[1]}x{image.shape[0]} -> grid {out.grid_hw[1]}x{out.grid_hw[0]}'
              f'  boundary mean {out.boundary.mean():.3f}  corners {len(out.corners_px):3d}  {ms:6.0f} ms'
              f'  -> {dest}')
    d, f = np.stack(descs), np.stack(flips)
    sim, flip = d @ d.T, np.sum(d * f, axis=1)
    names = [p.name for p in paths]
    cv2.imwrite(str(args.out / 'similarity.png'), cv2.cvtColor(similarity_png(names, sim, flip), cv2.COLOR_RGB2BGR))
    off = sim[~np.eye(len(names), dtype=bool)]
    summary = {'images': rows, 'names': names, 'similarity': sim.round(4).tolist(),
               'flip_cosine': flip.round(4).tolist(),
               'max_cross_image_cosine': float(off.max()) if off.size else None,
               'min_flip_cosine': float(flip.min()), 'wall_s': round(time.perf_counter() - t0, 1)}
    (args.out / 'similarity.json').write_text(json.dumps(summary, indent=2) + '\n')
    print(f'VLAD cosine: image vs own flip min {flip.min():.3f}; between different images max '
          f'{summary["max_cross_image_cosine"]:.3f}  -> {args.out / "similarity.png"}')
    print(f'gplq_demo: {len(paths)} images in {summary["wall_s"]} s, pictures in {args.out}/')
    return 0


if __name__ == '__main__':
    sys.exit(main())
