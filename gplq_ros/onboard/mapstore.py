"""Mission-sized place maps: a folder of shards searched through a compressed index and
loaded around the position under a memory budget (numpy; FAISS for the global index).

Layout of a sharded map folder (``FORMAT`` version ``VERSION``; written by ``write_sharded``
from ``mapshards.build_sharded``):

* ``map.json``: the ``MapMeta`` (as a one-file ``PlaceMap``'s), the shard grid (``shard_m``, the
  boundary orthomap's ``core_px`` per shard and its whole size) and every shard: its key, file,
  rows of the tile list, checksum, the weights and vocabulary it was made with.
* ``pca.safetensors``: the PCA mean and basis (fitted once on a sample over all shards).
* ``poses.npy``: (N, 4) float64 x, y, yaw, height of every tile, in shard order; always in
  memory (32 bytes a tile): the spatial index (``TileGrid``) and the global search's positions.
* ``descriptors.f16``: (N, P) float16 unit descriptors, raw rows; the global search re-ranks its
  candidates exactly from it with positioned reads (``mapindex.DescriptorRows``: no memory map,
  so the pages read do not stay in the process).
* ``index.faiss`` (+ ``.json``): the compressed global index over all descriptors (``mapindex``).
* ``shards/<key>.safetensors``: the shard's descriptors (float16), its square of the boundary
  orthomap (float16) and (version 2) of the orthophoto layer (uint8; ``ortho_span``), loaded
  when the localizer needs them and released least recently used first when the loaded shards would exceed the budget.

``ShardedMap`` and ``PlaceMap`` (one file, everything in memory) answer the localizer the same
questions: ``search(q, k, near=None)`` (global, or only the tiles within a radius of a
position), ``boundary_window`` (the boundary orthomap around a position), ``ortho_window`` (the
orthophoto layer around a position: the verification's imagery), ``poses``,
``project``, ``config``, ``georef``. ``open_map`` opens either."""
import hashlib
import json
import math
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
from safetensors.numpy import load_file, save_file

from gplq_ros.onboard import mapindex
from gplq_ros.onboard.fileformat import BACKBONE_ID, sha256_file
from gplq_ros.onboard.placemap import (MapConfig, MapError, MapIdentity, MapMeta, PlaceMap, clip_window,
                                       layer_sha256, ortho_shape)
from gplq_ros.onboard.settings import setting, validate


@dataclass(frozen=True)
class MapLoadConfig:
    """How the localizer holds its map (``onboard.settings``: localizer_node declares one ROS
    parameter per field)."""
    map_memory_mb: float = setting(512.0, 'a sharded map (gplq_map --out FOLDER): memory for its poses, index and '
                                   'the shards loaded around the position, MB; shards are released least recently '
                                   'used first (a one-file map is loaded whole)', range=(1.0, 1e6))
    map_cell_m: float = setting(32.0, 'cell of the spatial index over tile positions (tracking search), m',
                                range=(1.0, 10000.0))

    def __post_init__(self):
        validate(self)


FORMAT = 'gplq_ros.sharded_place_map'
VERSION = 2          # 2: shards hold the orthophoto layer (version 1 folders are still read, without it)
READS = (1, 2)


def ortho_span(k: int, shard_m: float, res_m: float, n: int) -> Tuple[int, int]:
    """Pixels [a, b) of the orthophoto layer (``n`` along this axis, ``res_m`` per pixel) that
    shard index ``k`` holds: the pixels whose left/top edge lies in its ``shard_m`` metres."""
    def edge(i):
        return min(max(int(math.ceil(i * shard_m / res_m - 1e-9)), 0), n)
    return edge(k), edge(k + 1)


MANIFEST = 'map.json'


class TileGrid:
    """Spatial index over tile positions: tiles bucketed in square cells of ``cell_m``; ``near``
    returns the tiles within a radius by visiting only the cells the circle touches."""

    def __init__(self, xy: np.ndarray, cell_m: float):
        self.cell = float(cell_m)
        xy = np.asarray(xy, np.float64)
        c = np.floor(xy / self.cell).astype(np.int64)
        self.c0 = c.min(axis=0) if len(c) else np.zeros(2, np.int64)
        c -= self.c0
        self.shape = tuple(int(v) + 1 for v in (c.max(axis=0) if len(c) else (0, 0)))
        flat = c[:, 1] * self.shape[0] + c[:, 0]
        self.order = np.argsort(flat, kind='stable')
        self.starts = np.searchsorted(flat[self.order], np.arange(self.shape[0] * self.shape[1] + 1))
        self.xy = xy

    def near(self, xy, radius: float) -> np.ndarray:
        """Ids (ascending) of the tiles within ``radius`` metres of ``xy``."""
        lo = np.floor((np.asarray(xy) - radius) / self.cell).astype(np.int64) - self.c0
        hi = np.floor((np.asarray(xy) + radius) / self.cell).astype(np.int64) - self.c0
        lo, hi = np.maximum(lo, 0), np.minimum(hi, np.array(self.shape) - 1)
        if (hi < lo).any():
            return np.zeros(0, np.int64)
        parts = [self.order[self.starts[cy * self.shape[0] + lo[0]]:self.starts[cy * self.shape[0] + hi[0] + 1]]
                 for cy in range(lo[1], hi[1] + 1)]
        ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        d2 = np.square(self.xy[ids] - np.asarray(xy)).sum(axis=1)
        return np.sort(ids[d2 <= radius * radius])


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest scores, best first (ties: lower position first)."""
    k = min(k, len(scores))
    idx = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    return idx[np.argsort(-scores[idx], kind='stable')]


# -- the shard grid and a built map (onboard.mapshards builds it) ---------------------------------------------
def shard_keys(poses: np.ndarray, shard_m: float) -> np.ndarray:
    """(N, 2) int (ix, iy) shard of each tile: column east, row south from the map's origin."""
    return np.stack([np.floor(poses[:, 0] / shard_m), np.floor(-poses[:, 1] / shard_m)], axis=1).astype(np.int64)


def key_name(key) -> str:
    return f'x{int(key[0]):04d}_y{int(key[1]):04d}'


def plan_shards(poses: np.ndarray, shard_m: float) -> Dict[Tuple[int, int], np.ndarray]:
    """Shard -> the tile ids (rows of ``poses``, ascending) whose centre lies in it, shards in
    row-major order (north to south, west to east)."""
    keys = shard_keys(poses, shard_m)
    out = {}
    for k in sorted(set(map(tuple, keys.tolist())), key=lambda k: (k[1], k[0])):
        out[k] = np.flatnonzero((keys[:, 0] == k[0]) & (keys[:, 1] == k[1]))
    return out


def shard_rows(keys, tiles) -> Dict[Tuple[int, int], np.ndarray]:
    """Shard -> its rows of the map's tile list, the shards' tiles (``tiles``: shard -> tile ids)
    one after another in ``keys`` order; a key without tiles (orthomap only) gets none."""
    rows, start = {}, 0
    for k in keys:
        n = len(tiles.get(k, ()))
        rows[k] = np.arange(start, start + n)
        start += n
    return rows


@dataclass
class BuildResult:
    poses: np.ndarray                       # (N, 4) in shard order (shards row-major, tiles ascending)
    shards: Dict[Tuple[int, int], np.ndarray]   # shard -> rows of ``poses`` (none: a shard of orthomap only)
    descriptors: np.ndarray                 # (N, P) float32 unit
    pca_mean: np.ndarray
    pca_basis: np.ndarray
    boundary: Dict[Tuple[int, int], np.ndarray]   # shard -> its core of the boundary orthomap (float32)
    boundary_hw: Tuple[int, int]            # the whole boundary orthomap's size
    core_px: int                            # side of a shard's core, boundary orthomap pixels
    meta: MapMeta
    stats: dict                             # tiles computed / reused, seconds per phase, workers
    order: np.ndarray                       # (N,) the single-process (``tile_poses``) index of each row
    ortho: Optional[Dict[Tuple[int, int], np.ndarray]] = None   # shard -> its part of the orthophoto layer
    ortho_hw: Optional[Tuple[int, int]] = None                  # the whole orthophoto layer's size

    def placemap(self) -> PlaceMap:
        """The map as one ``PlaceMap`` (tiles in the single-process order: ``tile_poses``)."""
        order = np.argsort(self.order)
        rows, cols = self.boundary_hw
        full = np.zeros((rows, cols), np.float32)
        for k, core in self.boundary.items():
            r0, c0 = k[1] * self.core_px, k[0] * self.core_px
            full[r0:r0 + core.shape[0], c0:c0 + core.shape[1]] = core
        layer = None
        if self.ortho is not None:
            layer = np.zeros(self.ortho_hw, np.uint8)
            shard_m, res = self.core_px * self.meta.config['boundary_res_m'], MapConfig(**self.meta.config).ortho_res_m
            for k, part in self.ortho.items():
                r0 = ortho_span(k[1], shard_m, res, self.ortho_hw[0])[0]
                c0 = ortho_span(k[0], shard_m, res, self.ortho_hw[1])[0]
                layer[r0:r0 + part.shape[0], c0:c0 + part.shape[1]] = part
        return PlaceMap(self.poses[order], self.descriptors[order], self.pca_mean, self.pca_basis, full, self.meta,
                        layer)


# -- the one-file map answers the same questions ---------------------------------------------------------------
class WholeMap:
    """A ``PlaceMap`` (one file, all in memory) behind the interface the localizer uses."""

    def __init__(self, pmap: PlaceMap, cell_m: float = 32.0):
        self.pmap, self.poses, self.meta = pmap, pmap.poses, pmap.meta
        self.grid = TileGrid(pmap.poses[:, :2], cell_m)
        self.stats = {'shards_loaded': 0, 'shards_released': 0}

    config = property(lambda self: self.pmap.config)
    georef = property(lambda self: self.pmap.georef)
    boundary_hw = property(lambda self: self.pmap.boundary.shape)

    def project(self, descriptor):
        return self.pmap.project(descriptor)

    def check_vocabulary(self, centers, source='vocabulary'):
        self.pmap.check_vocabulary(centers, source)

    def search(self, q: np.ndarray, k: int, near: Optional[Tuple[np.ndarray, float]] = None):
        """(ids, scores) of the ``k`` best tiles for the unit query ``q``: over the whole map
        (exact: one matrix-vector product), or over the tiles within ``near`` = (xy, radius)."""
        if near is None:
            scores = self.pmap.descriptors @ q
            idx = top_k(scores, k)
            return idx, scores[idx]
        ids = self.grid.near(*near)
        scores = self.pmap.descriptors[ids] @ q
        idx = top_k(scores, k)
        return ids[idx], scores[idx]

    def boundary_window(self, r0: int, c0: int, r1: int, c1: int):
        """(array, row0, col0): the boundary orthomap's pixels holding rows r0..r1, cols c0..c1
        (here the whole orthomap)."""
        return self.pmap.boundary, 0, 0

    def ortho_window(self, r0: int, c0: int, r1: int, c1: int):
        """(array, row0, col0): the orthophoto layer's rows r0..r1-1, cols c0..c1-1 clipped to the layer
        (empty without a layer)."""
        return self.pmap.ortho_window(r0, c0, r1, c1)

    @property
    def has_ortho(self) -> bool:
        return self.pmap.ortho is not None

    def resident_bytes(self) -> int:
        p = self.pmap
        return int(p.poses.nbytes + p.descriptors.nbytes + p.boundary.nbytes + p.pca_basis.nbytes +
                   (p.ortho.nbytes if p.ortho is not None else 0))


# -- writing a sharded map -------------------------------------------------------------------------------------
EXACT_INDEX_MAX = 20_000      # up to this many tiles the global index is exact (float32, 1 KB a tile at P = 256)


def default_index_config(n: int, p: int):
    """The global index of a map of ``n`` tiles of ``p`` dims: exact (``flat``) for small maps,
    else ``mapindex.IndexConfig``'s default kind with PQ sub-vectors that divide ``p``."""
    if n <= EXACT_INDEX_MAX:
        return mapindex.IndexConfig(kind='flat')
    d = mapindex.IndexConfig()
    m = d.m
    while p % m:
        m //= 2
    return mapindex.IndexConfig(m=max(m, 1))


def write_sharded(result, out: Path, index_cfg=None, force: bool = False) -> Path:
    """Write ``mapshards.BuildResult`` as a sharded map folder ``out`` (module doc), with its
    global index (``mapindex.build_index``, ``index_cfg`` or the default)."""
    out = Path(out)
    if (out / MANIFEST).exists() and not force:
        raise FileExistsError(f'{out} holds a map; pass --force to overwrite')
    out.mkdir(parents=True, exist_ok=True)
    (out / 'shards').mkdir(exist_ok=True)
    m = result.meta
    stamp = {'weights_sha256': m.weights_sha256, 'vocabulary_sha256': m.vocabulary_sha256}
    shards = []
    for k, rows in result.shards.items():
        name = f'x{k[0]:04d}_y{k[1]:04d}'
        path = out / 'shards' / f'{name}.safetensors'
        tensors = {'descriptors': np.ascontiguousarray(result.descriptors[rows], np.float16),
                   'boundary': np.ascontiguousarray(result.boundary[k], np.float16)}
        if result.ortho is not None:
            tensors['ortho'] = np.ascontiguousarray(result.ortho[k], np.uint8)
        save_file(tensors, str(path), metadata={'gplq_ros': json.dumps({**stamp, 'key': list(k)})})
        a = int(rows[0]) if len(rows) else (shards[-1]['rows'][1] if shards else 0)
        shards.append({'key': [int(k[0]), int(k[1])], 'file': f'shards/{name}.safetensors',
                       'rows': [a, a + len(rows)], 'sha256': sha256_file(path), **stamp,
                       **({'ortho_sha256': layer_sha256(tensors['ortho'])} if 'ortho' in tensors else {})})
    save_file({'mean': result.pca_mean, 'basis': result.pca_basis}, str(out / 'pca.safetensors'))
    np.save(out / 'poses.npy', np.ascontiguousarray(result.poses, np.float64))
    mapindex.write_descriptor_rows(out / 'descriptors.f16', result.descriptors)
    cfg = index_cfg or default_index_config(*result.descriptors.shape)
    index = mapindex.build_index(result.descriptors, cfg)
    mapindex.save_index(index, out / 'index.faiss')
    if result.ortho is not None:
        m = replace(m, ortho_sha256=sha_of_parts(result.ortho), version=2)
    manifest = {'format': FORMAT, 'version': VERSION if result.ortho is not None else 1, 'meta': asdict(m),
                'shard_m': result.core_px * m.config['boundary_res_m'], 'core_px': result.core_px,
                'boundary_hw': [int(v) for v in result.boundary_hw], 'n_tiles': int(len(result.poses)),
                'ortho_hw': [int(v) for v in result.ortho_hw] if result.ortho is not None else None,
                'pca_dim': int(result.pca_basis.shape[0]), 'shards': shards,
                'index': {'file': 'index.faiss', 'config': asdict(cfg)},
                'build': {k: v for k, v in result.stats.items()}}
    tmp = out / (MANIFEST + '.tmp')
    tmp.write_text(json.dumps(manifest, indent=1) + '\n')
    os.replace(tmp, out / MANIFEST)
    return out


def sha_of_parts(parts: Dict[Tuple[int, int], np.ndarray]) -> str:
    """The orthophoto layer's identity in a sharded map: the checksums of its parts in key order."""
    text = '\n'.join(f'{k[0]},{k[1]}:{layer_sha256(parts[k])}' for k in sorted(parts, key=lambda k: (k[1], k[0])))
    return hashlib.sha256(text.encode()).hexdigest()


def ortho_parts(layer_hw, keys, shard_m: float, res_m: float, read) -> Dict[Tuple[int, int], np.ndarray]:
    """Each shard's part of the orthophoto layer: ``read(r0, c0, r1, c1)`` gives layer pixels."""
    out = {}
    for k in keys:
        r0, r1 = ortho_span(k[1], shard_m, res_m, layer_hw[0])
        c0, c1 = ortho_span(k[0], shard_m, res_m, layer_hw[1])
        out[k] = np.ascontiguousarray(read(r0, c0, r1, c1), np.uint8) if r1 > r0 and c1 > c0 else \
            np.zeros((0, 0), np.uint8)
    return out


def shard_placemap(pmap: PlaceMap, shard_m: float = 500.0):
    """A one-file map cut into shards (``mapshards.BuildResult``, for ``write_sharded``): the same
    tiles, descriptors and boundary orthomap, without describing anything again."""
    cfg = pmap.config
    core = shard_m / cfg.boundary_res_m
    if abs(core - round(core)) > 1e-6:
        raise MapError(f'shard_m={shard_m:g} is not a multiple of boundary_res_m={cfg.boundary_res_m:g}')
    core = int(round(core))
    bh, bw = pmap.boundary.shape
    tiles = plan_shards(pmap.poses, shard_m)
    keys = sorted({(kx, ky) for ky in range(-(-bh // core)) for kx in range(-(-bw // core))} | set(tiles),
                  key=lambda k: (k[1], k[0]))
    order = np.concatenate([tiles[k] for k in keys if k in tiles])
    rows = shard_rows(keys, tiles)
    cores = {k: pmap.boundary[k[1] * core:(k[1] + 1) * core, k[0] * core:(k[0] + 1) * core] for k in keys}
    ortho = None if pmap.ortho is None else \
        ortho_parts(pmap.ortho.shape, keys, shard_m, cfg.ortho_res_m, lambda r0, c0, r1, c1: pmap.ortho[r0:r1, c0:c1])
    return BuildResult(pmap.poses[order], rows, pmap.descriptors[order], pmap.pca_mean, pmap.pca_basis, cores,
                       (bh, bw), core, pmap.meta, {'from': 'one-file map'}, order, ortho,
                       None if pmap.ortho is None else pmap.ortho.shape)


# -- reading a sharded map -------------------------------------------------------------------------------------
class ShardedMap(MapIdentity):
    """A sharded map folder (module doc), searched and loaded under ``memory_mb``: the poses, the
    PCA and the global index always in memory (refused when they alone exceed the budget), shards
    (descriptors and boundary orthomap) loaded when a search or a boundary window needs them and
    released least recently used first. ``stats``: shards loaded / released, bytes resident."""

    def __init__(self, path: Path, memory_mb: float = 512.0, weights_sha256: Optional[str] = None,
                 cell_m: float = 32.0):
        self.path = Path(path)
        try:
            man = json.loads((self.path / MANIFEST).read_text())
        except FileNotFoundError:
            raise MapError(f'sharded place map not found: {self.path / MANIFEST} (build one with gplq_map)') from None
        except ValueError as e:
            raise MapError(f'{self.path / MANIFEST}: not JSON ({e})') from None
        if man.get('format') != FORMAT or man.get('version') not in READS:
            raise MapError(f'{self.path}: format {man.get("format")!r} version {man.get("version")!r}; this reader '
                           f'takes {FORMAT!r} version {" or ".join(str(v) for v in READS)}')
        try:
            self.meta = MapMeta(**man['meta'])
            MapConfig(**self.meta.config)
        except (TypeError, ValueError) as e:
            raise MapError(f'{self.path}: malformed map metadata ({e})') from None
        if self.meta.backbone != BACKBONE_ID or (weights_sha256 and self.meta.weights_sha256 != weights_sha256):
            raise MapError(f'{self.path}: built with {self.meta.backbone} weights {self.meta.weights_sha256[:12]}..., '
                           f'the graph uses {str(weights_sha256)[:12]}...')
        self.man = man
        for s in man['shards']:
            for k in ('weights_sha256', 'vocabulary_sha256'):
                if s[k] != getattr(self.meta, k):
                    raise MapError(f'{self.path / s["file"]}: {k} {s[k][:12]}... differs from the map\'s '
                                   f'{getattr(self.meta, k)[:12]}...: shards of other weights or vocabulary')
        self.core_px, self.boundary_hw = int(man['core_px']), tuple(man['boundary_hw'])
        self.ortho_hw = tuple(man['ortho_hw']) if man.get('ortho_hw') else None
        if (man['version'] >= 2) != (self.ortho_hw is not None) or bool(self.meta.ortho_sha256) != \
                (self.ortho_hw is not None):
            raise MapError(f'{self.path}: version {man["version"]} with ortho_hw={man.get("ortho_hw")} and '
                           f'ortho_sha256={self.meta.ortho_sha256[:12]!r}: the orthophoto layer and the version '
                           'do not agree')
        if self.ortho_hw is not None:
            if self.ortho_hw != ortho_shape(self.meta.image_hw, self.config):
                raise MapError(f'{self.path}: ortho_hw {self.ortho_hw} is not the map\'s orthophoto layer '
                               f'{ortho_shape(self.meta.image_hw, self.config)}')
        pca = load_file(str(self.path / 'pca.safetensors'))
        self.pca_mean, self.pca_basis = pca['mean'], pca['basis']
        self.poses = np.load(self.path / 'poses.npy')
        n, p = len(self.poses), self.pca_basis.shape[0]
        if n != man['n_tiles'] or self.poses.shape != (n, 4):
            raise MapError(f'{self.path}: poses.npy holds {self.poses.shape}, the manifest {man["n_tiles"]} tiles')
        self.rows = mapindex.DescriptorRows(self.path / 'descriptors.f16', n, p)
        index = mapindex.load_index(self.path / man['index']['file'])
        # searched with this version's search-time settings (nprobe, candidates: mapindex's module doc)
        search = {k: getattr(mapindex.IndexConfig(), k) for k in mapindex.SEARCH_FIELDS}
        self.index = mapindex.GlobalIndex(index, self.rows, replace(index.cfg, **search))
        self.grid = TileGrid(self.poses[:, :2], cell_m)
        self.shard_of = np.zeros(n, np.int32)
        self.keys = []
        for i, s in enumerate(man['shards']):
            a, b = s['rows']
            self.shard_of[a:b] = i
            self.keys.append(tuple(s['key']))
        self.key_index = {k: i for i, k in enumerate(self.keys)}
        self.budget = int(memory_mb * 2 ** 20)
        self.fixed_bytes = int(self.poses.nbytes + self.pca_basis.nbytes + self.pca_mean.nbytes +
                               mapindex.index_bytes(index) + self.grid.order.nbytes + self.grid.starts.nbytes +
                               self.shard_of.nbytes)
        if self.fixed_bytes > self.budget:
            raise MapError(f'map_memory_mb={memory_mb:g}: the map\'s poses, PCA and global index alone take '
                           f'{self.fixed_bytes / 2 ** 20:.0f} MB; give a larger budget')
        self.loaded: 'OrderedDict[int, Dict[str, np.ndarray]]' = OrderedDict()
        self.loaded_bytes = 0
        self.stats = {'shards_loaded': 0, 'shards_released': 0, 'over_budget': 0}

    # config, georef, project, check_vocabulary: MapIdentity (as a one-file map)
    def search(self, q: np.ndarray, k: int, near: Optional[Tuple[np.ndarray, float]] = None):
        """(ids, scores) of the ``k`` best tiles: globally through the index (candidates re-ranked
        exactly), or exactly over the tiles within ``near`` = (xy, radius) from their shards."""
        if near is None:
            return self.index.search(np.asarray(q, np.float32), k)
        ids = self.grid.near(*near)
        if not len(ids):
            return ids, np.zeros(0, np.float32)
        which = self.shard_of[ids]
        scores = np.empty(len(ids), np.float32)
        needed = [int(i) for i in np.unique(which)]
        for i in needed:
            sel = which == i
            a = self.man['shards'][i]['rows'][0]
            d = self._shard(i, keep=needed)['descriptors'][ids[sel] - a]
            scores[sel] = d.astype(np.float32) @ q
        idx = top_k(scores, k)
        return ids[idx], scores[idx]

    def boundary_window(self, r0: int, c0: int, r1: int, c1: int):
        """(array, row0, col0): the boundary orthomap's rows r0..r1-1, cols c0..c1-1 clipped to the
        map, assembled from the shards that hold them (zero where no shard is)."""
        got = self._window('boundary', self.boundary_hw, self.config.boundary_res_m, np.float32, r0, c0, r1, c1)
        return got if got is not None else (np.zeros((1, 1), np.float32), 0, 0)

    @property
    def has_ortho(self) -> bool:
        return self.ortho_hw is not None

    def ortho_window(self, r0: int, c0: int, r1: int, c1: int):
        """(array, row0, col0): the orthophoto layer's rows r0..r1-1, cols c0..c1-1 clipped to the
        layer, assembled from the shards that hold them (zero where no shard is); empty without a layer."""
        got = None if self.ortho_hw is None else \
            self._window('ortho', self.ortho_hw, self.config.ortho_res_m, np.uint8, r0, c0, r1, c1)
        return got if got is not None else clip_window(None, r0, c0, r1, c1)

    def _window(self, name: str, hw, res_m: float, dtype, r0: int, c0: int, r1: int, c1: int):
        """(array, row0, col0) of the shards' layer ``name`` (``hw`` pixels of ``res_m`` metres; a shard
        holds its ``ortho_span`` of them) for rows r0..r1-1, cols c0..c1-1 clipped to the layer; only the
        shards overlapping the window are loaded; None when the window misses the layer."""
        h, w = hw
        r0, c0, r1, c1 = max(r0, 0), max(c0, 0), min(r1, h), min(c1, w)
        if r1 <= r0 or c1 <= c0:
            return None
        out = np.zeros((r1 - r0, c1 - c0), dtype)
        shard_m = self.man['shard_m']
        per = shard_m / res_m                    # layer pixels per shard
        spans = {}
        for ky in range(max(int(r0 // per) - 1, 0), int((r1 - 1) // per) + 2):
            for kx in range(max(int(c0 // per) - 1, 0), int((c1 - 1) // per) + 2):
                (sr0, sr1), (sc0, sc1) = ortho_span(ky, shard_m, res_m, h), ortho_span(kx, shard_m, res_m, w)
                if (kx, ky) in self.key_index and max(r0, sr0) < min(r1, sr1) and max(c0, sc0) < min(c1, sc1):
                    spans[self.key_index[(kx, ky)]] = (sr0, sc0)
        needed = list(spans)
        for i, (sr0, sc0) in spans.items():
            part = self._shard(i, keep=needed)[name]
            ir0, ic0 = max(r0, sr0), max(c0, sc0)
            ir1, ic1 = min(r1, sr0 + part.shape[0]), min(c1, sc0 + part.shape[1])
            out[ir0 - r0:ir1 - r0, ic0 - c0:ic1 - c0] = part[ir0 - sr0:ir1 - sr0, ic0 - sc0:ic1 - sc0]
        return out, r0, c0

    def resident_bytes(self) -> int:
        return self.fixed_bytes + self.loaded_bytes

    def _shard(self, i: int, keep=()) -> Dict[str, np.ndarray]:
        """Shard ``i``'s tensors, loaded if needed; others released (least recently used first,
        never one in ``keep``) until the loaded shards fit the budget."""
        if i in self.loaded:
            self.loaded.move_to_end(i)
            return self.loaded[i]
        s = self.man['shards'][i]
        path = self.path / s['file']
        try:
            t = load_file(str(path))
        except (OSError, ValueError) as e:
            raise MapError(f'{path}: cannot read shard ({e})') from None
        a, b = s['rows']
        if t['descriptors'].shape != (b - a, self.pca_basis.shape[0]) or t['boundary'].ndim != 2:
            raise MapError(f'{path}: tensor shapes do not match the manifest ({b - a} tiles)')
        if self.ortho_hw is not None:
            kx, ky = self.keys[i]
            r0, r1 = ortho_span(ky, self.man['shard_m'], self.config.ortho_res_m, self.ortho_hw[0])
            c0, c1 = ortho_span(kx, self.man['shard_m'], self.config.ortho_res_m, self.ortho_hw[1])
            if 'ortho' not in t or t['ortho'].dtype != np.uint8 or t['ortho'].shape != \
                    ((r1 - r0, c1 - c0) if r1 > r0 and c1 > c0 else (0, 0)):
                raise MapError(f'{path}: no orthophoto layer of shape {(r1 - r0, c1 - c0)} (uint8) for this shard')
            if layer_sha256(t['ortho']) != s.get('ortho_sha256'):
                raise MapError(f'{path}: its orthophoto layer\'s checksum is not the one the manifest records: '
                               'the shard does not belong to this map')
        t['boundary'] = t['boundary'].astype(np.float32)
        size = sum(v.nbytes for v in t.values())
        while self.loaded and self.fixed_bytes + self.loaded_bytes + size > self.budget:
            victim = next((j for j in self.loaded if j not in keep), None)
            if victim is None:
                self.stats['over_budget'] += 1      # one search needs more shards than the budget holds
                break
            self.loaded_bytes -= sum(v.nbytes for v in self.loaded.pop(victim).values())
            self.stats['shards_released'] += 1
        self.loaded[i] = t
        self.loaded_bytes += size
        self.stats['shards_loaded'] += 1
        return t


def open_map(path: Path, cfg: MapLoadConfig = MapLoadConfig(), weights_sha256: Optional[str] = None):
    """A map file (``PlaceMap``, wrapped in ``WholeMap``) or a sharded map folder (``ShardedMap``)."""
    path = Path(path)
    if path.is_dir():
        return ShardedMap(path, cfg.map_memory_mb, weights_sha256, cfg.map_cell_m)
    return WholeMap(PlaceMap.load(path, weights_sha256), cfg.map_cell_m)
