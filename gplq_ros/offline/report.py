"""Pictures the offline tools write: the calibration report (loss, per-block cosine, basin
drift, gradient alignment; input | FP32 | quantized boundary maps of the held-out images)
and the FP32 reference pictures of ``gplq_demo``."""
import json
import time
from pathlib import Path
from typing import Callable, List, Optional

import cv2
import matplotlib
import numpy as np

from gplq_ros.offline.backbone import load_extractor
from gplq_ros.offline.data import load_images
from gplq_ros.offline.reference import ReferencePipeline
from gplq_ros.offline.spec import QuantSpec
from gplq_ros.onboard.draw import draw_boundary_corners, draw_panel, similarity_png, tile
from gplq_ros.onboard.paths import default_vocab
from gplq_ros.onboard.pipeline import PipelineConfig
from gplq_ros.onboard.vocabulary import Vocabulary

matplotlib.use('Agg')  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)


def write_report_png(path: Path, results: dict, fidelity: dict, spec: QuantSpec) -> None:
    fig, ax = plt.subplots(2, 2, figsize=(13, 8))
    hist = {k: v for k, v in results['history'].items() if k not in ('wall_s', 'pca_components', 'budget')}
    for k, v in hist.items():
        ax[0, 0].plot(v, label=k)
    ax[0, 0].set_yscale('log')
    ax[0, 0].set_title('stage 1 loss per term' if hist else 'stage 1: no learning (method without GPLQ)')
    ax[0, 0].set_xlabel('step')
    if hist:
        ax[0, 0].legend()
    pl = fidelity['summary'].get('per_layer_cosine')
    if pl:
        ax[0, 1].plot(range(len(pl['mean'])), pl['mean'], 'o-', label='mean')
        ax[0, 1].plot(range(len(pl['min'])), pl['min'], 'x--', label='min')
        ax[0, 1].legend()
    ax[0, 1].set_title('held-out activation cosine per block (FP32 vs quantized)')
    ax[0, 1].set_xlabel('block')
    drift = {k: v for k, v in results['basin']['drift'].items() if k != 'overall'}
    ax[1, 0].bar(range(len(drift)), list(drift.values()))
    ax[1, 0].axhline(results['basin']['eps_basin'], color='r', ls='--', label='eps_basin')
    ax[1, 0].set_title(f'basin drift ||Wq-W||/||W|| per Linear (overall {results["basin"]["drift"]["overall"]:.3f})')
    ax[1, 0].legend()
    al = results['alignment']
    ax[1, 1].bar(range(len(al['per_layer'])), list(al['per_layer'].values()))
    ax[1, 1].axhline(al['gamma'], color='r', ls='--', label='gamma')
    ax[1, 1].set_title(f'gradient alignment per Linear (overall {al["overall"]:.3f})')
    ax[1, 1].legend()
    for a in (ax[1, 0], ax[1, 1]):
        a.set_xlabel('Linear (block-major: qkv, proj, fc1, fc2)')
    fig.suptitle(f'GPLQ {spec.tag} report')
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def heldout_pictures(images: dict, whole: dict, out_dir: Path) -> list:
    """input | FP32 boundary + corners | quantized boundary + corners, per whole image."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, img in images.items():
        r = whole[name]
        pic = tile([img, draw_boundary_corners(img, r['fp'], 'FP32'),
                    draw_boundary_corners(img, r['q'], f'quantized (SSIM {r["boundary_ssim"]:.3f})')], 300)
        dest = out_dir / (Path(name).stem + '.png')
        cv2.imwrite(str(dest), cv2.cvtColor(pic, cv2.COLOR_RGB2BGR))
        paths.append(str(dest))
    return paths


def reference_pictures(paths: List[Path], out: Path, weights: Optional[Path] = None, vocab: Optional[Path] = None,
                       long_side: int = 448, top_k: int = 50, log: Callable[[str], None] = print) -> dict:
    """``gplq_demo``: the FP32 reference pipeline on each image -> ``<out>/<name>.png``
    (input | feature PCA | boundary | corners); VLAD cosine between all images and between
    each image and its horizontal flip -> ``similarity.png`` / ``similarity.json``."""
    t0 = time.perf_counter()
    ext = load_extractor(weights)
    voc = Vocabulary.load(vocab or default_vocab(), ext.weights_sha256)
    pipe = ReferencePipeline(ext, PipelineConfig(long_side=long_side, top_k=top_k), voc)
    out.mkdir(parents=True, exist_ok=True)
    descs, flips, rows = [], [], []
    for path, image in zip(paths, load_images(paths)):
        t = time.perf_counter()
        o = pipe(image)
        ms = (time.perf_counter() - t) * 1e3
        descs.append(o.descriptor)
        flips.append(pipe(np.ascontiguousarray(image[:, ::-1])).descriptor)
        dest = out / (path.stem + '.png')
        cv2.imwrite(str(dest), cv2.cvtColor(draw_panel(image, o), cv2.COLOR_RGB2BGR))
        rows.append({'image': path.name, 'size_hw': list(image.shape[:2]), 'input_hw': list(o.input_hw),
                     'grid_hw': list(o.grid_hw), 'corners': int(len(o.corners_px)),
                     'boundary_mean': float(o.boundary.mean()), 'boundary_max': float(o.boundary.max()),
                     'pipeline_ms': round(ms, 1), 'picture': str(dest)})
        log(f'{path.name:48s} {image.shape[1]}x{image.shape[0]} -> grid {o.grid_hw[1]}x{o.grid_hw[0]}'
            f'  boundary mean {o.boundary.mean():.3f}  corners {len(o.corners_px):3d}  {ms:6.0f} ms  -> {dest}')
    d, f = np.stack(descs), np.stack(flips)
    sim, flip = d @ d.T, np.sum(d * f, axis=1)
    names = [p.name for p in paths]
    cv2.imwrite(str(out / 'similarity.png'), cv2.cvtColor(similarity_png(names, sim, flip), cv2.COLOR_RGB2BGR))
    off = sim[~np.eye(len(names), dtype=bool)]
    summary = {'images': rows, 'names': names, 'similarity': sim.round(4).tolist(),
               'flip_cosine': flip.round(4).tolist(),
               'max_cross_image_cosine': float(off.max()) if off.size else None,
               'min_flip_cosine': float(flip.min()), 'wall_s': round(time.perf_counter() - t0, 1)}
    (out / 'similarity.json').write_text(json.dumps(summary, indent=2) + '\n')
    return summary
