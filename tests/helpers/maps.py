"""A tiny real place map file (random unit descriptors, 4 tiles) for tests that need a map's
file and metadata (its georeference), not its search."""
from dataclasses import asdict

import numpy as np

from gplq_ros.onboard.fileformat import BACKBONE_ID
from gplq_ros.onboard.placemap import MapConfig, MapMeta, PlaceMap


def tiny_place_map(path, georef=None):
    """Writes the map to ``path`` (``georef``: a ``GeoRef`` dict, e.g. zone/north/origin_e/origin_n, or None)."""
    rng = np.random.default_rng(0)
    poses = np.array([(x, -y, 0.0, 40.0) for y in (20.0, 40.0) for x in (20.0, 40.0)])
    desc = rng.normal(size=(len(poses), 8)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    meta = MapMeta(BACKBONE_ID, 'w' * 64, 'v' * 64, 'fp32.onnx', 'synthetic', 's' * 64, [600, 600],
                   asdict(MapConfig(pca_dim=8)), dict(georef) if georef else None, len(poses), 1.0)
    PlaceMap(poses, desc, np.zeros(16, np.float32), np.eye(8, 16, dtype=np.float32),
             np.zeros((120, 120), np.float32), meta).save(path)
    return path
