"""The localizer on mission-sized maps (issue #20): retrieval time p50 / p95 (tracking and
global), RSS and the global index's recall@24 vs map size, and the simulated demo flight
localized inside each map (its figures against the one-file demo map's).

Synthetic extension of a real map (there is no real 10^6-tile map here): the demo map
(``--map``, default ``out/localize/<demo>.safetensors``: 3,680 tiles of the NEON YELL
orthophoto, 8 m grid, 8 headings, 40 m, FP32 descriptors) is block (0, 0) of a grid of blocks
of its size (247.5 x 230 m, whole pixels of the boundary orthomap). Block j > 0 holds the same
tile poses shifted by whole blocks, the demo map's descriptors times a random orthogonal 256 x
256 matrix (seed j: the real neighbour structure inside a block -- near-duplicates from
neighbouring tiles and headings --, unrelated to the other blocks) and a copy of its boundary
orthomap. So block (0, 0) is the real map at the real coordinates, and the flight's cached
descriptors (``benchmarks/localize_flight.py`` writes them) localize in it among up to 10^6
other tiles. What this measures: the search and memory mechanics at scale (time, RSS, index
recall, shards loaded and released). What it does not: place ambiguity of a real large area
(rotated copies are unrelated places; a real km^2 has more look-alikes).

Each size is written once as a sharded map folder (``mapstore.write_sharded``, 500 m shards,
the default global index) under ``--out``, then measured in a fresh process (``--measure``):
RSS after loading, the demo flight (FP32 and W4A8 descriptors, 10 Hz, 300 frames) through
``Localizer`` with its retrieval calls timed (tracking = the tiles near the prediction; global =
the index), then tracking queries along a path of ``--walk`` x 10 steps of 2 m over the whole
map (20 m/s at 10 Hz; radius 32 m, as the localizer's tracked search; shards loaded as the path
enters them), ``--walk`` global queries at random places and the refinement's orthomap window
around each result (random shards: loaded and released under ``--map-memory-mb``); queries are
map descriptors plus noise at cosine 0.8 (as ``benchmarks/map_index.py``). RSS: after loading,
at the end, and the process's peak (VmHWM). Last, recall@24 of the index against float32 brute
force over the descriptors file. One BLAS / OpenMP thread, as localizer_node.

    PYTHONPATH=. .venv/bin/python benchmarks/map_scale.py --sizes 10000 100000 1000000
"""
import os
os.environ.setdefault('OMP_NUM_THREADS', '1')

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

K = 24
DEMO = 'out/localize/2019_YELL_2_528000_4978000_image_crop2_g0.1_s8_h8_z40.safetensors'
FRAMES = {'FP32': 'out/localize/frames_demo_fp32_168x224_300_10hz.npz',
          'W4A8': 'out/localize/frames_demo_w4a8_168x224_300_10hz.npz'}


def rss_mb() -> float:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2 ** 20


def peak_rss_mb() -> float:
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith('VmHWM:')) / 1024


def rotation(p: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((p, p)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def build(demo_path: Path, n: int, out: Path, shard_m: float) -> dict:
    """The synthetic map of at least ``n`` tiles (whole blocks) as a sharded folder ``out``."""
    from gplq_ros.onboard.mapstore import shard_placemap, write_sharded
    from gplq_ros.onboard.placemap import PlaceMap
    demo = PlaceMap.load(demo_path)
    cfg = demo.config
    bh, bw = demo.boundary.shape
    blocks = math.ceil(n / len(demo.poses))
    cols = math.ceil(math.sqrt(blocks))
    rows = math.ceil(blocks / cols)
    dx, dy = bw * cfg.boundary_res_m, bh * cfg.boundary_res_m
    t0 = time.perf_counter()
    poses, desc = [], []
    boundary = np.zeros((rows * bh, cols * bw), np.float32)
    p = demo.descriptors.shape[1]
    for j in range(blocks):
        by, bx = divmod(j, cols)
        pose = demo.poses.copy()
        pose[:, 0] += bx * dx
        pose[:, 1] -= by * dy
        poses.append(pose)
        desc.append(demo.descriptors if j == 0 else demo.descriptors @ rotation(p, j))
        boundary[by * bh:(by + 1) * bh, bx * bw:(bx + 1) * bw] = demo.boundary
    hw = [int(rows * dy / cfg.gsd_m), int(cols * dx / cfg.gsd_m)]
    meta = replace(demo.meta, n_tiles=blocks * len(demo.poses), image_hw=hw,
                   notes=[f'synthetic: {blocks} blocks of {demo_path.name} (benchmarks/map_scale.py)'])
    big = PlaceMap(np.concatenate(poses), np.concatenate(desc), demo.pca_mean, demo.pca_basis, boundary, meta)
    del poses, desc
    res = shard_placemap(big, shard_m)
    t1 = time.perf_counter()
    write_sharded(res, out, force=True)
    return {'tiles': int(len(big.poses)), 'blocks': blocks, 'area_km2': rows * dy * cols * dx / 1e6,
            'shards': len(res.shards), 'make_s': t1 - t0, 'write_s': time.perf_counter() - t1}


def measure(folder: Path, memory_mb: float, walk: int, recall_queries: int) -> dict:
    """In this (fresh) process: the figures of the module doc, as JSON."""
    from gplq_ros.onboard.localize import Localizer, LocalizerConfig, summarize
    from gplq_ros.onboard.mapstore import ShardedMap
    from gplq_ros.onboard.pipeline import single_thread_blas
    import faiss
    single_thread_blas()
    faiss.omp_set_num_threads(1)
    base = rss_mb()
    t0 = time.perf_counter()
    sm = ShardedMap(folder, memory_mb)
    out = {'tiles': len(sm.poses), 'load_s': time.perf_counter() - t0, 'rss_base_mb': base,
           'rss_loaded_mb': rss_mb(), 'fixed_mb': sm.fixed_bytes / 2 ** 20, 'memory_mb': memory_mb}
    timed = {'global': [], 'tracking': []}
    search = sm.search

    def timed_search(q, k, near=None):
        t = time.perf_counter()
        r = search(q, k, near)
        timed['global' if near is None else 'tracking'].append((time.perf_counter() - t) * 1e3)
        return r
    sm.search = timed_search
    flights = {}
    for name, path in FRAMES.items():
        if not Path(path).is_file():
            continue
        z = np.load(path)
        truth = [(t, xy, yaw) for t, xy, yaw in zip(z['t'], z['xy'], z['yaw'])]
        loc = Localizer(sm, LocalizerConfig())
        fixes, ms = [], []
        for d, b, t in zip(z['desc'], z['boundary'], z['t']):
            t1 = time.perf_counter()
            est = loc.update(d, float(t), b)
            ms.append((time.perf_counter() - t1) * 1e3)
            if est.fix:
                fixes.append((float(t), est.xy, est.cov, est.measurement.yaw))
        s = summarize(len(z['desc']), fixes, truth, float(truth[0][0]))
        flights[name] = {k: s[k] for k in ('fix_rate', 'within_5m', 'within_10m', 'error_p50_m', 'error_p95_m',
                                           'confident_wrong', 'fixes', 'time_to_first_fix_s')}
        flights[name].update(localizer_ms_p50=float(np.median(ms)), localizer_ms_p95=float(np.percentile(ms, 95)))
    out['flights'] = flights
    out['flight_search_ms'] = {k: pct(v) for k, v in timed.items()}
    out['rss_after_flight_mb'] = rss_mb()
    # tracking along a path over the whole map (2 m steps: 20 m/s at 10 Hz; shards loaded as it enters them)
    rng = np.random.default_rng(0)
    timed['global'].clear()
    timed['tracking'].clear()
    lo, hi = sm.poses[:, :2].min(axis=0), sm.poses[:, :2].max(axis=0)
    xy, heading, path = lo + 0.1 * (hi - lo), 0.3, []
    for _ in range(walk * 10):
        heading += rng.normal(0, 0.05)
        nxt = xy + 2.0 * np.array([math.cos(heading), math.sin(heading)])
        if not ((lo <= nxt) & (nxt <= hi)).all():
            heading += math.pi / 2
            continue
        xy = nxt
        path.append(xy)
    near = [sm.grid.near(p, 6.0) for p in path]
    ids = np.array([n[0] if len(n) else 0 for n in near])
    queries = noisy(sm.rows.read(ids).astype(np.float32), 0.8, rng)
    for q, p in zip(queries, path):
        sm.search(q, K, (p, 32.0))
    out['path_km'] = len(path) * 2.0 / 1000
    out['tracking_ms'] = pct(timed['tracking'])
    # global queries at random places, and the refinement's orthomap window where each lands (random shards:
    # loaded and released under the budget)
    ids = rng.choice(len(sm.poses), walk, replace=False)
    queries = noisy(sm.rows.read(ids).astype(np.float32), 0.8, rng)
    load_ms = []
    for q in queries:
        got, _ = sm.search(q, K)
        t = time.perf_counter()
        sm.boundary_window(*window_around(sm, sm.poses[got[0], :2], 80.0))
        load_ms.append((time.perf_counter() - t) * 1e3)
    out['global_ms'] = pct(timed['global'])
    out['window_ms'] = pct(load_ms)
    out['rss_after_walk_mb'] = rss_mb()
    out['rss_peak_mb'] = peak_rss_mb()          # VmHWM: this process's peak (ru_maxrss would count the parent's)
    out['map_stats'] = dict(sm.stats, resident_mb=sm.resident_bytes() / 2 ** 20, shards=len(sm.keys))
    # recall@24 of the index vs float32 brute force (streams the descriptors file; after the RSS figures)
    sm.search = search
    qs = queries[:recall_queries]
    got = [set(sm.search(q, K)[0].tolist()) for q in qs]
    exact = brute_force_file(folder / 'descriptors.f16', len(sm.poses), sm.pca_basis.shape[0], qs)
    out['recall_at_24'] = float(np.mean([len(g & set(e.tolist())) / K for g, e in zip(got, exact)]))
    out['top1_agrees'] = float(np.mean([sm.search(q, 1)[0][0] == e[0] for q, e in zip(qs, exact)]))
    out['recall_queries'] = len(qs)
    return out


def window_around(sm, xy, radius_m):
    res = sm.config.boundary_res_m
    c, r = xy[0] / res, -xy[1] / res
    h = radius_m / res
    return int(r - h), int(c - h), int(r + h), int(c + h)


def noisy(rows: np.ndarray, cos: float, rng) -> np.ndarray:
    p = rows.shape[1]
    sigma = math.sqrt((1 / cos ** 2 - 1) / p)
    q = rows + rng.normal(0, sigma, rows.shape).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def brute_force_file(path: Path, n: int, p: int, qs: np.ndarray, chunk: int = 100_000):
    """Exact top-K ids of each query over the float16 rows file, read in chunks."""
    best_s = np.full((len(qs), K), -np.inf, np.float32)
    best_i = np.zeros((len(qs), K), np.int64)
    mm = np.memmap(path, dtype='<f2', mode='r', shape=(n, p))
    for a in range(0, n, chunk):
        s = qs @ np.asarray(mm[a:a + chunk], np.float32).T
        alls = np.concatenate([best_s, s], axis=1)
        alli = np.concatenate([best_i, np.arange(a, a + s.shape[1])[None].repeat(len(qs), 0)], axis=1)
        top = np.argsort(-alls, axis=1, kind='stable')[:, :K]
        best_s, best_i = np.take_along_axis(alls, top, 1), np.take_along_axis(alli, top, 1)
    return best_i


def pct(v):
    return {'p50': float(np.median(v)), 'p95': float(np.percentile(v, 95)), 'n': len(v)} if v else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--sizes', type=int, nargs='+', default=[10_000, 100_000, 1_000_000])
    ap.add_argument('--map', type=Path, default=Path(DEMO))
    ap.add_argument('--out', type=Path, default=Path('out/map_scale'))
    ap.add_argument('--shard', type=float, default=500.0)
    ap.add_argument('--map-memory-mb', type=float, default=512.0)
    ap.add_argument('--walk', type=int, default=300, help='random global + tracking queries over the map')
    ap.add_argument('--recall-queries', type=int, default=200)
    ap.add_argument('--measure', type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.map_memory_mb, args.walk, args.recall_queries)))
        return 0
    rows = []
    for n in args.sizes:
        folder = args.out / f'n{n}'
        info_path = folder / 'synthetic.json'
        if not info_path.is_file():
            info = build(args.map, n, folder, args.shard)
            info_path.write_text(json.dumps(info, indent=1))
        info = json.loads(info_path.read_text())
        res = subprocess.run([sys.executable, __file__, '--measure', str(folder), '--map-memory-mb',
                              str(args.map_memory_mb), '--walk', str(args.walk), '--recall-queries',
                              str(args.recall_queries)], capture_output=True, text=True, env=dict(os.environ))
        if res.returncode:
            print(res.stderr[-3000:])
            return 1
        m = json.loads(res.stdout.strip().splitlines()[-1])
        m.update(build=info)
        rows.append(m)
        (args.out / f'n{n}.json').write_text(json.dumps(m, indent=1))
        print(json.dumps(m, indent=1), flush=True)
    print('\n| tiles | area km^2 | shards | tracking query p50 / p95 ms | global query p50 / p95 ms | recall@24 | '
          'orthomap window p50 / p95 ms | RSS loaded / end / peak MB | shards loaded / released | demo flight '
          'FP32 / W4A8: fixes within 5 m, confident wrong | localizer ms p50 / p95 (FP32) |')
    print('|---|---|---|---|---|---|---|---|---|---|---|')
    for m in rows:
        tr, gl, wi = m['tracking_ms'], m['global_ms'], m['window_ms']
        fl = ' / '.join(f'{100 * f["within_5m"]:.0f} %, {f["confident_wrong"]} of {f["fixes"]}'
                        for f in m['flights'].values()) or '-'
        f = m['flights'].get('FP32')
        ms = f'{f["localizer_ms_p50"]:.1f} / {f["localizer_ms_p95"]:.1f}' if f else '-'
        print(f'| {m["tiles"]:,} | {m["build"]["area_km2"]:.1f} | {m["build"]["shards"]} | '
              f'{tr["p50"]:.2f} / {tr["p95"]:.2f} | {gl["p50"]:.2f} / {gl["p95"]:.2f} | {m["recall_at_24"]:.3f} | '
              f'{wi["p50"]:.1f} / {wi["p95"]:.1f} | {m["rss_loaded_mb"]:.0f} / {m["rss_after_walk_mb"]:.0f} / '
              f'{m["rss_peak_mb"]:.0f} | {m["map_stats"]["shards_loaded"]} / {m["map_stats"]["shards_released"]} | '
              f'{fl} | {ms} |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
