"""Place maps of mission-sized areas, built in shards, on Ray or in this process (gplq_map's
library call for large maps; ``onboard.mapbuild`` wraps it for one image).

The area (one orthophoto or a mosaic of several: ``onboard.orthosource``) is split into square
shards of ``shard_m`` metres by tile centre; each shard is one unit of work, done by a worker that
holds the FP32 graph and reads only the window of the orthophoto its tiles see (never the whole
raster). Two phases:

1. **PCA sample**: ``pca_sample_ids`` picks at most ``MapConfig.pca_sample`` tiles evenly over
   the whole map (all of them in a small map); each shard's workers describe its sample tiles
   (raw VLAD + the boundary map's patch grid) and the driver fits the PCA once on all of them
   (``placemap.fit_pca``).
2. **Parts**: each shard's tiles are described (the sample tiles' results reused, not computed
   again), projected with the PCA, and their boundary maps accumulated on the window of the
   boundary orthomap they cover (sums and counts, so that parts add up exactly).

Every unit's result is written to ``<out>.build/`` as soon as it finishes (atomically): a build
that is interrupted (a killed worker, a killed driver, a lost machine) resumes where it stopped
when run again with the same inputs, losing at most the shards in flight. The build folder
records its inputs (``plan.json``: the map configuration, graph, vocabulary and orthophotos by
checksum); a rerun with other inputs is refused until the folder is removed (``force``).

**Finish**: the parts' boundary sums are added per shard and divided; the result is either one
``PlaceMap`` file (``.safetensors``: small maps, loaded whole) or a sharded map folder
(``onboard.mapstore``: mission maps, loaded shard by shard under a memory budget, with a
compressed global index). The sharded build gives the same map as the single-process
``placemap.build_map`` (tested), up to float rounding.

Workers: ``workers`` = 0 runs the units in this process (threads = ``threads``); otherwise Ray
actors of ``threads`` intra-op threads each, on a local Ray started here (``ray_address`` None)
or on a running cluster (``ray_address`` = 'auto' or 'HOST:PORT' from ``ray start --head``). A
local build with fewer units (shards) than workers gives the idle workers' cores to threads, and
one of a single unit runs in this process (``_fit_workers``). Each
worker needs this package, and read access to the graph, the vocabulary and the orthophotos at the
same paths (a shared file system); only the driver writes."""
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from gplq_ros.onboard.engine import graph_meta, load
from gplq_ros.onboard.fileformat import BACKBONE_ID, sha256_file
from gplq_ros.onboard.geo import GeoRef
from gplq_ros.onboard.heads import l2_normalize
from gplq_ros.onboard.mapstore import BuildResult, key_name, ortho_parts, plan_shards, shard_rows
from gplq_ros.onboard.orthosource import Mosaic, open_source
from gplq_ros.onboard.photometric import apply_photometric
from gplq_ros.onboard.placemap import (MapConfig, MapError, MapMeta, accumulate_boundary, boundary_shape, fit_pca,
                                       footprint_radius_m, ortho_layer, ortho_shape, pca_sample_ids, render_tile,
                                       tile_poses, vocabulary_id)
from gplq_ros.onboard.vocabulary import Vocabulary

PLAN_VERSION = 1


@dataclass(frozen=True)
class BuildConfig:
    """How a map is built (not what it contains: that is ``MapConfig``)."""
    shard_m: float = 500.0            # shard side, m (a multiple of the boundary orthomap's resolution)
    workers: int = 0                  # 0: in this process; N: N Ray workers
    threads: int = 1                  # intra-op threads per worker (in this process: of the one engine)
    ray_address: Optional[str] = None  # None: a local Ray started here; 'auto' / 'HOST:PORT': a running cluster

    def __post_init__(self):
        for name, ok in (('shard_m', 1.0 <= self.shard_m <= 100000.0), ('workers', 0 <= self.workers <= 4096),
                         ('threads', 1 <= self.threads <= 256)):
            if not ok:
                raise ValueError(f'BuildConfig.{name}={getattr(self, name)!r} is out of range')


# -- the plan: which tiles, which shard ------------------------------------------------------------------------
def open_sources(spec: Sequence[dict]):
    """The orthophoto of a build: ``spec`` = [{'path', 'gsd_m', 'georef' (GeoRef dict or None)}],
    one ``orthosource`` source, or a ``Mosaic`` of several."""
    srcs = [open_source(s['path'], s.get('gsd_m'), GeoRef(**s['georef']) if s.get('georef') else None) for s in spec]
    return srcs[0] if len(srcs) == 1 else Mosaic(srcs)


def covered_tiles(poses: np.ndarray, cfg: MapConfig, rects: Sequence[Tuple[int, int, int, int]]) -> np.ndarray:
    """Mask of the tiles whose whole footprint (the square around the circle a camera at the
    tile's height sees at any yaw) lies inside the union of ``rects`` (row0, col0, rows, cols:
    the mosaic's sources; their nodata pixels are not looked at), on a grid of 1 m cells."""
    cell = max(1, int(round(1.0 / cfg.gsd_m)))              # orthophoto pixels per cell
    h = max(r + n for r, _, n, _ in rects) // cell + 2
    w = max(c + m for _, c, _, m in rects) // cell + 2
    cov = np.zeros((h, w), bool)
    for r, c, n, m in rects:                                 # cells wholly inside a source
        cov[-(-r // cell):(r + n) // cell, -(-c // cell):(c + m) // cell] = True
    ok = np.ones(len(poses), bool)
    for i, (x, y, _, z) in enumerate(poses):
        rad = footprint_radius_m(cfg, z) / cfg.gsd_m
        r0, r1 = int((-y / cfg.gsd_m - rad) // cell), int((-y / cfg.gsd_m + rad) // cell)
        c0, c1 = int((x / cfg.gsd_m - rad) // cell), int((x / cfg.gsd_m + rad) // cell)
        ok[i] = r0 >= 0 and c0 >= 0 and bool(cov[r0:r1 + 1, c0:c1 + 1].all())
    return ok


def _window(poses: np.ndarray, cfg: MapConfig, scale: float, pad: float) -> Tuple[int, int, int, int]:
    """(row0, col0, rows, cols) of a raster with ``scale`` metres per pixel that holds the
    footprints of all ``poses``, ``pad`` pixels more on every side."""
    r = max(footprint_radius_m(cfg, z) for z in np.unique(poses[:, 3]))
    x0, x1 = poses[:, 0].min() - r, poses[:, 0].max() + r
    y0, y1 = -poses[:, 1].max() - r, -poses[:, 1].min() + r      # rows go south
    c0, r0 = int(math.floor(x0 / scale - pad)), int(math.floor(y0 / scale - pad))
    c1, r1 = int(math.ceil(x1 / scale + pad)), int(math.ceil(y1 / scale + pad))
    return r0, c0, r1 - r0, c1 - c0


# -- the worker: one shard's tiles -----------------------------------------------------------------------------
class ShardWorker:
    """Describes tiles of one shard at a time: holds the FP32 graph (``threads`` intra-op threads)
    and the orthophoto source(s) (``orthosource.open_sources(spec)``). Used in this process or as
    a Ray actor."""

    def __init__(self, spec: Sequence[dict], graph: str, vocabulary: str, threads: int = 1):
        # unpinned: workers on one machine would share the first cores (onboard.engine.Engine)
        self.engine = load(Path(graph), Path(vocabulary), threads=threads, pin_threads=False)
        if self.engine.kind != 'fp32':
            raise MapError(f'reference graph {graph}: kind={self.engine.kind!r}; a map is built with the FP32 graph')
        self.source = open_sources(spec)
        self.counter = None

    def set_counter(self, counter) -> None:
        self.counter = counter

    def _tiles(self, poses: np.ndarray, cfg: MapConfig):
        """Yield (i, tile image) of ``poses`` rendered from the window of the orthophoto they see."""
        r0, c0, rows, cols = _window(poses, cfg, cfg.gsd_m, 6)
        r0, c0 = max(r0, 0), max(c0, 0)               # tile squares are clipped there too (tile_origin)
        img = self.source.read(r0, c0, rows, cols)
        for i, pose in enumerate(poses):
            yield i, apply_photometric(render_tile(img, pose, cfg, (r0, c0)), cfg.photometric)

    def _count(self, n: int) -> None:
        if self.counter is not None:
            self.counter.add.remote(n)

    def sample(self, poses: np.ndarray, cfg_dict: dict) -> Dict[str, np.ndarray]:
        """Raw VLAD (M, D) and boundary patch grids (M, gh, gw) of ``poses`` (the shard's PCA sample)."""
        cfg = MapConfig(**cfg_dict)
        raw, grids = [], []
        for _, tile in self._tiles(poses, cfg):
            out = self.engine(tile)
            raw.append(np.asarray(out.descriptor, np.float32))
            grids.append(np.asarray(out.boundary, np.float32))
            self._count(1)
        return {'raw': np.stack(raw), 'grids': np.stack(grids)}

    def part(self, poses: np.ndarray, cfg_dict: dict, mean: np.ndarray, basis: np.ndarray,
             cached: Dict[int, Tuple[np.ndarray, np.ndarray]]) -> Dict[str, np.ndarray]:
        """One shard: projected unit descriptors (n, P) of ``poses`` and the sums / counts of
        their boundary maps on the window of the boundary orthomap they cover (``origin``: its
        row, col there). ``cached``: row of ``poses`` -> (raw VLAD, patch grid) already computed."""
        cfg = MapConfig(**cfg_dict)
        res = cfg.boundary_res_m
        r0, c0, rows, cols = _window(poses, cfg, res, 2)
        acc, cnt = np.zeros((rows, cols), np.float64), np.zeros((rows, cols), np.float32)
        raw = []
        done = 0
        for i, tile in self._tiles(poses, cfg) if len(cached) < len(poses) else enumerate([None] * len(poses)):
            if i in cached:
                d, grid = cached[i]
            else:
                out = self.engine(tile)
                d, grid = out.descriptor, out.boundary
                done += 1
                if done % 16 == 0:
                    self._count(16)
            raw.append(np.asarray(d, np.float32))
            accumulate_boundary(acc, cnt, grid, poses[i], cfg, (r0, c0))
        self._count(done % 16)
        desc = l2_normalize((np.stack(raw) - mean) @ basis.T).astype(np.float32)
        return {'descriptors': desc, 'acc': acc, 'cnt': cnt, 'origin': np.array([r0, c0], np.int64)}


# -- runners: this process or Ray ------------------------------------------------------------------------------
class _LocalRunner:
    def __init__(self, spec, graph, vocab, build: BuildConfig, prog: 'Progress'):
        self.worker = ShardWorker(spec, str(graph), str(vocab), build.threads)

        def count(n):
            prog.add(n)
            prog.poll()
        self.worker._count = count
        self.workers = 1

    def run(self, units: List[tuple], on_done: Callable[[tuple, dict], None], poll: Callable[[], None]) -> None:
        for u in units:
            on_done(u, getattr(self.worker, u[0])(*u[2]))
            poll()

    def close(self):
        pass


class _RayRunner:
    """Ray actors, one per worker (``max_restarts``: a killed worker is started again and its
    shard run again; the driver keeps the shards already done)."""

    def __init__(self, spec, graph, vocab, build: BuildConfig, prog: 'Progress'):
        try:
            import ray  # optional: only a build with workers > 0 needs it
        except ImportError:
            raise MapError('workers > 0 needs Ray: pip install ray (or workers=0 to build in this process)') from None
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            kw = dict(address=build.ray_address) if build.ray_address else dict(num_cpus=build.workers * build.threads)
            if not build.ray_address:       # local workers import this very gplq_ros (a source tree or installed)
                root = str(Path(__file__).resolve().parents[2])
                os.environ['PYTHONPATH'] = os.pathsep.join([root] + [p for p in os.environ.get('PYTHONPATH', '').split(
                    os.pathsep) if p and p != root])
            ray.init(include_dashboard=False, logging_level='ERROR', log_to_driver=True, **kw)
        counter_cls = ray.remote(num_cpus=0)(_Counter)
        self.counter = counter_cls.remote()
        actor = ray.remote(num_cpus=build.threads, max_restarts=-1, max_task_retries=3)(ShardWorker)
        self.actors = [actor.remote(spec, str(graph), str(vocab), build.threads) for _ in range(build.workers)]
        ray.get([a.set_counter.remote(self.counter) for a in self.actors])
        self.add = prog.add
        self.workers = build.workers

    def run(self, units, on_done, poll):
        ray = self.ray
        todo, busy = list(units), {}
        free = list(self.actors)
        while todo or busy:
            while todo and free:
                u, a = todo.pop(0), free.pop(0)
                busy[getattr(a, u[0]).remote(*u[2])] = (u, a)
            ready, _ = ray.wait(list(busy), num_returns=1, timeout=1.0)
            self.add(ray.get(self.counter.take.remote()))
            for ref in ready:
                u, a = busy.pop(ref)
                on_done(u, ray.get(ref))
                free.append(a)
            poll()

    def close(self):
        for a in self.actors:
            self.ray.kill(a)
        if self.started:
            self.ray.shutdown()


class _Counter:
    """Tiles done by the workers since the driver last asked (progress)."""

    def __init__(self):
        self.n = 0

    def add(self, n: int) -> None:
        self.n += n

    def take(self) -> int:
        n, self.n = self.n, 0
        return n


# -- the driver ------------------------------------------------------------------------------------------------
class Progress:
    """Tiles done / total, tiles per second and time left, one line every ``every_s`` (and at the
    end); ``callback(done, total)`` on every poll."""

    def __init__(self, total: int, print_fn: Callable[[str], None], every_s: float = 10.0, done: int = 0,
                 callback: Callable[[int, int], None] = lambda i, n: None):
        self.total, self.done, self.print, self.every = total, done, print_fn, every_s
        self.t0 = self.last = time.perf_counter()
        self.start_done = done
        self.callback = callback

    def add(self, n: int) -> None:
        self.done += n

    def poll(self, force: bool = False) -> None:
        self.callback(self.done, self.total)
        now = time.perf_counter()
        if force or now - self.last >= self.every:
            self.last = now
            rate = (self.done - self.start_done) / max(now - self.t0, 1e-9)
            left = (self.total - self.done) / rate if rate > 0 else float('nan')
            eta = f'{left / 60:.1f} min left' if math.isfinite(left) else 'time left unknown'
            self.print(f'{self.done}/{self.total} tiles, {rate:.1f} tiles/s, {eta}')


def _save(path: Path, tensors: Dict[str, np.ndarray], meta: dict) -> None:
    """Atomic write: a unit's file exists whole or not at all."""
    tmp = path.with_name(path.name + '.tmp')
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp),
              metadata={'gplq_ros': json.dumps(meta, sort_keys=True)})
    os.replace(tmp, path)


def _read_meta(path: Path) -> dict:
    with safe_open(str(path), framework='numpy') as f:
        return json.loads(f.metadata()['gplq_ros'])


def _fit_workers(build: BuildConfig, units: int, print_fn) -> BuildConfig:
    """A local Ray build (no ``ray_address``) with fewer units of work (shards) than workers: a
    unit runs on one worker, so the idle workers' cores go to threads instead -- one unit: in
    this process (no Ray start). Measured on 2 cores, a 1-shard map of 480 tiles: 2 Ray workers
    x 1 thread 45-51 s (one worker busy), in this process x 2 threads 29 s."""
    if build.ray_address is not None or not 0 < units < build.workers:
        return build
    cores = build.workers * build.threads
    fitted = replace(build, workers=0, threads=min(cores, 256)) if units == 1 else \
        replace(build, workers=units, threads=max(1, cores // units))
    where = 'in this process with' if fitted.workers == 0 else f'on {fitted.workers} Ray workers of'
    print_fn(f'{units} unit(s) of work for {build.workers} Ray workers: built {where} {fitted.threads} thread(s)')
    return fitted


def build_sharded(spec: Sequence[dict], out: Path, graph: Path, vocabulary: Path, cfg: MapConfig,
                  build: BuildConfig = BuildConfig(), force: bool = False,
                  print_fn: Callable[[str], None] = lambda s: None,
                  progress: Callable[[int, int], None] = lambda i, n: None) -> BuildResult:
    """Build the map of the orthophoto(s) ``spec`` (``orthosource.open_sources``) in shards;
    units are written to ``<out>.build/`` as they finish and reused by a rerun (module doc).
    Returns the finished map's parts (``BuildResult``); the caller writes the map file(s)."""
    out = Path(out)
    res = cfg.boundary_res_m
    core_px = build.shard_m / res
    if abs(core_px - round(core_px)) > 1e-6:
        raise MapError(f'shard_m={build.shard_m:g} is not a multiple of boundary_res_m={res:g}')
    core_px = int(round(core_px))
    vocab = Vocabulary.load(Path(vocabulary))         # the inputs' own errors first
    weights_sha = _graph_weights(graph)
    source = open_sources(spec)
    rows_px, cols_px = source.shape
    poses = tile_poses((rows_px, cols_px), cfg)
    if hasattr(source, 'placements'):              # a mosaic: keep the tiles that see only its sources
        rects = [(r, c, s.shape[0], s.shape[1]) for (r, c), s in zip(source.placements, source.sources)]
        poses = poses[covered_tiles(poses, cfg, rects)]
        if not len(poses):
            raise MapError('no tile of the mosaic sees only image data: the orthophotos do not cover one camera view')
    inputs = {'plan_version': PLAN_VERSION, 'config': asdict(cfg), 'shard_m': build.shard_m,
              'weights_sha256': weights_sha, 'vocabulary_sha256': vocabulary_id(vocab.centers),
              'reference_graph_sha256': sha256_file(graph),
              'sources': [{'name': Path(s['path']).name, 'sha256': sha256_file(Path(s['path'])),
                           'gsd_m': s.get('gsd_m')} for s in spec], 'n_tiles': int(len(poses))}
    inputs = json.loads(json.dumps(inputs))           # as plan.json holds it (tuples -> lists)
    bdir = out.with_name(out.name + '.build')
    if bdir.exists():
        try:
            old = json.loads((bdir / 'plan.json').read_text())
        except (OSError, ValueError):
            old = None
        if old != inputs:
            if not force:
                diff = sorted(k for k in inputs if old is None or old.get(k) != inputs[k])
                raise MapError(f'{bdir} holds a build of other inputs ({", ".join(diff) or "unreadable plan.json"} '
                               'differ): pass --force to start over')
            shutil.rmtree(bdir)
    bdir.mkdir(parents=True, exist_ok=True)
    (bdir / 'plan.json').write_text(json.dumps(inputs, indent=1, sort_keys=True) + '\n')

    shards = plan_shards(poses, build.shard_m)
    sample = pca_sample_ids(len(poses), cfg.pca_sample)
    in_sample = np.zeros(len(poses), bool)
    in_sample[sample] = True
    cfg_dict = asdict(cfg)
    stamp = {'weights_sha256': weights_sha, 'vocabulary_sha256': inputs['vocabulary_sha256']}

    def sample_path(k):
        return bdir / f'sample_{key_name(k)}.safetensors'

    def part_path(k):
        return bdir / f'part_{key_name(k)}.safetensors'
    sample_units = [('sample', k, (poses[ids[in_sample[ids]]], cfg_dict)) for k, ids in shards.items()
                    if in_sample[ids].any() and not sample_path(k).exists()]
    part_todo = [k for k in shards if not part_path(k).exists()]
    n_sample_todo = sum(len(u[2][0]) for u in sample_units)
    n_part_todo = sum(int((~in_sample[shards[k]]).sum()) for k in part_todo)
    resumed = len(shards) - len(part_todo)
    build = _fit_workers(build, max(len(sample_units), len(part_todo)), print_fn)
    prog = Progress(len(poses), print_fn, done=len(poses) - n_sample_todo - n_part_todo, callback=progress)
    if resumed or (len(sample_units) < sum(1 for ids in shards.values() if in_sample[ids].any())):
        print_fn(f'resuming {bdir}: {resumed} of {len(shards)} shards done')
    print_fn(f'{len(poses)} tiles in {len(shards)} shards of {build.shard_m:g} m, PCA sample {len(sample)} tiles; '
             f'{"in this process" if build.workers == 0 else f"{build.workers} Ray workers"} of {build.threads} '
             f'thread(s)')
    stats = {'tiles': int(len(poses)), 'shards': len(shards), 'resumed_shards': resumed,
             'computed_tiles': n_sample_todo + n_part_todo, 'workers': build.workers, 'threads': build.threads}
    t0 = time.perf_counter()
    runner = None
    try:
        if sample_units or part_todo:
            runner = (_RayRunner if build.workers > 0 else _LocalRunner)(spec, graph, vocabulary, build, prog)
        stats['start_s'] = time.perf_counter() - t0

        def sample_done(u, r):
            _save(sample_path(u[1]), r, stamp)
        if sample_units:
            runner.run(sample_units, sample_done, prog.poll)
        pca_file = bdir / 'pca.safetensors'
        if not pca_file.exists():
            chunks = {}
            for k, ids in shards.items():
                if in_sample[ids].any():
                    t = _load_unit(sample_path(k), stamp)
                    chunks[k] = t['raw']
            raw = np.concatenate([chunks[k] for k in shards if k in chunks])
            raw = raw[np.argsort(np.concatenate([ids[in_sample[ids]] for k, ids in shards.items() if k in chunks]))]
            mean, basis, explained = fit_pca(raw, cfg.pca_dim)
            _save(pca_file, {'mean': mean, 'basis': basis, 'explained': np.array([explained], np.float64),
                             'sample_ids': sample.astype(np.int64)}, stamp)
        p = _load_unit(pca_file, stamp)
        mean, basis, explained = p['mean'], p['basis'], float(p['explained'][0])
        stats['sample_s'] = time.perf_counter() - t0 - stats['start_s']

        def part_unit(k):
            ids = shards[k]
            cached = {}
            if in_sample[ids].any():
                t = _load_unit(sample_path(k), stamp)
                rows = np.flatnonzero(in_sample[ids])
                cached = {int(r): (t['raw'][j], t['grids'][j]) for j, r in enumerate(rows)}
            return ('part', k, (poses[ids], cfg_dict, mean, basis, cached))

        def part_done(u, r):
            _save(part_path(u[1]), r, stamp)
        if part_todo:
            runner.run([part_unit(k) for k in part_todo], part_done, prog.poll)
        prog.poll(force=True)
        stats['parts_s'] = time.perf_counter() - t0 - stats['start_s'] - stats['sample_s']
    finally:
        if runner is not None:
            runner.close()
    # finish: descriptors in shard order, boundary cores from all parts' sums
    t1 = time.perf_counter()
    order = np.concatenate([shards[k] for k in shards])
    parts = {k: _load_unit(part_path(k), stamp) for k in shards}
    desc = np.concatenate([parts[k]['descriptors'] for k in shards]).astype(np.float32)
    bh, bw = boundary_shape((rows_px, cols_px), cfg)
    cores = {}
    # every square of the orthomap that a part's window reaches (tiles near a shard's edge see into the next)
    keys = set()
    for q in parts.values():
        pr, pc = (int(v) for v in q['origin'])
        ph, pw = q['acc'].shape
        r0, c0, r1, c1 = max(pr, 0), max(pc, 0), min(pr + ph, bh), min(pc + pw, bw)
        keys |= {(kx, ky) for ky in range(r0 // core_px, (r1 - 1) // core_px + 1)
                 for kx in range(c0 // core_px, (c1 - 1) // core_px + 1)}
    for k in sorted(keys, key=lambda k: (k[1], k[0])):
        r0, c0 = k[1] * core_px, k[0] * core_px
        r1, c1 = min(r0 + core_px, bh), min(c0 + core_px, bw)
        acc, cnt = np.zeros((r1 - r0, c1 - c0), np.float64), np.zeros((r1 - r0, c1 - c0), np.float64)
        for q in parts.values():
            pr, pc = (int(v) for v in q['origin'])
            ph, pw = q['acc'].shape
            ir0, ic0, ir1, ic1 = max(r0, pr), max(c0, pc), min(r1, pr + ph), min(c1, pc + pw)
            if ir0 >= ir1 or ic0 >= ic1:
                continue
            acc[ir0 - r0:ir1 - r0, ic0 - c0:ic1 - c0] += q['acc'][ir0 - pr:ir1 - pr, ic0 - pc:ic1 - pc]
            cnt[ir0 - r0:ir1 - r0, ic0 - c0:ic1 - c0] += q['cnt'][ir0 - pr:ir1 - pr, ic0 - pc:ic1 - pc]
        cores[k] = np.where(cnt > 0, acc / np.maximum(cnt, 1), 0.0).astype(np.float32)
    # the orthophoto layer of the same shards, read from the source window by window (placemap.ortho_layer)
    ohw = ortho_shape((rows_px, cols_px), cfg)
    ortho = ortho_parts(ohw, sorted(keys, key=lambda k: (k[1], k[0])), build.shard_m, cfg.ortho_res_m,
                        lambda r0, c0, r1, c1: ortho_layer(source.read, cfg, r0, c0, r1, c1))
    stats['finish_s'] = time.perf_counter() - t1
    stats['total_s'] = time.perf_counter() - t0
    names = [Path(s['path']).name for s in spec]
    meta = MapMeta(backbone=BACKBONE_ID, weights_sha256=weights_sha, vocabulary_sha256=inputs['vocabulary_sha256'],
                   reference_graph=Path(graph).name, source_image=' + '.join(names),
                   source_sha256=inputs['sources'][0]['sha256'] if len(spec) == 1 else
                   sha_of([s['sha256'] for s in inputs['sources']]),
                   image_hw=[int(rows_px), int(cols_px)], config=cfg_dict,
                   georef=source.georef.to_dict() if source.georef else None, n_tiles=int(len(poses)),
                   pca_explained=explained,
                   notes=[f'PCA fitted on {len(sample)} of {len(poses)} tiles, evenly spread over all shards '
                          f'(placemap.pca_sample_ids)'])
    rows = shard_rows(sorted(keys, key=lambda k: (k[1], k[0])), shards)    # orthomap-only shards: no tiles
    return BuildResult(poses[order], rows, desc, mean, basis, cores, (bh, bw), core_px, meta, stats, order, ortho,
                       ohw)


def sha_of(items: List[str]) -> str:
    return hashlib.sha256('\n'.join(items).encode()).hexdigest()


def _graph_weights(graph: Path) -> str:
    """The weights checksum the FP32 graph records (its metadata), without creating a session."""
    meta = graph_meta(onnx.load(str(graph), load_external_data=False))
    if not meta or 'weights_sha256' not in meta:
        raise MapError(f'reference graph {graph}: no gplq_ros metadata with the weights checksum (export it with '
                       'gplq_export)')
    if meta.get('kind') != 'fp32':
        raise MapError(f'reference graph {graph}: kind={meta.get("kind")!r}; a map is built with the FP32 graph')
    return meta['weights_sha256']


def _load_unit(path: Path, stamp: dict) -> Dict[str, np.ndarray]:
    """A unit's file, refused when it was made with other weights or another vocabulary."""
    meta = _read_meta(path)
    for k, v in stamp.items():
        if meta.get(k) != v:
            raise MapError(f'{path}: {k} {str(meta.get(k))[:12]}... is not this build\'s {v[:12]}...: a shard of '
                           'other weights or vocabulary cannot join this map (remove the build folder or pass --force)')
    return load_file(str(path))
