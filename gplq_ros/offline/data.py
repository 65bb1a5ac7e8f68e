"""Real images for calibration, vocabulary and evaluation: image lists, random views, the
calibration crops, and the split of the cached aerial images into calibration and
held-out sets (numpy + OpenCV)."""
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from gplq_ros.onboard.paths import default_images_dir, gplq_home
from gplq_ros.onboard.preprocess import prepare, read_rgb

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.tif', '.tiff', '.bmp')
HELDOUT_PREFIXES = ('OSBS_', 'SOAP_')  # NEON tiles from other sites than the calibration set
CROP_POLICY = 'square 30-70% of short side, flip, rot90, 224 px'


def list_images(sources=None) -> List[Path]:
    """Image files from directories/files (default: the cached aerial images), sorted."""
    sources = sources or [default_images_dir()]
    out: List[Path] = []
    for s in map(Path, sources):
        if s.is_dir():
            out += sorted(p for p in s.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif s.is_file():
            out.append(s)
        else:
            raise FileNotFoundError(f'--images: {s} is neither a file nor a directory '
                                    '(run gplq_assets to fetch the default aerial images)')
    if not out:
        raise FileNotFoundError(f'--images: no image files in {[str(s) for s in sources]}')
    return out


def load_images(paths) -> List[np.ndarray]:
    return [read_rgb(p) for p in paths]


def default_calibration_images() -> List[Path]:
    return [p for p in list_images([default_images_dir()]) if not p.name.startswith(HELDOUT_PREFIXES)]


def default_heldout() -> List[Path]:
    return [p for p in list_images([default_images_dir()]) if p.name.startswith(HELDOUT_PREFIXES)]


def random_views(image: np.ndarray, n: int, rng: np.random.Generator,
                 min_frac: float = 0.3, max_frac: float = 0.7) -> List[np.ndarray]:
    """``n`` random square crops (side a fraction of the short side), flipped/rotated."""
    h, w = image.shape[:2]
    views = []
    for _ in range(n):
        side = int(min(h, w) * rng.uniform(min_frac, max_frac))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        v = image[y:y + side, x:x + side]
        if rng.random() < 0.5:
            v = v[:, ::-1]
        v = np.rot90(v, int(rng.integers(4)))
        views.append(np.ascontiguousarray(v))
    return views


def make_crops(images, n: int, seed: int, size=224) -> List[torch.Tensor]:
    """n random square crops (``CROP_POLICY``), taken round-robin over the images, each
    resized to ``size`` (int: size x size, or (h, w)), as normalized (1, 3, h, w) tensors."""
    rng = np.random.default_rng(seed)
    hw = (size, size) if isinstance(size, int) else tuple(size)
    out = []
    for i in range(n):
        view = random_views(images[i % len(images)], 1, rng)[0]
        out.append(torch.from_numpy(prepare(view, size=hw).tensor))
    return out


def default_evaluation_sources() -> Dict[str, List[Path]]:
    """Evaluation images by source (``gplq_assets --evaluation``), none of them from the
    calibration images' source (deepforest)."""
    root = gplq_home() / 'eval_images'
    sources = {d.name: list_images([d]) for d in sorted(root.iterdir()) if d.is_dir()} if root.is_dir() else {}
    if not sources:
        raise FileNotFoundError(f'no evaluation images in {root}: run gplq_assets --evaluation')
    return sources
