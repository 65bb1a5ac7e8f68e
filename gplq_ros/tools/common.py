"""Helpers shared by the console scripts: image lists and crops of real images."""
import functools
import sys
from pathlib import Path
from typing import List

import cv2
import numpy as np

from ..model.preprocess import read_rgb
from ..model.vocab import VocabError
from ..model.weights import WeightsError
from ..runtime.artifact import ArtifactError
from ..paths import default_images_dir

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.tif', '.tiff', '.bmp')


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


def load_images(paths) -> List[np.ndarray]:
    return [read_rgb(p) for p in paths]


def tile(images: List[np.ndarray], height: int) -> np.ndarray:
    """Resize to a common height and concatenate horizontally with 4 px gaps."""
    parts = []
    for im in images:
        w = max(1, int(round(im.shape[1] * height / im.shape[0])))
        parts.append(cv2.resize(im, (w, height), interpolation=cv2.INTER_AREA))
        parts.append(np.full((height, 4, 3), 255, np.uint8))
    return np.concatenate(parts[:-1], axis=1)


class AssetError(RuntimeError):
    """An asset that could not be fetched or verified; the message says what to do."""


USER_ERRORS = (FileNotFoundError, FileExistsError, VocabError, WeightsError, ArtifactError, AssetError)


def cli(prog: str):
    """Wrap a console-script main: user errors print one line and exit 2 (no traceback)."""
    def wrap(fn):
        @functools.wraps(fn)
        def main(argv=None) -> int:
            try:
                return fn(argv)
            except USER_ERRORS as e:
                print(f'{prog}: error: {e}', file=sys.stderr)
                return 2
        return main
    return wrap
