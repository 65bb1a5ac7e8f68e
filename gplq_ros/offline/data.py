"""Real images for calibration, vocabulary and evaluation: image lists, random views, the
calibration crops, and the split of the cached aerial images into calibration and
held-out sets (numpy + OpenCV)."""
from pathlib import Path
from typing import Dict, List

import cv2
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


def drone_view(image: np.ndarray, rng: np.random.Generator, min_frac: float = 0.3, max_frac: float = 0.7,
               scale=(0.6, 1.6)) -> np.ndarray:
    """One square crop as a drone camera sees the ground (``DRONE_POLICY``): a side of
    ``min_frac``-``max_frac`` of the short side times a scale factor (another height), turned
    to any heading (rotated about its centre, cut from inside the rotated window so no border
    shows), mirrored half of the time, then photometric jitter: brightness, contrast, gamma,
    saturation, and a slight blur a third of the time (motion, focus)."""
    h, w = image.shape[:2]
    side = int(min(h, w) * rng.uniform(min_frac, max_frac) * rng.uniform(*scale))
    angle = float(rng.uniform(0, 360))
    rad = np.deg2rad(angle % 90)
    outer = min(int(np.ceil(side * (np.cos(rad) + np.sin(rad)))) + 2, min(h, w))
    side = min(side, int(outer / (np.cos(rad) + np.sin(rad))) - 1)
    y, x = rng.integers(0, h - outer + 1), rng.integers(0, w - outer + 1)
    win = np.ascontiguousarray(image[y:y + outer, x:x + outer])
    m = cv2.getRotationMatrix2D((outer / 2, outer / 2), angle, 1.0)
    rot = cv2.warpAffine(win, m, (outer, outer), flags=cv2.INTER_LINEAR)
    o = (outer - side) // 2
    v = rot[o:o + side, o:o + side].astype(np.float32) / 255.0
    if rng.random() < 0.5:
        v = v[:, ::-1]
    v = v * rng.uniform(0.8, 1.2)                                        # brightness (exposure)
    v = (v - v.mean()) * rng.uniform(0.7, 1.3) + v.mean()                # contrast (haze, sun)
    grey = v.mean(-1, keepdims=True)
    v = grey + (v - grey) * rng.uniform(0.6, 1.3)                        # saturation
    v = np.clip(v, 0, 1) ** rng.uniform(0.7, 1.4)                        # gamma (camera response)
    if rng.random() < 1 / 3:
        v = cv2.GaussianBlur(v, (0, 0), rng.uniform(0.5, 1.2))
    return np.ascontiguousarray(np.clip(v * 255 + 0.5, 0, 255).astype(np.uint8))


DRONE_POLICY = CROP_POLICY + '; drone: any heading, 0.6-1.6x scale, brightness/contrast/gamma/saturation, blur 1/3'


def make_crops(images, n: int, seed: int, size=224, augment: bool = False) -> List[torch.Tensor]:
    """n random square crops (``CROP_POLICY``, or ``DRONE_POLICY`` with ``augment``), taken
    round-robin over the images, each resized to ``size`` (int: size x size, or (h, w)), as
    normalized (1, 3, h, w) tensors."""
    rng = np.random.default_rng(seed)
    hw = (size, size) if isinstance(size, int) else tuple(size)
    out = []
    for i in range(n):
        img = images[i % len(images)]
        view = drone_view(img, rng) if augment else random_views(img, 1, rng)[0]
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
