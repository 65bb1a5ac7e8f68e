"""Place recognition on real aerial imagery (numpy + OpenCV): a database of tiles cut from
an image on a grid, queries re-cropped around the same places with the changes a drone's
camera sees, and recall@k of descriptor retrieval.

* Database: square tiles of ``tile`` source pixels every ``stride`` pixels (default half a
  tile, so neighbouring tiles overlap), each resampled to ``size`` x ``size`` (bilinear, as
  the queries).
* Query of a place: the tile's window moved by up to ``max_shift`` of a tile, rotated by up
  to ``max_rot_deg``, scaled by 0.8-1.25 (``scale_range``), then brightness/contrast changed
  and blurred; its true place is the window centre on the source image.
* A retrieval is right when the retrieved database tile contains the query's true centre
  (so an overlapping neighbour that shows the same spot counts, a tile beside it does not).
"""
import math
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np


@dataclass(frozen=True)
class PlaceConfig:
    tile: int = 224                      # source pixels per database tile side
    stride: int = 112                    # source pixels between database tiles
    size: int = 224                      # network input side
    max_shift: float = 0.25              # query shift, fraction of a tile
    max_rot_deg: float = 30.0
    scale_range: Tuple[float, float] = (0.8, 1.25)
    brightness: float = 0.15             # +- fraction of 255
    contrast: float = 0.2                # +- relative
    max_blur_sigma: float = 1.5
    seed: int = 0

    def __post_init__(self):
        checks = {'tile': self.tile >= 16, 'stride': 1 <= self.stride <= self.tile, 'size': self.size >= 14,
                  'max_shift': 0 <= self.max_shift <= 0.5, 'max_rot_deg': 0 <= self.max_rot_deg <= 180,
                  'scale_range': 0 < self.scale_range[0] <= self.scale_range[1],
                  'brightness': 0 <= self.brightness < 1, 'contrast': 0 <= self.contrast < 1,
                  'max_blur_sigma': self.max_blur_sigma >= 0}
        for k, ok in checks.items():
            if not ok:
                raise ValueError(f'PlaceConfig.{k}={getattr(self, k)!r} is out of range')


@dataclass
class Places:
    """Database tiles and queries of one source image."""
    db_images: List[np.ndarray]
    db_centres: np.ndarray         # (N, 2) x, y of each tile centre, source pixels
    queries: List[np.ndarray]
    query_centres: np.ndarray      # (M, 2) true x, y of each query's centre
    query_place: np.ndarray        # (M,) the tile each query was made from
    tile: int


def _window(image: np.ndarray, cx: float, cy: float, side: float, angle_deg: float, out: int) -> np.ndarray:
    """The square window of ``side`` source pixels centred at (cx, cy), rotated by
    ``angle_deg``, resampled to ``out`` x ``out`` (reflected at the border)."""
    m = cv2.getRotationMatrix2D((cx, cy), angle_deg, out / side)   # rotate and scale about the centre
    m[:, 2] += (out / 2 - cx, out / 2 - cy)                          # ... which lands mid-window
    return cv2.warpAffine(image, m, (out, out), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def make_places(image: np.ndarray, cfg: PlaceConfig = PlaceConfig(), max_places: int = 0) -> Places:
    """Database tiles on the grid and one query per grid tile whose query window fits in the
    image (``max_places`` > 0: that many queries, evenly spread)."""
    h, w = image.shape[:2]
    t = cfg.tile
    xs = np.arange(t / 2, w - t / 2 + 1, cfg.stride)
    ys = np.arange(t / 2, h - t / 2 + 1, cfg.stride)
    if not len(xs) or not len(ys):
        raise ValueError(f'image {w}x{h} is smaller than one tile of {t} px')
    centres = np.array([(x, y) for y in ys for x in xs], np.float64)
    db = [_window(image, x, y, t, 0.0, cfg.size) for x, y in centres]   # resampled as the queries are
    rng = np.random.default_rng(cfg.seed)
    reach = t * (cfg.max_shift + cfg.scale_range[1] * math.sqrt(2) / 2)   # farthest a query pixel gets
    inner = [i for i, (x, y) in enumerate(centres) if reach <= x <= w - reach and reach <= y <= h - reach]
    if max_places and len(inner) > max_places:
        inner = [inner[i] for i in np.linspace(0, len(inner) - 1, max_places).round().astype(int)]
    queries, qc = [], []
    for i in inner:
        x, y = centres[i]
        dx, dy = rng.uniform(-cfg.max_shift, cfg.max_shift, 2) * t
        side = t * rng.uniform(*cfg.scale_range)
        angle = rng.uniform(-cfg.max_rot_deg, cfg.max_rot_deg)
        q = _window(image, x + dx, y + dy, side, angle, cfg.size).astype(np.float32)
        q = (q - 127.5) * (1 + rng.uniform(-cfg.contrast, cfg.contrast)) + 127.5 \
            + 255 * rng.uniform(-cfg.brightness, cfg.brightness)
        sigma = rng.uniform(0, cfg.max_blur_sigma)
        if sigma > 0.3:
            q = cv2.GaussianBlur(q, (0, 0), sigma)
        queries.append(np.clip(q, 0, 255).astype(np.uint8))
        qc.append((x + dx, y + dy))
    return Places(db, centres, queries, np.array(qc, np.float64).reshape(-1, 2), np.array(inner, int), t)


def recall_at_k(db_desc: np.ndarray, db_centres: np.ndarray, q_desc: np.ndarray, q_centres: np.ndarray,
                tile: float, ks: Sequence[int] = (1, 5)) -> Dict[str, float]:
    """Fraction of queries with a right tile among the top k by descriptor dot product; a
    tile is right when it contains the query's true centre (Chebyshev distance < tile/2)."""
    if len(q_desc) == 0:
        raise ValueError('recall_at_k: no queries')
    sim = np.asarray(q_desc, np.float64) @ np.asarray(db_desc, np.float64).T
    order = np.argsort(-sim, axis=1, kind='stable')
    d = np.abs(db_centres[None, :, :] - q_centres[:, None, :]).max(axis=2)     # (M, N)
    right = d < tile / 2
    ranked = np.take_along_axis(right, order, axis=1)
    return {f'R@{k}': float(np.mean(ranked[:, :k].any(axis=1))) for k in ks}
