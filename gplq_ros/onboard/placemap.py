"""A geo-referenced place map: tiles of an orthophoto as a nadir camera would see them,
each with its pose in ``map`` and its place descriptor (numpy + OpenCV; built by gplq_map).

* **Tiles**: the camera's window (``width`` x ``height`` pixels, ``hfov_deg``) rendered
  from the orthophoto like ``flight_sim_node`` renders frames, centred on a square grid
  of ``stride_m`` metres, at each height in ``heights_m`` and each of ``headings`` yaws
  (360 / headings degrees apart: VLAD of ViT tokens is not rotation invariant, so the map
  holds the orientations the drone may fly). Centres cover the area where a camera at the
  highest map height sees only the orthophoto.
* **Descriptors** (``onboard.mapbuild``: the graph runtime is needed only to build a map, not to
  use one): the FP32 reference graph's VLAD (vocabulary ``vocabulary_sha256``),
  projected by PCA fitted on the map's own tiles to ``pca_dim`` dimensions and
  L2-normalized. A query is projected the same way (``PlaceMap.project``), so a lookup is
  one (N, pca_dim) x (pca_dim,) product. With ``photometric`` other than ``none`` each tile is
  normalized (``onboard.photometric``) before the graph; the frames must then be normalized
  the same way (feature_node's and monitor_node's ``photometric``).
* **Boundary orthomap**: every tile's boundary map (the FP32 graph's, at camera resolution)
  warped back onto the orthophoto and averaged, at ``boundary_res_m`` metres per pixel: what
  the feature node's boundary map of a frame should look like from anywhere in the map; the
  localizer matches a frame's boundary map against it to refine the retrieved position.
* **Orthophoto layer** (version 2): the orthophoto in grey at ``ortho_res_m`` metres per pixel
  (``verify_res_m`` rounded to a whole number of orthophoto pixels, each layer pixel the mean
  of a k x k block: the same whichever window of the orthophoto it is computed from), for the
  localizer's verification (``onboard.verify``: the frame registered to it with keypoints);
  its sha256 is recorded in the metadata and checked on load.
* **Poses**: x east, y north (metres, REP 103, origin the orthophoto's top-left corner),
  yaw of the camera's image-right axis from east (counter-clockwise), height.

File format (``FORMAT`` version ``VERSION``): one safetensors file with ``poses`` (N, 4)
float64 [x, y, yaw, height], ``descriptors`` (N, P) float32, ``pca_mean`` (D,),
``pca_basis`` (P, D), ``boundary`` (rows, cols) float32 and (version 2) ``ortho`` (rows, cols) uint8;
header key ``gplq_ros`` holds the JSON ``MapMeta`` (also
written to a sidecar ``.json`` for people).
"""
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import cv2
import numpy as np
from safetensors.numpy import load_file, save_file

from gplq_ros.onboard.fileformat import BACKBONE_ID, check_fields, read_versioned_meta
from gplq_ros.onboard.flight import render_window, scale_at, window_affine
from gplq_ros.onboard.geo import GeoRef
from gplq_ros.onboard.heads import l2_normalize, upsample
from gplq_ros.onboard.photometric import PHOTOMETRIC_MODES, apply_photometric

FORMAT = 'gplq_ros.place_map'
EXACT_PCA_MAX = 4096      # fit_pca: exact up to this many rows, randomized beyond
VERSION = 2              # 2: the orthophoto layer; version 1 maps (without it) are still read
READS = (1, 2)


class MapError(ValueError):
    """A place map that cannot be used (missing, wrong version, built for other weights or vocabulary)."""


@dataclass(frozen=True)
class MapConfig:
    stride_m: float = 8.0
    headings: int = 8
    heights_m: Tuple[float, ...] = (40.0,)
    width: int = 640                 # camera image, pixels
    height: int = 480
    hfov_deg: float = 70.0
    gsd_m: float = 0.1               # orthophoto metres per pixel
    pca_dim: int = 256
    boundary_res_m: float = 0.5      # metres per pixel of the map's boundary orthomap
    photometric: str = 'none'        # tile normalization (onboard.photometric); the frames need the same
    pca_sample: int = 4096           # the PCA is fitted on at most this many tiles, evenly spread (pca_sample_ids)
    verify_res_m: float = 0.25       # orthophoto layer for the verification, m/px (rounded: ortho_res_m)

    def __post_init__(self):
        object.__setattr__(self, 'heights_m', tuple(float(h) for h in self.heights_m))
        check_fields(self, [
            ('stride_m', 0 < self.stride_m <= 1000), ('headings', 1 <= self.headings <= 72),
            ('heights_m', len(self.heights_m) >= 1 and all(1 <= h <= 1000 for h in self.heights_m)),
            ('width', 16 <= self.width <= 8192), ('height', 16 <= self.height <= 8192),
            ('hfov_deg', 10 <= self.hfov_deg <= 170), ('gsd_m', 0 < self.gsd_m <= 100),
            ('pca_dim', 8 <= self.pca_dim <= 4096), ('boundary_res_m', self.gsd_m <= self.boundary_res_m <= 100),
            ('photometric', self.photometric in PHOTOMETRIC_MODES), ('pca_sample', 16 <= self.pca_sample <= 10 ** 7),
            ('verify_res_m', 0 < self.verify_res_m <= 100)])

    def scale(self, height_m: float) -> float:
        return scale_at(height_m, self.width, self.hfov_deg, self.gsd_m)

    @property
    def ortho_block(self) -> int:
        """Orthophoto pixels per orthophoto-layer pixel (a side of the block averaged)."""
        return max(1, int(round(self.verify_res_m / self.gsd_m)))

    @property
    def ortho_res_m(self) -> float:
        """Metres per pixel of the orthophoto layer."""
        return self.ortho_block * self.gsd_m


@dataclass
class MapMeta:
    backbone: str
    weights_sha256: str
    vocabulary_sha256: str
    reference_graph: str
    source_image: str
    source_sha256: str
    image_hw: List[int]
    config: dict
    georef: Optional[dict] = None
    n_tiles: int = 0
    pca_explained: float = 0.0
    ortho_sha256: str = ''           # the orthophoto layer's (version 2; '' = no layer)
    format: str = FORMAT
    version: int = VERSION
    notes: List[str] = field(default_factory=list)


def vocabulary_id(centers: np.ndarray) -> str:
    """The identity a map records of the vocabulary its descriptors were made with."""
    return hashlib.sha256(np.ascontiguousarray(centers, np.float32).tobytes()).hexdigest()


def footprint_radius_m(cfg: MapConfig, height_m: float) -> float:
    """Radius of the circle a camera at ``height_m`` sees at any yaw (half its diagonal), metres."""
    return 0.5 * math.hypot(cfg.width, cfg.height) * cfg.scale(height_m) * cfg.gsd_m


def pca_sample_ids(n: int, sample: int) -> np.ndarray:
    """The tiles (ascending ids of ``tile_poses``) the PCA is fitted on: all of them when there
    are at most ``sample``, else ``sample`` spread evenly over the list (so over every shard,
    height and heading)."""
    if n <= sample:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, sample)).astype(np.int64))


def tile_poses(image_hw: Tuple[int, int], cfg: MapConfig) -> np.ndarray:
    """(N, 4) [x, y, yaw, height] of the map's tiles (see the module doc)."""
    h, w = image_hw
    margin = footprint_radius_m(cfg, max(cfg.heights_m))
    xs = np.arange(margin, w * cfg.gsd_m - margin + 1e-9, cfg.stride_m)
    ys = np.arange(margin, h * cfg.gsd_m - margin + 1e-9, cfg.stride_m)
    if not len(xs) or not len(ys):
        raise MapError(f'orthophoto {w}x{h} px at {cfg.gsd_m} m/px is too small for a camera at '
                       f'{max(cfg.heights_m):g} m (needs > {2 * margin:.0f} m a side)')
    yaws = np.arange(cfg.headings) * (2 * math.pi / cfg.headings)
    return np.array([(x, -y, yaw, z) for z in cfg.heights_m for y in ys for x in xs for yaw in yaws], np.float64)


def tile_origin(pose: np.ndarray, cfg: MapConfig) -> Tuple[int, int, int]:
    """(row0, col0, size): the square of orthophoto pixels a tile is rendered from (its footprint
    and 2 pixels more), clipped at the raster's top-left corner."""
    x, y, _, z = pose
    r = footprint_radius_m(cfg, z) / cfg.gsd_m + 2.0
    return max(int(math.floor(-y / cfg.gsd_m - r)), 0), max(int(math.floor(x / cfg.gsd_m - r)), 0), \
        int(math.ceil(2 * r)) + 2


def render_tile(ortho: np.ndarray, pose: np.ndarray, cfg: MapConfig, origin: Tuple[int, int] = (0, 0)) -> np.ndarray:
    """The camera frame of tile ``pose`` from ``ortho`` (a raster whose pixel [0, 0] is the
    orthophoto's pixel ``origin``: a window of it). Rendered from the tile's own square
    (``tile_origin``), so the frame is the same to the bit whichever window holds it."""
    x, y, yaw, z = pose
    r0, c0, n = tile_origin(pose, cfg)
    view = ortho[r0 - origin[0]:r0 - origin[0] + n, c0 - origin[1]:c0 - origin[1] + n]
    return render_window(view, x / cfg.gsd_m - c0, -y / cfg.gsd_m - r0, yaw, cfg.scale(z), cfg.width, cfg.height)


def fit_pca(desc: np.ndarray, dim: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray, float]:
    """Mean (D,), basis (P, D) of the top ``dim`` principal directions, explained variance share.

    Up to ``EXACT_PCA_MAX`` rows exact (eigen-decomposition of the rows' Gram matrix in float64;
    4,096 rows of 12,288 take a few seconds); beyond, randomized (Halko et al. 2011: Gaussian
    sketch of dim + 16 columns, 3 power iterations: a full SVD of a 13,000 x 12,288 matrix ran
    for over 20 minutes here). A component's sign is arbitrary: each one's largest coordinate is
    made positive, so that maps of the same tiles described in other processes agree."""
    x = np.asarray(desc, np.float32)
    n, d = x.shape
    p = min(dim, n - 1)
    if p < 1:
        raise MapError(f'{n} tiles: a map needs at least 2')
    mean = x.mean(axis=0, dtype=np.float64)
    total = float(np.square(x - mean.astype(np.float32), dtype=np.float64).sum())
    if n <= EXACT_PCA_MAX:
        xc = x.astype(np.float64) - mean
        lam, u = np.linalg.eigh(xc @ xc.T)
        top = np.argsort(-lam, kind='stable')[:p]
        lam = np.maximum(lam[top], 1e-30)
        vt = (u[:, top].T @ xc) / np.sqrt(lam)[:, None]
        explained = float(lam.sum() / max(total, 1e-30))
    else:
        xc = x - mean.astype(np.float32)
        k = min(p + 16, n, d)
        y = xc @ np.random.default_rng(seed).standard_normal((d, k)).astype(np.float32)
        for _ in range(3):
            y, _ = np.linalg.qr(y)
            y = xc @ (xc.T @ y)
        q, _ = np.linalg.qr(y)
        _, sv, vt = np.linalg.svd(q.T @ xc, full_matrices=False)
        vt = vt[:p]
        explained = float((sv[:p].astype(np.float64) ** 2).sum() / max(total, 1e-30))
    vt = vt * np.where(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)] < 0, -1.0, 1.0)[:, None]
    return mean.astype(np.float32), vt.astype(np.float32), explained


class MapIdentity:
    """What a place map says of itself (a one-file ``PlaceMap`` and a sharded
    ``mapstore.ShardedMap``): needs ``meta``, ``pca_mean``, ``pca_basis``."""
    meta: 'MapMeta'
    pca_mean: np.ndarray
    pca_basis: np.ndarray

    @property
    def config(self) -> MapConfig:
        return MapConfig(**self.meta.config)

    @property
    def georef(self) -> Optional[GeoRef]:
        return GeoRef(**self.meta.georef) if self.meta.georef else None

    def project(self, descriptor: np.ndarray) -> np.ndarray:
        """(D,) or (M, D) VLAD descriptors -> unit (P,) / (M, P) in the map's PCA space."""
        d = np.asarray(descriptor, np.float32)
        if d.shape[-1] != self.pca_mean.shape[0]:
            raise MapError(f'descriptor length {d.shape[-1]}: this map takes {self.pca_mean.shape[0]}')
        return l2_normalize((d - self.pca_mean) @ self.pca_basis.T)

    def check_vocabulary(self, centers: np.ndarray, source='vocabulary') -> None:
        vid = vocabulary_id(centers)
        if vid != self.meta.vocabulary_sha256:
            raise MapError(f'{source}: vocabulary {vid[:12]}... is not the one the map was built with '
                           f'({self.meta.vocabulary_sha256[:12]}...); build the map again with gplq_map')


@dataclass
class PlaceMap(MapIdentity):
    poses: np.ndarray            # (N, 4) x, y, yaw, height
    descriptors: np.ndarray      # (N, P) unit, PCA-projected
    pca_mean: np.ndarray         # (D,)
    pca_basis: np.ndarray        # (P, D)
    boundary: np.ndarray         # (rows, cols) boundary orthomap, boundary_res_m per pixel, row 0 = y 0 (north edge)
    meta: MapMeta
    ortho: Optional[np.ndarray] = None    # (rows, cols) uint8 orthophoto layer, ortho_res_m per pixel (ortho_layer)

    def save(self, path: Path, force: bool = False) -> None:
        path = Path(path)
        if path.exists() and not force:
            raise FileExistsError(f'{path} exists; pass --force to overwrite')
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + '.tmp')
        tensors = {'poses': np.ascontiguousarray(self.poses, np.float64),
                   'descriptors': np.ascontiguousarray(self.descriptors, np.float32),
                   'pca_mean': np.ascontiguousarray(self.pca_mean, np.float32),
                   'pca_basis': np.ascontiguousarray(self.pca_basis, np.float32),
                   'boundary': np.ascontiguousarray(self.boundary, np.float32)}
        if self.ortho is not None:
            tensors['ortho'] = np.ascontiguousarray(self.ortho, np.uint8)
            self.meta.ortho_sha256, self.meta.version = layer_sha256(tensors['ortho']), VERSION
        else:
            self.meta.ortho_sha256, self.meta.version = '', 1
        save_file(tensors, str(tmp), metadata={'gplq_ros': json.dumps(asdict(self.meta), sort_keys=True)})
        tmp.replace(path)
        path.with_suffix('.json').write_text(json.dumps(asdict(self.meta), indent=2) + '\n')

    @classmethod
    def load(cls, path: Path, weights_sha256: Optional[str] = None) -> 'PlaceMap':
        raw = read_versioned_meta(path, FORMAT, READS, 'place map', 'build one with gplq_map', MapError)
        try:
            meta = MapMeta(**raw)
            MapConfig(**meta.config)
            if meta.georef:
                GeoRef(**meta.georef)
        except (TypeError, ValueError) as e:
            raise MapError(f'{path}: malformed map metadata ({e})') from None
        t = load_file(str(path))
        n, p = t['descriptors'].shape if t['descriptors'].ndim == 2 else (-1, -1)
        if (t['poses'].shape != (n, 4) or n != meta.n_tiles or t['pca_basis'].shape != (p, t['pca_mean'].shape[0])
                or not np.isfinite(t['descriptors']).all() or t['boundary'].ndim != 2):
            raise MapError(f'{path}: tensor shapes do not match ({n} tiles recorded as {meta.n_tiles})')
        if meta.backbone != BACKBONE_ID or (weights_sha256 and meta.weights_sha256 != weights_sha256):
            raise MapError(f'{path}: built with {meta.backbone} weights {meta.weights_sha256[:12]}..., '
                           f'the graph uses {str(weights_sha256)[:12]}...')
        ortho = t.get('ortho')
        check_ortho(ortho, meta, path)
        return cls(t['poses'], t['descriptors'], t['pca_mean'], t['pca_basis'], t['boundary'], meta, ortho)

    def ortho_window(self, r0: int, c0: int, r1: int, c1: int):
        """(array, row0, col0): the orthophoto layer's rows r0..r1-1, cols c0..c1-1 clipped to the layer
        (a view); an empty array when the map has no layer or the window misses it."""
        return clip_window(self.ortho, r0, c0, r1, c1)


def layer_sha256(layer: np.ndarray) -> str:
    a = np.ascontiguousarray(layer, np.uint8)
    return hashlib.sha256(np.array(a.shape, np.int64).tobytes() + a.tobytes()).hexdigest()


def check_ortho(ortho: Optional[np.ndarray], meta: MapMeta, where) -> None:
    """Refuse an orthophoto layer that does not belong to the map: a version-1 map with one, a
    version-2 map without the one it records, another shape than the map's, another checksum."""
    if meta.version < 2:
        if ortho is not None or meta.ortho_sha256:
            raise MapError(f'{where}: a version {meta.version} map with an orthophoto layer (a version 2 field)')
        return
    if ortho is None:
        if meta.ortho_sha256:
            raise MapError(f'{where}: the orthophoto layer the map records ({meta.ortho_sha256[:12]}...) is missing')
        return
    want = ortho_shape(meta.image_hw, MapConfig(**meta.config))
    if ortho.dtype != np.uint8 or tuple(ortho.shape) != want:
        raise MapError(f'{where}: orthophoto layer {ortho.dtype} {tuple(ortho.shape)}, the map needs uint8 {want}')
    got = layer_sha256(ortho)
    if got != meta.ortho_sha256:
        raise MapError(f'{where}: orthophoto layer checksum {got[:12]}... is not the recorded '
                       f'{meta.ortho_sha256[:12]}...: the layer does not belong to this map')


def clip_window(layer: Optional[np.ndarray], r0: int, c0: int, r1: int, c1: int):
    if layer is None:
        return np.zeros((0, 0), np.uint8), 0, 0
    h, w = layer.shape
    r0, c0, r1, c1 = max(r0, 0), max(c0, 0), min(r1, h), min(c1, w)
    if r1 <= r0 or c1 <= c0:
        return np.zeros((0, 0), np.uint8), 0, 0
    return layer[r0:r1, c0:c1], r0, c0


def ortho_shape(image_hw, cfg: MapConfig) -> Tuple[int, int]:
    """The orthophoto layer's (rows, cols): whole k x k blocks of the orthophoto."""
    k = cfg.ortho_block
    return int(image_hw[0]) // k, int(image_hw[1]) // k


def ortho_layer(read: Callable[[int, int, int, int], np.ndarray], cfg: MapConfig, r0: int, c0: int,
                r1: int, c1: int) -> np.ndarray:
    """Rows r0..r1-1, cols c0..c1-1 of the orthophoto layer (uint8 grey, each pixel the mean of a
    k x k block of the orthophoto: the same from any window), from ``read(row0, col0, rows, cols)``
    (RGB or grey pixels of the orthophoto). Pixel (i, j) is centred at x = (j + 0.5) ortho_res_m -
    gsd_m / 2, y = -((i + 0.5) ortho_res_m - gsd_m / 2)."""
    k = cfg.ortho_block
    src = np.asarray(read(r0 * k, c0 * k, (r1 - r0) * k, (c1 - c0) * k))
    if src.ndim == 3:
        src = cv2.cvtColor(np.ascontiguousarray(src[..., :3]), cv2.COLOR_RGB2GRAY)
    if k == 1:
        return np.ascontiguousarray(src, np.uint8)
    blocks = src.reshape(r1 - r0, k, c1 - c0, k).astype(np.float32).mean(axis=(1, 3))
    return np.clip(np.round(blocks), 0, 255).astype(np.uint8)


def read_georef(path: Path) -> Optional[GeoRef]:
    """The georeference of a place map file or sharded map folder, from its metadata only (no
    tensor is read); None when the map has none."""
    if Path(path).is_dir():
        try:
            raw = json.loads((Path(path) / 'map.json').read_text())['meta']
        except (OSError, ValueError, KeyError) as e:
            raise MapError(f'{path}: not a sharded place map folder ({e})') from None
    else:
        raw = read_versioned_meta(path, FORMAT, READS, 'place map', 'build one with gplq_map', MapError)
    try:
        return GeoRef(**raw['georef']) if raw.get('georef') else None
    except (TypeError, ValueError) as e:
        raise MapError(f'{path}: malformed georeference in the map metadata ({e})') from None


def boundary_shape(image_hw, cfg: MapConfig) -> Tuple[int, int]:
    return (int(math.ceil(image_hw[0] * cfg.gsd_m / cfg.boundary_res_m)),
            int(math.ceil(image_hw[1] * cfg.gsd_m / cfg.boundary_res_m)))


def accumulate_boundary(acc: np.ndarray, cnt: np.ndarray, grid: np.ndarray, pose: np.ndarray, cfg: MapConfig,
                        origin: Tuple[int, int] = (0, 0)) -> None:
    """Add a tile's boundary map (its (gh, gw) patch grid, upsampled to the camera image as the
    feature node does) to the sums ``acc`` and counts ``cnt`` of the boundary orthomap pixels it
    covers; ``acc``/``cnt`` hold the orthomap from pixel ``origin`` (row, col) on."""
    b = upsample(np.asarray(grid, np.float32), (cfg.height, cfg.width))
    a = window_affine(pose[0] / cfg.gsd_m, -pose[1] / cfg.gsd_m, pose[2], cfg.scale(pose[3]), cfg.width,
                      cfg.height) * (cfg.gsd_m / cfg.boundary_res_m)   # orthophoto -> orthomap pixels
    a[:, 2] -= (origin[1], origin[0])
    w = cv2.warpAffine(b, a, (acc.shape[1], acc.shape[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                       borderValue=np.nan)
    ok = np.isfinite(w)
    acc[ok] += w[ok]
    cnt[ok] += 1


def build_map(ortho: np.ndarray, describe: Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray]], cfg: MapConfig,
              meta: MapMeta, progress: Callable[[int, int], None] = lambda i, n: None) -> PlaceMap:
    """Render every tile, describe it with ``describe`` (image -> (D,) VLAD, (gh, gw) boundary map
    on the patch grid, upsampled to the image like the feature node's), fit the PCA on the
    ``pca_sample_ids`` tiles, average the boundary maps on the orthophoto. In one process;
    ``onboard.mapshards`` builds the same map in shards."""
    poses = tile_poses(ortho.shape[:2], cfg)
    rows, cols = boundary_shape(ortho.shape[:2], cfg)
    acc, cnt = np.zeros((rows, cols), np.float64), np.zeros((rows, cols), np.float64)
    desc = []
    for i, pose in enumerate(poses):
        d, grid = describe(apply_photometric(render_tile(ortho, pose, cfg), cfg.photometric))
        desc.append(np.asarray(d, np.float32))
        accumulate_boundary(acc, cnt, grid, pose, cfg)
        progress(i + 1, len(poses))
    desc = np.stack(desc)
    boundary = np.where(cnt > 0, acc / np.maximum(cnt, 1), 0.0).astype(np.float32)
    orows, ocols = ortho_shape(ortho.shape[:2], cfg)
    layer = ortho_layer(lambda r, c, h, w: ortho[r:r + h, c:c + w], cfg, 0, 0, orows, ocols)
    mean, basis, explained = fit_pca(desc[pca_sample_ids(len(desc), cfg.pca_sample)], cfg.pca_dim)
    meta.n_tiles, meta.pca_explained, meta.image_hw = len(poses), explained, list(ortho.shape[:2])
    meta.config = asdict(cfg)
    proj = l2_normalize((desc - mean) @ basis.T)
    return PlaceMap(poses, proj.astype(np.float32), mean, basis, boundary, meta, layer)
